"""Serialised answers (jobs, teachers) kept per API process, each valid while its job's ``updated_at`` is unchanged.

A status poll is read hundreds of times between two changes of its job; building the answer
(two queries, the row-to-model mapping, the report's JSON) was most of its cost. Every write to a
job or its students bumps ``jobs.updated_at`` in the same transaction (the column's ``onupdate``,
and the worker sets it explicitly), so a request that reads the version together with the key
check knows, in that one query, whether its cached bytes are still the job as stored. Entries
are never trusted without that check, so several API processes, each with its own cache, stay
exact; the cache is bounded by bytes and forgets the least recently used answers first.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class AnswerCache:
    """``job id -> (version, JSON bytes)``, least recently used first out, at most ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[datetime, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, job_id: str, version: datetime) -> bytes | None:
        """The cached answer if it was built from this version of the job, else None."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(job_id)
            return entry[1]

    def put(self, job_id: str, version: datetime, body: bytes) -> None:
        with self._lock:
            old = self._entries.pop(job_id, None)
            if old is not None:
                self._bytes -= len(old[1])
            if len(body) > self.max_bytes:
                return
            self._entries[job_id] = (version, body)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def cached_answers(cache: AnswerCache, versions: dict[str, datetime],
                   build: Callable[[list[str]], dict[str, tuple[datetime, bytes]]]) -> dict[str, bytes]:
    """Each id's answer: from ``cache`` where it was built from this version, else from ``build``
    (ids -> (version read, bytes)) and cached. An id ``build`` no longer finds is left out.

    The version cached is the one ``build`` read the row with, so a write between the version
    query and the build can only make the next request rebuild, never serve old bytes."""
    out: dict[str, bytes] = {}
    stale = []
    for key, version in versions.items():
        body = cache.get(key, version)
        if body is None:
            stale.append(key)
        else:
            out[key] = body
    if stale:
        for key, (version, body) in build(stale).items():
            cache.put(key, version, body)
            out[key] = body
    return out


def cached_page(rows: list[Any], limit: int, cache: AnswerCache,
                build: Callable[[list[str]], dict[str, tuple[datetime, bytes]]]) -> bytes:
    """A list page's JSON from the rows of a key-and-page query (``item_id``, ``item_version``;
    one row with a NULL ``item_id`` for an empty page), fetched with ``limit + 1`` to learn
    whether there is more."""
    rows = [r for r in rows if r.item_id is not None]
    more = len(rows) > limit
    rows = rows[:limit]
    bodies = cached_answers(cache, {r.item_id: r.item_version for r in rows}, build)
    return page_json([bodies[r.item_id] for r in rows if r.item_id in bodies], more, rows[-1].item_id if more else None)


def page_json(bodies: list[bytes], has_more: bool, next_cursor: str | None) -> bytes:
    """``Page[...]``'s JSON (``data``, ``has_more``, ``next``) around already serialised entries."""
    return (b'{"data":[' + b",".join(bodies) + b'],"has_more":' + (b"true" if has_more else b"false")
            + b',"next":' + json.dumps(next_cursor).encode() + b"}")
