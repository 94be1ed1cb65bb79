"""Two threads of their own for the cheap reads (the job poll, the job and teacher lists).

On AnyIO's shared threadpool (``api_threads``, 40) a poll waited behind uploads, exports and
every other sync route, and 200 polling clients kept 40 threads fighting for the GIL, so the
event loop (which parses requests and writes answers) got the interpreter late: p99 grew
with the thread count (measured with benchmarks/load.py: 440 ms with 1 thread, 650 ms with 4,
2.8 s with 40). A read is a fraction of a millisecond of Python, so ``api_read_threads`` threads
keep the database busy without that convoy, and slow routes cannot hold them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from dfmscd_service.core.settings import get_settings

T = TypeVar("T")
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _get() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(get_settings().api_read_threads, thread_name_prefix="api-read")
        return _executor


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a read thread; the event loop waits without blocking."""
    return await asyncio.get_running_loop().run_in_executor(_get(), fn, *args)


def shutdown() -> None:
    global _executor
    with _lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.shutdown(wait=True)
