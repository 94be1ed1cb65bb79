"""The model zoo with parameter counts (for a 10-class, 3x32x32 model).

Counting means building every model (the ~80 torchvision ones on the meta device, no memory),
tens of seconds of CPU in all, so it runs once in a background thread, the dfmscd models first,
is cached on disk, and the list answers at once with ``complete: false`` until it is done.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from fastapi import APIRouter, Depends

from dfmscd_service.api.auth import Principal, require_key
from dfmscd_service.api.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ArchitectureList, ArchitectureOut, ErrorBody
from dfmscd_service.core.settings import get_settings

router = APIRouter(prefix="/v1/architectures", tags=["architectures"], route_class=SessionReleasingRoute)
log = logging.getLogger("dfmscd.api")

_lock = threading.Lock()
_counts: dict[str, int | None] = {}
_worker: threading.Thread | None = None
_stop = threading.Event()
REFERENCE = dict(num_classes=10, in_channels=3, image_size=32)


def _count(name: str) -> int | None:
    """dfmscd models are small: build them on the CPU. torchvision ones go on the meta device
    (no memory; the first use costs seconds, which is why this runs in the background)."""
    import torch

    from dfmscd.models import count_parameters, create_model

    try:
        if not name.startswith("tv/"):
            return count_parameters(create_model(name, **REFERENCE))
        with torch.device("meta"):
            return count_parameters(create_model(name, **REFERENCE))
    except Exception:  # noqa: BLE001 - a model that cannot be built at the reference size
        return None


def _cache_path() -> Path:
    import dfmscd

    return get_settings().data_dir / "cache" / f"architectures-{dfmscd.__version__}.json"


def _load_cache() -> dict[str, int | None]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(counts: dict[str, int | None]) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(counts, sort_keys=True))
    os.replace(tmp, path)


def _fill(names: list[str]) -> None:
    for name in names:
        if _stop.is_set():
            return
        value = _count(name)
        with _lock:
            _counts[name] = value
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


@router.get("", response_model=ArchitectureList, responses={c: {"model": ErrorBody} for c in (401, 429)})
def list_architectures(_principal: Principal = Depends(require_key)) -> ArchitectureList:
    """Every architecture a student (or teacher) may use; counts fill in as they are computed."""
    from dfmscd.models import list_models

    own = list_models(include_torchvision=False)
    own_set = set(own)
    tv = [n for n in list_models() if n not in own_set]
    with _lock:
        if not _counts:
            _counts.update(_load_cache())
        missing = [n for n in own + tv if n not in _counts]  # dfmscd models first: they are quick
        counts = dict(_counts)
    if missing:
        _start_background(missing)
    data = [
        ArchitectureOut(name=n, parameters=counts.get(n), source="dfmscd" if n in own_set else "torchvision")
        for n in own + tv
    ]
    return ArchitectureList(data=data, complete=not missing)
