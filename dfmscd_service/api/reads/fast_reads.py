"""The poll and the list pages answered on the event loop: whole answers, checked by the change epoch.

On the exact path alone a poll costs one thread hop and one database round trip (the key check
and the job's version: api/reads/job_reads.py), and at 200 connections that was what kept its
p99 above ``/healthz``'s (docs/reliability.md, "A lean API", fast reads). Here each successful
answer is kept under ``(key hash, what was asked)`` together with the change epoch
(api/reads/change_epoch.py) in which the exact path produced it; while the epoch has not moved, nothing the answer depends on (the key's
row, the jobs, their students, the teachers) can have been committed since, so the same bytes
are served on the event loop: no thread, no query. Any other case takes the exact path on a read
thread (api/reads/read_threads.py) and stores what it answered:

- the epoch is None (``DFMSCD_API_FAST_READS=false``, an in-memory database, the PostgreSQL
  listener not connected) or has moved since the entry was built;
- nothing is cached for that key and question (401 and 404 are never cached: they keep going
  through the exact path, which names what is wrong).

The fast path counts every request it serves against the key's rate limit and answers 429 the
same way. It takes a ticket on the loop when this process holds one
(``ratelimit.enforce_rate_limit(local_only=True)``); when the next one needs a round trip to Redis
(a new window, a block not yet back) it counts on a read thread, with no query, and then answers
from the entry, which was current when the request was taken up (the exact path would have put a
query per waiting connection behind the two read threads at each such moment).

The epoch is read *before* the exact path reads the database, so a commit landing in between can
only make the next request rebuild, never keep old bytes. The cache is bounded by bytes and
forgets the least recently used answers first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import event
from sqlalchemy.orm import Session

from dfmscd_service.api.auth import credentials_hash
from dfmscd_service.api.ratelimit import enforce_rate_limit
from dfmscd_service.api.reads import read_threads
from dfmscd_service.api.reads.answer_cache import AnswerCache
from dfmscd_service.api.reads.change_epoch import ChangeEpoch, epoch_source
from dfmscd_service.core.settings import get_settings

FRONT_CACHE_BYTES = 32 * 1024 * 1024
_ENTRY_OVERHEAD = 200  # the key tuple, the key id and the entry itself, roughly


def _entry_size(entry: tuple[str, bytes]) -> int:
    return len(entry[1]) + _ENTRY_OVERHEAD


class FastReads:
    """One per application (``app.state.fast_reads``): the epoch, the front cache, two counters."""

    def __init__(self, max_bytes: int = FRONT_CACHE_BYTES) -> None:
        self.epoch: ChangeEpoch | None = None
        self.cache: AnswerCache[tuple[str, bytes]] = AnswerCache(max_bytes, size=_entry_size)
        self.hits = 0  # answered from the front cache, on the event loop
        self.shared = 0  # answered by a build another request of the same slot and epoch had started
        self.exact = 0  # exact-path runs (each on a read thread, with a query)
        # slot -> (epoch, loop, future) of the exact-path run under way for it
        self._flights: dict[tuple[Hashable, ...], tuple[Hashable, asyncio.AbstractEventLoop, asyncio.Future[tuple[str, bytes]]]] = {}
        self._on_commit = self._committed

    async def start(self) -> None:
        """Follow the database's changes when ``api_fast_reads`` is on (after the migrations)."""
        settings = get_settings()
        epoch = epoch_source(settings.resolved_database_url) if settings.api_fast_reads else None
        if epoch is None:
            return
        await epoch.start()
        # This process's own writes (a cancel, a revoked key, a deleted teacher, ...) bump the epoch
        # right after their commit: the caller's next read sees them, whatever the notification does.
        # Hooked before the epoch is in use, so that no commit falls between the two.
        event.listen(Session, "after_commit", self._on_commit)
        self.epoch = epoch

    async def stop(self) -> None:
        epoch, self.epoch = self.epoch, None
        if epoch is None:
            return
        event.remove(Session, "after_commit", self._on_commit)
        await epoch.stop()
        self.cache.clear()

    def _committed(self, _session: Session) -> None:
        epoch = self.epoch
        if epoch is not None:
            epoch.bump()

    async def answer(self, credentials: HTTPAuthorizationCredentials | None, question: tuple[Hashable, ...],
                     exact: Callable[..., tuple[str, bytes]], *args: Any) -> bytes:
        """The answer to ``question`` (what the route was asked, beyond the key) for this key:
        cached bytes when still current, else ``exact(key_hash, *args)`` (-> key id, bytes) on a
        read thread. Raises as the exact path does (401 first, then 429, then 404)."""
        key_hash = credentials_hash(credentials)  # 401 for a missing or non-Bearer header, as before
        epoch = self.epoch
        now = epoch.current() if epoch is not None else None
        if now is None:
            self.exact += 1
            return (await read_threads.run(exact, key_hash, *args))[1]
        slot = (key_hash, *question)
        entry = self.cache.get(slot, now)
        if entry is None:
            entry = await self._built(slot, now)
            if entry is None:
                return await self._build(slot, now, exact, key_hash, *args)
        # No ticket at hand (a new rate-limit window, a block still on its way from Redis): count
        # this one on a read thread, with no query, and answer what was current when it was taken up.
        if not enforce_rate_limit(entry[0], local_only=True):
            await read_threads.run(enforce_rate_limit, entry[0])
        self.hits += 1
        return entry[1]

    async def _built(self, slot: tuple[Hashable, ...], now: Hashable) -> tuple[str, bytes] | None:
        """What a build of ``slot`` in this epoch, already under way, answers; None when there is
        none or it failed (its refusal or its 429 is its own: this request then asks for itself).
        Without this, the first moments after any change sent every waiting connection's request to
        the exact path at once: 150-200 queries behind two read threads."""
        flight = self._flights.get(slot)
        if flight is None or flight[0] != now or flight[1] is not asyncio.get_running_loop():
            return None
        await asyncio.wait({flight[2]})
        future = flight[2]
        if future.cancelled() or future.exception() is not None:
            return None
        self.shared += 1
        result: tuple[str, bytes] = future.result()
        return result

    async def _build(self, slot: tuple[Hashable, ...], now: Hashable, exact: Callable[..., tuple[str, bytes]],
                     key_hash: str, *args: Any) -> bytes:
        """The exact path, its answer kept under the epoch read before it ran; requests for the
        same slot in the same epoch meanwhile wait for it (``_built``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, bytes]] = loop.create_future()
        flight = self._flights[slot] = (now, loop, future)
        self.exact += 1
        try:
            key_id, body = await read_threads.run(exact, key_hash, *args)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            self.cache.put(slot, now, (key_id, body))
            future.set_result((key_id, body))
            return body
        finally:
            if self._flights.get(slot) is flight:
                del self._flights[slot]


def fast_reads(request: Request) -> FastReads:
    """The application's ``FastReads`` (made by ``main.create_app``)."""
    reads: FastReads = request.app.state.fast_reads
    return reads
