"""Per-key request rate limit: a fixed window counter, in Redis when there is one.

Why a fixed window: one ``INCR`` (plus ``EXPIRE``, in one script call) per request is the cheapest counter that
several API processes can share, and its known weakness (up to twice the allowance across a
window boundary) is harmless for a limit meant to stop runaway clients, not to meter usage.

Where the counters live: with a Redis broker (``DFMSCD_BROKER_URL=redis://...``, the
PostgreSQL/Redis deployment that runs several API processes) or an explicit
``DFMSCD_RATE_LIMIT_REDIS_URL`` they are Redis keys ``<broker_key_prefix>ratelimit:<key id>:<window>``
shared by every process; otherwise (embedded mode: one API process) they are in this process.
If Redis cannot be reached the limiter fails open onto in-process counters for a few seconds
and retries: a Redis restart must not turn every request into an error.

Tickets in blocks: a counter value is a ticket, and a request is allowed when its ticket is within
the limit. A process reserves ``lease_block(limit)`` tickets with one ``INCRBY`` and hands them out
locally, so a busy key costs one Redis round trip per block instead of one per request (that round
trip was a quarter of a PostgreSQL-mode poll). Tickets are never shared, so the limit is never
exceeded; tickets a process reserved but did not use before the window ended are lost, so with P
processes a window may allow up to (P - 1) x block fewer requests (block <= 1 % of the limit, and 1,
i.e. exact, for limits under 200).

The fast reads (api/reads/fast_reads.py) count on the event loop, so they ask for a *local* ticket
(``local_only``): one from this process's lease, or from in-process counters; with no ticket at
hand they get None, count nothing, and the request takes the exact path on a read thread, which
counts it there. So that this is rare, a local caller that has used half of a block has the next
one reserved in the background (one thread): blocks are reserved outside the leases' lock, and
a process may then hold two blocks, so a window may allow up to (P - 1) x 2 blocks fewer. Without
that, every request arriving during a reservation's round trip (or while the reserving thread
waited for the interpreter) went the exact way: 43 % of PostgreSQL-mode polls under wrk.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import redis

from dfmscd_service.api.http.errors import ApiError
from dfmscd_service.core.broker import is_redis_url
from dfmscd_service.core.settings import Settings, get_settings

log = logging.getLogger("dfmscd.api")

REDIS_RETRY_SECONDS = 5.0
_REDIS_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # whole seconds until the window ends (>= 1)


MAX_LEASE_BLOCK = 64


def lease_block(limit: int) -> int:
    """Tickets reserved per round trip for a limit: 1 % of it, between 1 and ``MAX_LEASE_BLOCK``."""
    return max(1, min(MAX_LEASE_BLOCK, limit // 100))


class Counter(Protocol):
    def incr(self, name: str, ttl_seconds: int, by: int = 1) -> int:
        """Add ``by`` to ``name`` (created at 0, forgotten after ``ttl_seconds``); return the new value."""


class MemoryCounter:
    """Counters in this process; expired names are pruned as new ones are made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}

    def incr(self, name: str, ttl_seconds: int, by: int = 1) -> int:
        now = time.monotonic()
        with self._lock:
            count, expires = self._counts.get(name, (0, now + ttl_seconds))
            if expires <= now:
                count, expires = 0, now + ttl_seconds
            if name not in self._counts and len(self._counts) > 1024:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._counts[name] = (count + by, expires)
            return count + by


