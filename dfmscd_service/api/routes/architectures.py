"""The model zoo with parameter counts (for a 10-class, 3x32x32 model).

Counting means building every model (the ~80 torchvision ones on the meta device, no memory),
tens of seconds of CPU in all, so it runs once in a background thread, the dfmscd models first,
is cached on disk, and the list answers at once with ``complete: false`` until it is done.

Families: ``dfmscd`` (the built-in zoo), ``torchvision`` (``tv/<name>``) and ``timm``
(``timm/<name>``, ~1400 names). Without ``family`` the answer is the built-in zoo and
torchvision, as it always was; timm names come with ``family=timm`` (or ``all``), filtered by
``q`` and paged by ``limit``/``cursor``. timm models are counted only when listed, and only those
of the page answered (never the whole family in the background); the first timm listing of a
process imports timm (seconds).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from fastapi import APIRouter, Query

from dfmscd.atomic import write_bytes_atomic
from dfmscd_service.api.deps import CurrentKey
from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ArchitectureList, ArchitectureOut, ErrorBody
from dfmscd_service.api.services import torch_checks, torch_pool
from dfmscd_service.core.settings import get_settings

router = APIRouter(prefix="/v1/architectures", tags=["architectures"], route_class=SessionReleasingRoute)
log = logging.getLogger("dfmscd.api")

_lock = threading.Lock()
_counts: dict[str, int | None] = {}
_worker: threading.Thread | None = None
_stop = threading.Event()
REFERENCE = dict(num_classes=10, in_channels=3, image_size=32)


COUNT_BATCH = 8  # names per trip to the torch pool, so an upload's check never waits long behind the counting


def _count_batch(names: list[str]) -> dict[str, int | None]:
    """Parameter counts, computed in the torch pool (``torch_checks.count_parameters``)."""
    return torch_pool.call(torch_checks.count_parameters, names, REFERENCE)


def _cache_path() -> Path:
    import dfmscd

    return get_settings().data_dir / "cache" / f"architectures-{dfmscd.__version__}.json"


def _load_cache() -> dict[str, int | None]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(counts: dict[str, int | None]) -> None:
    write_bytes_atomic(_cache_path(), json.dumps(counts, sort_keys=True).encode())


def _fill(names: list[str]) -> None:
    for start in range(0, len(names), COUNT_BATCH):
        if _stop.is_set():
            return
        try:
            values = _count_batch(names[start:start + COUNT_BATCH])
        except ApiError:  # the torch process died (logged there): leave these uncounted for now
            return
        with _lock:
            _counts.update(values)
    with _lock:
        snapshot = dict(_counts)
    try:
        _save_cache(snapshot)
    except OSError as exc:  # pragma: no cover
        log.warning("cannot cache architecture counts: %s", exc)


def _start_background(names: list[str]) -> None:
    global _worker
    if _worker is not None and _worker.is_alive():
        return
    _stop.clear()
    # Not a daemon: torch must not be torn down under it at exit; stop_background() ends it.
    _worker = threading.Thread(target=_fill, args=(names,), name="arch-counts")
    _worker.start()


def stop_background(timeout: float = 30.0) -> None:
    """Called at application shutdown: finish the model being counted, then stop."""
    _stop.set()
    if _worker is not None:
        _worker.join(timeout)


FAMILIES = ("dfmscd", "torchvision", "timm")
DEFAULT_FAMILIES = ("dfmscd", "torchvision")
MAX_LIMIT = 1000


def _families(value: str | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_FAMILIES
    wanted = [v.strip().lower() for v in value.split(",") if v.strip()]
    if wanted == ["all"]:
        return FAMILIES
    bad = [v for v in wanted if v not in FAMILIES]
    if bad or not wanted:
        raise ApiError(422, "validation_error", f"query family: unknown family {bad[0] if bad else value!r}; "
                       f"use a comma-separated list of {', '.join(FAMILIES)}, or all")
    return tuple(f for f in FAMILIES if f in wanted)


_names: dict[str, list[str]] = {}  # family -> its names; a process's zoo never changes


def _family_names(family: str) -> list[str]:
    """One family's names, asked of the torch pool once per process (the first timm listing
    imports timm there: seconds)."""
    with _lock:
        cached = _names.get(family)
    if cached is None:
        cached = torch_pool.call(torch_checks.model_names, family)
        with _lock:
            _names[family] = cached
    return cached


def prefetch_names() -> None:
    """At start-up (with the torch pool's warm-up): the default families' names are asked for now,
    in the background, so the dashboard's first job form does not wait for torch to import."""

    def fetch() -> None:
        for family in DEFAULT_FAMILIES:
            try:
                _family_names(family)
            except Exception as exc:  # noqa: BLE001 - the first listing asks again and reports it
                log.warning("cannot list the %s architectures yet: %s", family, exc)
                return

    # A daemon: it only waits on the pool (no torch in this process), and shutdown stops the pool.
    threading.Thread(target=fetch, name="arch-names", daemon=True).start()


def _names_by_family(families: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, source) in answer order: the built-in zoo, then tv/, then timm/, each sorted."""
    return [(n, family) for family in FAMILIES if family in families for n in _family_names(family)]


@router.get("", response_model=ArchitectureList, responses={c: {"model": ErrorBody} for c in (401, 422, 429)})
def list_architectures(
    _principal: CurrentKey,
    family: str | None = Query(None, max_length=64, description="comma-separated families: dfmscd, torchvision, "
                               "timm, or all (default: dfmscd,torchvision)"),
    q: str | None = Query(None, min_length=1, max_length=128, description="keep names containing this (any case)"),
    limit: int | None = Query(None, ge=1, le=MAX_LIMIT, description="page size (default: every match)"),
    cursor: str | None = Query(None, min_length=1, max_length=200, description="the `next` of the previous page"),
) -> ArchitectureList:
    """Every architecture a student (or teacher) may use; counts fill in as they are computed.

    A teacher also needs BatchNorm layers (DF-MSCD matches their statistics): names without
    any (ViTs, ConvNeXts, ...) are listed since they make valid students, and an upload of
    such a teacher is refused with ``invalid_teacher``."""
    entries = _names_by_family(_families(family))
    if q:
        needle = q.lower()
        entries = [e for e in entries if needle in e[0].lower()]
    if cursor is not None:
        position = next((i for i, (n, _) in enumerate(entries) if n == cursor), None)
        if position is None:
            raise ApiError(422, "validation_error", f"query cursor: {cursor!r} is not in this listing "
                           "(pass the `next` of the previous page with the same family and q)")
        entries = entries[position + 1:]
    has_more = limit is not None and len(entries) > limit
    if limit is not None:
        entries = entries[:limit]
    with _lock:
        if not _counts:
            _counts.update(_load_cache())
        # dfmscd models first: they are quick. Only what this answer lists is counted.
        missing = [n for n, _ in entries if n not in _counts]
        counts = dict(_counts)
    if missing:
        _start_background(missing)
    data = [ArchitectureOut(name=n, parameters=counts.get(n), source=src) for n, src in entries]  # type: ignore[arg-type]
    return ArchitectureList(data=data, complete=not missing, has_more=has_more,
                            next=entries[-1][0] if has_more else None)
