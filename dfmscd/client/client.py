"""``Client``: the dfmscd service from Python (teachers, jobs, events, downloads, student reports,
evaluation sets and evaluations).

Only httpx, tqdm and pydantic (the budget grammar) are imported (never torch, FastAPI or SQLAlchemy), so the client is cheap to
import on a machine that only talks to a remote service.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from dfmscd.config import parse_budget
from dfmscd.errors import ConfigError

from dfmscd.client.errors import ChecksumMismatchError, DfmscdConnectionError, WaitTimeoutError, from_response
from dfmscd.client.models import (
    Architecture,
    Download,
    Evaluation,
    EvaluationSet,
    Event,
    Job,
    Student,
    StudentReport,
    Teacher,
)
from dfmscd.client.sse import parse_sse
from dfmscd.client.transport import RetryPolicy, Transport, raise_for_error

DEFAULT_URL = "http://127.0.0.1:8000"
_CHUNK = 1024 * 1024


# --------------------------------------------------------------------------- request shapes
def budget_body(budget: Any) -> dict[str, Any] | None:
    """The API's ``{"seconds": S}`` / ``{"epochs": N}`` from what a user writes.

    Strings follow the library's one grammar (``dfmscd.config.parse_budget``: ``"300s"``, ``"5m"``,
    ``"2h"``, ``"40e"``, ``"40 epochs"``); also a ``timedelta``, a dict already in the API's shape,
    or an object with ``model_dump`` (a ``dfmscd.config.Budget``). A bare number is refused:
    seconds or epochs would be a guess. Errors are ``ValueError``s.
    """
    if budget is None:
        return None
    if isinstance(budget, timedelta):
        return {"seconds": budget.total_seconds()}
    if hasattr(budget, "model_dump") and not isinstance(budget, Mapping):
        budget = budget.model_dump(exclude_none=True)
    if isinstance(budget, Mapping):
        return {k: v for k, v in budget.items() if v is not None}
    if isinstance(budget, bool) or isinstance(budget, (int, float)):
        raise ValueError(f"budget {budget!r} is ambiguous: write '{budget}s' (seconds) or '{budget}e' (epochs)")
    if not isinstance(budget, str):
        raise TypeError(f"budget must be a string like '300s' / '40e', a timedelta or a dict, not {type(budget).__name__}")
    try:
        return parse_budget(budget).model_dump(exclude_none=True)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def student_body(student: Any) -> dict[str, Any]:
    """One entry of the API's ``students``.

    * ``"resnet8"``: that architecture (the student is named after it);
    * a dict with ``architecture`` is the API's own shape (``architecture``, optional ``name``,
      ``arch_kwargs``) and is sent as it is;
    * a dict without ``architecture`` names the architecture ``name`` (``{"name": "resnet8",
      "arch_kwargs": {...}}``);
    * an object with ``architecture`` / ``name`` / ``arch_kwargs`` attributes
      (``dfmscd.engine.StudentSpec``).
    """
    if isinstance(student, str):
        return {"architecture": student}
    if isinstance(student, Mapping):
        if "architecture" in student:
            return dict(student)
        if "name" not in student:
            raise ValueError(f"student {dict(student)!r} needs 'name' (the architecture) or 'architecture'")
        out = {"architecture": student["name"], **{k: v for k, v in student.items() if k != "name"}}
        return out
    if hasattr(student, "architecture"):
        out = {"architecture": student.architecture}
        if getattr(student, "name", None):
            out["name"] = student.name
        if getattr(student, "arch_kwargs", None):
            out["arch_kwargs"] = dict(student.arch_kwargs)
        return out
    raise TypeError(f"a student is an architecture name or a dict, not {type(student).__name__}")


def card_text(card: Any) -> str:
    """Model card JSON from a path, JSON text, a dict or a ``ModelCard`` (duck-typed on
    ``model_dump``, so that ``dfmscd.io`` and torch need not be imported here)."""
    if hasattr(card, "model_dump") and not isinstance(card, Mapping):
        return json.dumps(card.model_dump(mode="json", exclude_none=True), sort_keys=True)
    if isinstance(card, Mapping):
        return json.dumps(dict(card), sort_keys=True)
    if isinstance(card, str) and card.lstrip().startswith("{"):
        return card
    if isinstance(card, (str, os.PathLike)):
        return Path(card).read_text(encoding="utf-8")
    raise TypeError(f"card must be a path, a dict or a ModelCard, not {type(card).__name__}")


# --------------------------------------------------------------------------- progress
def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _byte_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                leave=False, file=sys.stderr)


class _ProgressReader:
    """A file wrapper that advances a byte bar as httpx reads the upload (reset on every retry)."""

    def __init__(self, fh: BinaryIO, bar: Any) -> None:
        self.fh = fh
        self.bar = bar

    def read(self, n: int = -1) -> bytes:
        chunk = self.fh.read(n)
        if self.bar is not None and chunk:
            self.bar.update(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self.fh.seek(offset, whence)
        if self.bar is not None and whence == 0 and offset == 0:
            self.bar.reset(total=self.bar.total)
        return pos

    def tell(self) -> int:
        return self.fh.tell()

    def fileno(self) -> int:
        return self.fh.fileno()


def _strip_etag(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"') or None


def _is_sha256(value: str | None) -> bool:
    return bool(value) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())  # type: ignore[union-attr]


# --------------------------------------------------------------------------- client
class Client:
    """A dfmscd service. ``base_url`` and ``api_key`` default to ``$DFMSCD_API_URL`` (else
    ``http://127.0.0.1:8000``) and ``$DFMSCD_API_KEY``.

    ``progress``: byte bars for uploads/downloads and a progress/ETA bar in ``wait``; None (the
    default) shows them only when stderr is a terminal. ``retry``: the :class:`RetryPolicy`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float | httpx.Timeout = 60.0,
                 retry: RetryPolicy | None = None, progress: bool | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        url = base_url or os.environ.get("DFMSCD_API_URL") or DEFAULT_URL
        self.base_url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("DFMSCD_API_KEY")
        self.progress = progress
        self.retry = retry or RetryPolicy()
        headers = {"User-Agent": "dfmscd-client/" + _version()}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=self._timeout,
                                  transport=transport)
        self._transport = Transport(self._http, self.retry)

    # ---------------------------------------------------------------- plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE", "PUT", "OPTIONS")
        return self._transport.send(lambda: self._http.build_request(method, path, **kwargs), idempotent=idempotent)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._request(method, path, **kwargs)
        return r.json() if r.content else None

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._json("GET", path, params=params)
            yield from page["data"]
            if not page.get("has_more") or not page.get("next"):
                return
            params = {**params, "after": page["next"]}

    # ---------------------------------------------------------------- service
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz") or {}

    def architectures(self, family: str | None = None, q: str | None = None) -> list[Architecture]:
        """Architectures the service can build (``family``/``q`` filters where the service has them)."""
        params = {k: v for k, v in {"family": family, "q": q}.items() if v is not None}
        out: list[Architecture] = []
        while True:
            page = self._json("GET", "/v1/architectures", params=params)
            out += [Architecture.from_dict(a) for a in page["data"]]
            if not page.get("has_more") or not page.get("next"):
                return out
            params = {**params, "cursor": page["next"]}

    # ---------------------------------------------------------------- teachers
    def upload_teacher(self, path: str | os.PathLike[str], card: Any, *, progress: bool | None = None) -> Teacher:
        """Upload weights (safetensors or a weights-only .pt/.pth) with their model card."""
        return Teacher.from_dict(self._upload("/v1/teachers", Path(path), {"card": card_text(card)}, progress))

    def _upload(self, route: str, path: Path, fields: dict[str, str], progress: bool | None) -> dict[str, Any]:
        """A streamed multipart upload of ``path`` (field ``file``) with small ``fields``; resent only
        when the connection could not be made."""
        size = path.stat().st_size
        bar = _byte_bar(_show_progress(self.progress if progress is None else progress), size, 0,
                        f"upload {path.name}")
        try:
            with open(path, "rb") as fh:
                reader = _ProgressReader(fh, bar)

                def build() -> httpx.Request:
                    fh.seek(0)
                    return self._http.build_request(
                        "POST", route,
                        files={"file": (path.name, reader, "application/octet-stream")},  # type: ignore[dict-item]
                        data=fields or None,
                    )

                r = self._transport.send(build, idempotent=False)
        finally:
            if bar is not None:
                bar.close()
        return r.json()

    def get_teacher(self, teacher_id: str) -> Teacher:
        return Teacher.from_dict(self._json("GET", f"/v1/teachers/{_seg(teacher_id)}"))

    def list_teachers(self, *, page_size: int | None = None) -> Iterator[Teacher]:
        """Every teacher of this key, newest first, fetched page by page as the iterator advances."""
        for item in self._pages("/v1/teachers", {"limit": page_size}):
            yield Teacher.from_dict(item)

    def delete_teacher(self, teacher_id: str) -> None:
        self._request("DELETE", f"/v1/teachers/{_seg(teacher_id)}")

    # ---------------------------------------------------------------- jobs
    def create_job(self, teacher_id: str | Teacher, students: Iterable[Any], *, preset: str | None = None,
                   budget: Any = None, hyperparameters: Mapping[str, Any] | None = None, seed: int | None = None,
                   metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
                   evaluation_set_id: "str | EvaluationSet | None" = None) -> Job:
        """Queue a job. An ``Idempotency-Key`` (a fresh uuid4 unless given) goes with the request
        and with each of its retries, so a retried call never creates two jobs. With
        ``evaluation_set_id`` the worker evaluates the teacher and every student on that set when
        the job ends (``list_evaluations``; reporting only)."""
        if isinstance(teacher_id, Teacher):
            teacher_id = teacher_id.id
        body: dict[str, Any] = {"teacher_id": teacher_id, "students": [student_body(s) for s in students]}
        if preset is not None:
            body["preset"] = preset
        b = budget_body(budget)
        if b is not None:
            body["budget"] = b
        if hyperparameters:
            body["hyperparameters"] = dict(hyperparameters)
        if seed is not None:
            body["seed"] = seed
        if metadata:
            body["metadata"] = dict(metadata)
        if evaluation_set_id is not None:
            body["evaluation_set_id"] = _id(evaluation_set_id)
        key = idempotency_key or str(uuid.uuid4())
        data = self._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}, idempotent=True)
        return Job.from_dict(data)

    def get_job(self, job_id: str | Job) -> Job:
        return Job.from_dict(self._json("GET", f"/v1/jobs/{_seg(_id(job_id))}"))

    def list_jobs(self, *, status: str | Iterable[str] | None = None, page_size: int | None = None) -> Iterator[Job]:
        """Every job of this key (optionally only some statuses), newest first, page by page."""
        if status is not None and not isinstance(status, str):
            status = ",".join(status)
        for item in self._pages("/v1/jobs", {"status": status, "limit": page_size}):
            yield Job.from_dict(item)

    def cancel_job(self, job_id: str | Job) -> Job:
        """Ask the job to stop (a queued job is cancelled at once, a running one at its next step)."""
        return Job.from_dict(self._json("POST", f"/v1/jobs/{_seg(_id(job_id))}/cancel", idempotent=True))

    def delete_job(self, job_id: str | Job) -> None:
        """Delete a finished job and everything it stored (409 ``JobActiveError`` while it runs)."""
        self._request("DELETE", f"/v1/jobs/{_seg(_id(job_id))}")

    def get_student(self, job_id: str | Job, name: str) -> Student:
        return Student.from_dict(self._json("GET", f"/v1/jobs/{_seg(_id(job_id))}/students/{_seg(name)}"))

    def student_report(self, job_id: str | Job, name: str) -> StudentReport:
        """The student's report (parameters, FLOPs, size and CPU latency per format, teacher
        agreement, verification figures), its files and its accuracy on each evaluation set."""
        return StudentReport.from_dict(self._json("GET", f"/v1/jobs/{_seg(_id(job_id))}/students/{_seg(name)}/report"))

    # ---------------------------------------------------------------- evaluation sets and evaluations
    def upload_evaluation_set(self, path: str | os.PathLike[str], *, teacher_id: "str | Teacher | None" = None,
                              progress: bool | None = None) -> EvaluationSet:
        """Upload labelled images to report accuracy on: a ``.npz`` (``x``, integer ``y``) or a
        class-folder archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``); at most 200 MB and 100,000
        images. With ``teacher_id`` it is checked against that teacher's card now."""
        fields = {"teacher_id": _id(teacher_id)} if teacher_id is not None else {}
        return EvaluationSet.from_dict(self._upload("/v1/evaluation-sets", Path(path), fields, progress))

    def get_evaluation_set(self, set_id: str | EvaluationSet) -> EvaluationSet:
        return EvaluationSet.from_dict(self._json("GET", f"/v1/evaluation-sets/{_seg(_id(set_id))}"))

    def list_evaluation_sets(self, *, page_size: int | None = None) -> Iterator[EvaluationSet]:
        for item in self._pages("/v1/evaluation-sets", {"limit": page_size}):
            yield EvaluationSet.from_dict(item)

    def delete_evaluation_set(self, set_id: str | EvaluationSet) -> None:
        """Delete a set and its evaluations (409 ``EvaluationSetInUseError`` while a job or an evaluation uses it)."""
        self._request("DELETE", f"/v1/evaluation-sets/{_seg(_id(set_id))}")

    def evaluate_job(self, job_id: str | Job, evaluation_set_id: str | EvaluationSet) -> Evaluation:
        """Queue the evaluation of a finished job on a set (the worker runs the teacher and every
        student, PyTorch weights and each stored file); ``wait_evaluation`` for its results."""
        data = self._json("POST", f"/v1/jobs/{_seg(_id(job_id))}/evaluations",
                          json={"evaluation_set_id": _id(evaluation_set_id)}, idempotent=False)
        return Evaluation.from_dict(data)

    def get_evaluation(self, job_id: str | Job, evaluation_id: str | Evaluation) -> Evaluation:
        return Evaluation.from_dict(self._json("GET", f"/v1/jobs/{_seg(_id(job_id))}/evaluations/{_seg(_id(evaluation_id))}"))

    def list_evaluations(self, job_id: str | Job) -> list[Evaluation]:
        """The job's evaluations, newest first (the one made when the job ended among them)."""
        return [Evaluation.from_dict(e) for e in self._json("GET", f"/v1/jobs/{_seg(_id(job_id))}/evaluations")["data"]]

    def wait_evaluation(self, job_id: str | Job, evaluation_id: str | Evaluation, timeout: float | None = None, *,
                        interval: float = 0.2, max_interval: float = 2.0) -> Evaluation:
        """Poll the evaluation until it has succeeded or failed (the interval doubles up to
        ``max_interval``); ``WaitTimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            evaluation = self.get_evaluation(job_id, evaluation_id)
            if evaluation.done:
                return evaluation
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeoutError(evaluation.id, timeout or 0.0, evaluation.status, what="evaluation")
            time.sleep(interval)  # polling: evaluations have no event stream
            interval = min(max_interval, interval * 2)

    # ---------------------------------------------------------------- events
    def events(self, job_id: str | Job, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events, live, until the job is finished (then the iterator ends).

        A dropped connection is reopened with ``Last-Event-ID`` (the last event seen), so no
        event is lost or repeated; ``last_event_id`` starts after that event.
        """
        for item in self._event_stream(_id(job_id), last_event_id):
            if item is not None:
                yield item

    def _event_stream(self, job_id: str, last_event_id: int | None,
                      read_timeout: float | None = None) -> Iterator[Event | None]:
        """Events, and None for every sign of life without one (keep-alive), so a caller can
        look at a clock. Reconnects with backoff; gives up after ``retry.attempts`` failures in a row."""
        last = last_event_id
        failures = 0
        reconnect_delay: float | None = None
        path = f"/v1/jobs/{_seg(job_id)}/events"
        timeout = self._timeout if read_timeout is None else httpx.Timeout(**{**self._timeout.as_dict(),
                                                                             "read": read_timeout})
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            error: BaseException | None = None
            try:
                r = self._transport.send(
                    lambda: self._http.build_request("GET", path, headers=headers, timeout=timeout),
                    idempotent=True, stream=True)
                try:
                    for msg in parse_sse(r.iter_lines()):
                        if msg.retry is not None:
                            reconnect_delay = msg.retry / 1000
                        if msg.comment is not None:
                            yield None
                            continue
                        if msg.event == "end":
                            return
                        if msg.event == "error":
                            try:
                                body = json.loads(msg.data)
                            except ValueError:
                                body = None
                            code = (body or {}).get("error", {}).get("code") if isinstance(body, dict) else None
                            status = 401 if code == "unauthorized" else 500
                            raise from_response(status, {}, body, msg.data)
                        if not msg.data:
                            yield None  # "retry:" or an empty message: alive, nothing to report
                            continue
                        event = Event.from_dict(json.loads(msg.data))
                        last = event.id
                        failures = 0
                        yield event
                finally:
                    r.close()
                # The stream ended without its "end" message: the connection was dropped.
            except httpx.TransportError as exc:  # broken mid-stream (opening it is retried by send)
                error = exc
            failures += 1
            if failures >= self.retry.attempts:
                raise DfmscdConnectionError(
                    f"the event stream of job {job_id!r} kept breaking ({failures} times in a row)"
                ) from error
            delay = self.retry.backoff_delay(failures - 1)
            if reconnect_delay is not None and failures == 1:
                delay = min(delay, reconnect_delay)
            self.retry.sleep(delay)

    def wait(self, job_id: str | Job, timeout: float | None = None, *, progress: bool | None = None) -> Job:
        """Follow the job's events until it is finished and return it (whatever its final status:
        look at ``.status``). ``WaitTimeoutError`` after ``timeout`` seconds. On a terminal it
        shows the job's progress and ETA."""
        job_id = _id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_job(job_id)
        if job.done:
            return job
        bar = None
        if _show_progress(self.progress if progress is None else progress):
            from tqdm import tqdm

            bar = tqdm(total=100, desc=job_id, unit="%", leave=False, file=sys.stderr,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
            bar.update(round(job.progress * 100))
        read_timeout = None if deadline is None else max(1.0, min(60.0, timeout or 60.0))
        try:
            for event in self._event_stream(job_id, None, read_timeout=read_timeout):
                if event is not None and bar is not None and event.kind == "progress":
                    eta = event.data.get("eta_s")
                    bar.n = min(100, round(event.progress * 100))
                    bar.set_postfix_str(f"epoch {event.epoch}" + (f", ETA {_fmt_s(eta)}" if eta is not None else ""),
                                        refresh=False)
                    bar.refresh()
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeoutError(job_id, timeout or 0.0, self.get_job(job_id).status)
        except DfmscdConnectionError:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(job_id, timeout or 0.0, None) from None
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.get_job(job_id)

    # ---------------------------------------------------------------- downloads
    def download_student(self, job_id: str | Job, name: str, path: str | os.PathLike[str],
                         format: str = "safetensors", *, progress: bool | None = None) -> Download:
        """Download a student's weights to ``path``.

        The bytes go to ``<path>.part`` in the same folder; an existing ``.part`` (an interrupted
        earlier call) is resumed with ``Range``. The sha256 is checked against the service's
        ETag before the file is moved into place with ``os.replace``, so ``path`` is either absent,
        untouched, or the complete verified file. A resumed partial that turns out stale (a
        mismatch) is discarded and the file downloaded again whole, once; a mismatch of a whole
        download raises ``ChecksumMismatchError``.
        """
        job_id = _id(job_id)
        url = f"/v1/jobs/{_seg(job_id)}/students/{_seg(name)}/weights"
        expected = None
        if format == "safetensors":
            expected = self.get_student(job_id, name).sha256
        return self._download(url, {"format": format}, Path(path), expected, progress)

    def download_samples(self, job_id: str | Job, path: str | os.PathLike[str], *,
                         progress: bool | None = None) -> Download:
        """The job's grid of synthesized images (PNG), with the same resume and checks."""
        job_id = _id(job_id)
        return self._download(f"/v1/jobs/{_seg(job_id)}/samples.png", {}, Path(path), None, progress)

    def _download(self, url: str, params: dict[str, Any], path: Path, expected: str | None,
                  progress: bool | None) -> Download:
        part = path.with_name(path.name + ".part")
        show = _show_progress(self.progress if progress is None else progress)
        restarted = False
        resumed_from: int | None = None
        ranges = 0
        failures = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if resumed_from is None:
                resumed_from = offset
            headers: dict[str, str] = {}
            if offset:
                ranges += 1
                headers["Range"] = f"bytes={offset}-"
                if expected:
                    headers["If-Range"] = f'"{expected}"'
            try:
                done = self._download_once(url, params, headers, part, offset, show, path.name)
            except (httpx.TransportError, DfmscdConnectionError) as exc:
                # Dropped mid-body: what arrived is in the .part file; go on from there.
                failures += 1
                if failures >= self.retry.attempts:
                    raise DfmscdConnectionError(f"download of {path.name} kept breaking: {exc}") from exc
                self.retry.sleep(self.retry.backoff_delay(failures - 1))
                continue
            if done is None:  # 416: the partial is not a prefix of this file
                part.unlink(missing_ok=True)
                restarted = True
                continue
            etag, digest, size = done
            announced = etag if _is_sha256(etag) else expected
            if announced and digest != announced:
                part.unlink(missing_ok=True)
                if offset and not restarted:  # a stale partial from another file: once more, whole
                    restarted = True
                    continue
                raise ChecksumMismatchError(announced, digest, path.name)
            os.replace(part, path)
            return Download(path=path, sha256=digest, size_bytes=size, resumed_from=0 if restarted else resumed_from,
                            restarted=restarted, range_requests=ranges)

    def _download_once(self, url: str, params: dict[str, Any], headers: dict[str, str], part: Path, offset: int,
                       show: bool, label: str) -> tuple[str | None, str, int] | None:
        """One GET into ``part``: (ETag, sha256 of the whole part file, size), or None on a 416."""
        request = lambda: self._http.build_request("GET", url, params=params, headers=headers)  # noqa: E731
        try:
            r = self._transport.send(request, idempotent=True, stream=True)
        except DfmscdConnectionError:
            raise
        except Exception as exc:
            if getattr(exc, "status_code", None) == 416 and offset:
                return None
            raise
        try:
            etag = _strip_etag(r.headers.get("etag"))
            h = hashlib.sha256()
            if r.status_code == 206 and offset:
                start = _content_range_start(r.headers.get("content-range"))
                if start != offset:
                    raise DfmscdConnectionError(f"asked for bytes from {offset}, got {r.headers.get('content-range')!r}")
                with open(part, "rb") as fh:
                    for block in iter(lambda: fh.read(_CHUNK), b""):
                        h.update(block)
                mode = "ab"
            else:  # a whole file (no range asked, or the file changed and If-Range said so)
                offset = 0
                mode = "wb"
            length = r.headers.get("content-length")
            total = offset + int(length) if length and length.isdigit() else None
            bar = _byte_bar(show, total, offset, f"download {label}")
            try:
                with open(part, mode) as out:
                    for chunk in r.iter_bytes():  # as received: a chunk size would buffer what a drop loses
                        out.write(chunk)
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                if bar is not None:
                    bar.close()
            size = part.stat().st_size
            if total is not None and size != total:
                raise DfmscdConnectionError(f"{label}: got {size} of {total} bytes")
            return etag, h.hexdigest(), size
        finally:
            r.close()


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _id(obj: Any) -> str:
    return obj.id if hasattr(obj, "id") and not isinstance(obj, str) else str(obj)


def _seg(value: str) -> str:
    """A path segment, percent-encoded (an id or name never changes the route)."""
    from urllib.parse import quote

    return quote(str(value), safe="")


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _version() -> str:
    try:
        from dfmscd import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"


__all__ = ["Client", "DEFAULT_URL", "budget_body", "card_text", "student_body", "raise_for_error"]
