"""Serialised answers (jobs, teachers) kept per API process, each valid while its job's ``updated_at`` is unchanged.

A status poll is read hundreds of times between two changes of its job; building the answer
(two queries, the row-to-model mapping, the report's JSON) was most of its cost. Every write to a
job or its students bumps ``jobs.updated_at`` in the same transaction (the column's ``onupdate``,
and the worker sets it explicitly), so a request that reads the version together with the key
check knows, in that one query, whether its cached bytes are still the job as stored. Entries
are never trusted without that check, so several API processes, each with its own cache, stay
exact; the cache is bounded by bytes and forgets the least recently used answers first.

``AnswerCache`` itself only compares versions: the front cache of ``api/reads/fast_reads.py`` keeps
whole answers in one under the change epoch they were built in.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, Generic, TypeVar

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
V = TypeVar("V")


class AnswerCache(Generic[V]):
    """``key -> (version, value)``, least recently used first out, at most ``max_bytes`` in all
    (``size(value)`` each; the values are bytes unless ``size`` says otherwise)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, size: Callable[[V], int] = len) -> None:  # type: ignore[assignment]
        self.max_bytes = max_bytes
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[Any, V, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, version: Any) -> V | None:
        """The cached value if it was stored with this version, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, version: Any, value: V) -> None:
        size = self._size(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            if size > self.max_bytes:
                return
            self._entries[key] = (version, value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def cached_answers(cache: AnswerCache[bytes], versions: dict[str, datetime],
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


def cached_page(rows: list[Any], limit: int, cache: AnswerCache[bytes],
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
