"""The change epoch: a value, local to this API process, that moves whenever a commit may have
changed what the poll and the list pages answer (api keys, jobs, job students, teachers).

``api/reads/fast_reads.py`` keeps whole answers together with the epoch they were built in, and serves
one on the event loop, with no thread hop and no database round trip, only while that epoch is
still current. Reading the epoch must therefore cost microseconds and never wait:

- **SQLite** (embedded mode): ``PRAGMA data_version`` on one connection of its own that never
  writes. SQLite changes that number whenever *another* connection, of this process or any other,
  commits to the file (the API's own pooled connections included), so the epoch is exact: a cached
  answer can never outlive a commit. About 7 µs a call; a busy file (a crash recovery holding it)
  answers None for that request rather than waiting.
- **PostgreSQL**: LISTEN/NOTIFY. Migration 0004 adds statement-level triggers on those four tables
  that ``pg_notify(CHANNEL)``; PostgreSQL delivers the notification when the transaction commits.
  One connection of this process listens, on the event loop, and each notification bumps the
  epoch. While it is not listening (start-up, a dropped connection, a restarted server) the epoch
  is None and every request takes the exact path; listening again bumps it, so nothing built
  before counts. What remains: a commit from *another process* is seen when its notification
  arrives, normally within milliseconds; a silently dead connection is noticed by a health check
  every ``HEALTH_CHECK_SECONDS`` (an answer within ``HEALTH_TIMEOUT_SECONDS``).

In both, this process's own commits bump the epoch right after they happen (``bump``, from a
session ``after_commit`` hook: ``FastReads.start``), so a client sees its own writes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Hashable

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("dfmscd.api")

CHANNEL = "dfmscd_changes"  # the triggers of migration 0004 notify this channel
HEALTH_CHECK_SECONDS = 5.0
HEALTH_TIMEOUT_SECONDS = 2.0
RETRY_SECONDS = (0.1, 5.0)  # reconnect delay: first, then doubled up to the second


class ChangeEpoch:
    """A counter any thread may ``bump``; ``current()`` is what cached answers are checked
    against, None while changes cannot be seen (the fast path is then off)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.value = 0

    def bump(self) -> None:
        with self._changed:
            self.value += 1
            self._changed.notify_all()

    def current(self) -> Hashable | None:
        raise NotImplementedError

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds after some change of this epoch, at most ``timeout``
        seconds; its last value (operators and tests: "has the notification arrived?")."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    async def start(self) -> None:
        """Begin following changes (on the event loop that will read ``current``)."""

    async def stop(self) -> None:
        """Stop following changes; ``current`` is None from now on."""


class SqliteDataVersion(ChangeEpoch):
    """``(local bumps, PRAGMA data_version)`` of a dedicated, never-writing connection to ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        # timeout=0: the event loop must never wait on the file. isolation_level=None: no implicit
        # transaction, so every PRAGMA looks at the newest commit.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, timeout=0, isolation_level=None, check_same_thread=False)

    def current(self) -> Hashable | None:
        conn = self._conn
        if conn is None:
            return None
        local = self.value  # read first: a bump from here on makes the pair differ anyway
        try:
            row = conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return local, row[0]

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PgNotifyListener(ChangeEpoch):
    """The local counter, bumped by every notification on ``CHANNEL``; None while not listening."""

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo
        self.listening = False
        self.notifications = 0  # received since start (a figure for tests and operators)
        # The triggers send no payload; anyone may ``NOTIFY dfmscd_changes, 'token'``, and once that
        # token is here every transaction committed before it has been seen (PostgreSQL delivers
        # notifications in commit order).
        self.last_payload = ""
        self.backend_pid: int | None = None  # the listening connection's server process
        self._task: asyncio.Task[None] | None = None

    def current(self) -> Hashable | None:
        return self.value if self.listening else None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dfmscd-change-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_listening(False)

    def _set_listening(self, listening: bool) -> None:
        with self._changed:  # both ways a bump: nothing cached on either side of the gap counts
            self.listening = listening
            self.value += 1
            self._changed.notify_all()

    def _notified(self, payload: str) -> None:
        with self._changed:
            self.notifications += 1
            self.last_payload = payload
            self.value += 1
            self._changed.notify_all()

    async def _run(self) -> None:
        delay = RETRY_SECONDS[0]
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=5, application_name="dfmscd-api-changes")
            except Exception as exc:  # noqa: BLE001 - whatever it is, the fast path stays off and we retry
                log.warning("change notifications: cannot connect (%s); fast reads stay off, retrying in %.1fs",
                            _one_line(exc), delay)
            else:
                try:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    self._set_listening(True)
                    delay = RETRY_SECONDS[0]
                    await self._follow(conn)
                except Exception as exc:  # noqa: BLE001 - a dropped connection, a failed health check, ...
                    log.warning("change notifications lost (%s); fast reads off until reconnected", _one_line(exc))
                finally:
                    self._set_listening(False)  # before anything else can run on the loop
                    await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_SECONDS[1])

    async def _follow(self, conn: psycopg.AsyncConnection) -> None:
        """Bump on every notification; between spells of listening, prove the connection alive."""
        while True:
            async for notification in conn.notifies(timeout=HEALTH_CHECK_SECONDS):
                self._notified(notification.payload)
            check = asyncio.ensure_future(conn.execute("SELECT 1"))
            try:
                done, _ = await asyncio.wait({check}, timeout=HEALTH_TIMEOUT_SECONDS)
            finally:
                if not check.done():
                    check.cancel()
                    check.add_done_callback(_retrieve)  # it ends once the connection is closed
            if not done:
                raise TimeoutError(f"no answer to a health check within {HEALTH_TIMEOUT_SECONDS}s")
            check.result()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _retrieve(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


def epoch_source(database_url: str) -> ChangeEpoch | None:
    """The epoch for this database: SQLite file, PostgreSQL, or None (in-memory SQLite, other
    databases: the fast path stays off)."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = url.database
        return SqliteDataVersion(path) if path and path != ":memory:" and not path.startswith("file:") else None
    if backend == "postgresql":
        return PgNotifyListener(url.set(drivername="postgresql").render_as_string(hide_password=False))
    return None
