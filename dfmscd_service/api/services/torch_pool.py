"""A small pool of spawned processes for the API's torch work, so the web process never imports torch.

Importing torch costs the API ~500 MiB of RSS and seconds of start-up, for work that is rare
next to the polls: checking an uploaded teacher, counting a job's students, listing the zoo,
exporting a student. That work runs here (``dfmscd_service.api.services.torch_checks``) in
``api_torch_processes`` children (spawned, never forked: the parent holds threads and sockets),
started (in the background) when the application starts, unless ``api_torch_warm`` is off,
or else on first use, and kept for the life of the application. A child that dies (the kernel's
OOM killer on a hostile file) breaks only the call in flight: it answers 503 and the next call
starts a fresh pool.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, TypeVar

from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.api.services import torch_checks
from dfmscd_service.core.settings import get_settings

log = logging.getLogger("dfmscd.api")
T = TypeVar("T")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            settings = get_settings()
            _pool = ProcessPoolExecutor(
                max_workers=settings.api_torch_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=torch_checks.init_child,
                initargs=(settings.torch_threads or 1,),
            )
            log.info("started %d torch process(es) for teacher checks and exports", settings.api_torch_processes)
        return _pool


def _submit(fn: Callable[..., T], *args: Any) -> tuple[ProcessPoolExecutor, Future[T]]:
    pool = _get_pool()
    try:
        return pool, pool.submit(fn, *args)
    except (BrokenProcessPool, RuntimeError):  # broken earlier, or shut down under us: start afresh
        _discard(pool)
        pool = _get_pool()
        return pool, pool.submit(fn, *args)


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _unavailable(pool: ProcessPoolExecutor, fn: Callable[..., Any]) -> ApiError:
    _discard(pool)
    log.error("a torch process died running %s", fn.__name__)
    return ApiError(503, "checker_unavailable", "the model checker process stopped while handling this request; "
                    "try again", {"Retry-After": "5"})


def call(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a child and wait (from a worker thread, never the event loop)."""
    pool, future = _submit(fn, *args)
    try:
        return future.result()
    except BrokenProcessPool:
        raise _unavailable(pool, fn) from None


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``call`` for async routes: awaits the child without holding a threadpool thread."""
    pool, future = _submit(fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except BrokenProcessPool:
        raise _unavailable(pool, fn) from None


def warm() -> None:
    """Start the children now, in the background (torch takes seconds to import, far more on a
    busy host): the first upload should not pay for it. Nothing waits for this."""
    _submit(torch_checks.ping)


def shutdown() -> None:
    """At application shutdown: stop the children (they hold no state worth waiting for)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