_INCR_WITH_TTL = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RedisCounter:
    """``INCRBY`` (and ``EXPIRE`` on the window's first request) in one script call, shared by every
    process using the same Redis. One command and one integer reply: the MULTI/INCR/EXPIRE/EXEC
    transaction it replaces was half of a PostgreSQL-mode poll's CPU in the API process."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url, socket_timeout=_REDIS_TIMEOUT_SECONDS, socket_connect_timeout=_REDIS_TIMEOUT_SECONDS
        )
        self._script = self.client.register_script(_INCR_WITH_TTL)  # EVALSHA, loaded again if Redis forgot it

    def incr(self, name: str, ttl_seconds: int, by: int = 1) -> int:
        return int(self._script(keys=[self.prefix + name], args=[ttl_seconds, by]))


@dataclass
class _Lease:
    name: str  # the counter (bucket and window) the tickets came from
    next: int
    last: int
    spare: tuple[int, int] | None = None  # the next block, reserved ahead (first, last ticket)
    refilling: bool = False  # a background reservation of ``spare`` is under way

    def take(self) -> int | None:
        """The next ticket, moving on to the spare block when this one is used up."""
        if self.next > self.last and self.spare is not None:
            (self.next, self.last), self.spare = self.spare, None
        if self.next > self.last:
            return None
        ticket = self.next
        self.next += 1
        return ticket


_refills: ThreadPoolExecutor | None = None
_refills_lock = threading.Lock()


def _refill_thread() -> ThreadPoolExecutor:
    global _refills
    with _refills_lock:
        if _refills is None:
            _refills = ThreadPoolExecutor(1, thread_name_prefix="ratelimit-refill")
        return _refills


class RateLimiter:
    """Fixed-window limiter over a counter; falls back to memory while Redis is unreachable."""

    def __init__(self, primary: Counter, fallback: MemoryCounter | None = None) -> None:
        self.primary = primary
        self.fallback = fallback or MemoryCounter()
        self._primary_down_until = 0.0
        self._lock = threading.Lock()  # the leases: held for dictionary work only, never a round trip
        self._reserving = threading.Lock()  # one reservation at a time, so that threads never strand a block each
        self._leases: dict[str, _Lease] = {}  # per bucket: the current window's unused tickets

    def _incr(self, name: str, ttl: int, by: int, local_only: bool = False) -> int | None:
        """The counter after adding ``by``; None, counting nothing, when ``local_only`` and that
        would take a round trip to Redis."""
        if self.primary is self.fallback or time.monotonic() < self._primary_down_until:
            return self.fallback.incr(name, ttl, by)
        if local_only:
            return None
        try:
            return self.primary.incr(name, ttl, by)
        except Exception as exc:  # noqa: BLE001 - redis raises ConnectionError, TimeoutError, ...
            self._primary_down_until = time.monotonic() + REDIS_RETRY_SECONDS
            log.warning("rate limit counters unreachable (%s); counting in-process for %.0fs",
                        type(exc).__name__, REDIS_RETRY_SECONDS)
            return self.fallback.incr(name, ttl, by)

    def _take(self, bucket: str, name: str) -> int | None:
        lease = self._leases.get(bucket)
        return lease.take() if lease is not None and lease.name == name else None

    def _ticket(self, bucket: str, name: str, ttl: int, block: int, local_only: bool) -> int | None:
        """The next ticket of ``name``: from this process's lease, or a new block of ``block`` tickets.
        With ``local_only`` (the event loop's fast reads, api/reads/fast_reads.py), None instead of
        waiting for a Redis round trip; such a caller also reserves the next block in the
        background once half of the current one is gone, so that it rarely finds none."""
        if block == 1 or self.primary is self.fallback:  # in-process counters gain nothing from leases
            return self._incr(name, ttl, 1, local_only)
        if local_only:
            return self._local_ticket(bucket, name, ttl, block)
        with self._lock:
            ticket = self._take(bucket, name)
        if ticket is not None:
            return ticket
        with self._reserving:
            with self._lock:  # another thread may have reserved while this one waited
                ticket = self._take(bucket, name)
            if ticket is not None:
                return ticket
            top = self._incr(name, ttl, block)
            assert top is not None
            with self._lock:
                if len(self._leases) > 1024:
                    self._leases.clear()  # idle keys' leases; the busy ones reserve again
                lease = self._leases[bucket] = _Lease(name, top - block + 1, top)
                return lease.take()

    def _local_ticket(self, bucket: str, name: str, ttl: int, block: int) -> int | None:
        if not self._lock.acquire(blocking=False):
            return None
        try:
            lease = self._leases.get(bucket)
            if lease is None or lease.name != name:
                return None  # a new key or a new window: the exact path reserves the first block
            ticket = lease.take()
            refill = lease.spare is None and not lease.refilling and lease.last - lease.next < block // 2
            if refill:
                lease.refilling = True
        finally:
            self._lock.release()
        if refill:
            _refill_thread().submit(self._refill, lease, ttl, block)
        return ticket

    def _refill(self, lease: _Lease, ttl: int, block: int) -> None:
        """Reserve ``lease``'s spare block (a background thread)."""
        try:
            with self._reserving:
                top = self._incr(lease.name, ttl, block)
            with self._lock:
                if top is not None:
                    lease.spare = (top - block + 1, top)
        finally:
            lease.refilling = False

    def hit(self, bucket: str, limit: int, window_seconds: int, now: float | None = None,
            local_only: bool = False) -> Decision | None:
        """Count one request for ``bucket``; allowed while its ticket in the window is within ``limit``.
        None (nothing counted) only with ``local_only``, when the ticket would need a round trip."""
        now = time.time() if now is None else now
        window = int(now // window_seconds)
        count = self._ticket(bucket, f"ratelimit:{bucket}:{window}", window_seconds + 1, lease_block(limit), local_only)
        if count is None:
            return None
        retry_after = max(1, math.ceil((window + 1) * window_seconds - now))
        return Decision(allowed=count <= limit, limit=limit, remaining=max(0, limit - count), retry_after=retry_after)


def limiter_url(settings: Settings) -> str | None:
    """The Redis URL the counters live in, or None for in-process counters."""
    if settings.rate_limit_redis_url:
        return settings.rate_limit_redis_url
    broker = settings.resolved_broker_url
    return broker if is_redis_url(broker) else None


_limiters: dict[tuple[str | None, str], RateLimiter] = {}
_limiters_lock = threading.Lock()


def get_limiter(settings: Settings | None = None) -> RateLimiter:
    """One limiter per (Redis URL, key prefix), so that settings changes pick the right store."""
    settings = settings or get_settings()
    ident = (limiter_url(settings), settings.broker_key_prefix)
    with _limiters_lock:
        limiter = _limiters.get(ident)
        if limiter is None:
            memory = MemoryCounter()
            primary: Counter = RedisCounter(ident[0], ident[1]) if ident[0] else memory
            limiter = _limiters[ident] = RateLimiter(primary, memory)
        return limiter


def allowance(settings: Settings) -> int:
    """Requests allowed per window: the per-minute rate scaled to the window, at least one."""
    return max(1, round(settings.rate_limit_per_minute * settings.rate_limit_window_seconds / 60))


def enforce_rate_limit(key_id: str, local_only: bool = False) -> bool:
    """Raise a 429 ``rate_limited`` (with ``Retry-After``) when ``key_id`` is over its rate; else
    True. False, with nothing counted, only when ``local_only`` and counting would need a round
    trip to Redis (the caller then takes a path that may wait)."""
    settings = get_settings()
    if not settings.rate_limit_per_minute:
        return True
    limit = allowance(settings)
    decision = get_limiter(settings).hit(key_id, limit, settings.rate_limit_window_seconds, local_only=local_only)
    if decision is None:
        return False
    if decision.allowed:
        return True
    raise ApiError(
        429,
        "rate_limited",
        f"more than {limit} requests in {settings.rate_limit_window_seconds}s for this API key; "
        f"retry after {decision.retry_after}s",
        {
            "Retry-After": str(decision.retry_after),
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(decision.retry_after),
        },
    )
