"""Database engine and sessions, shared by the API (a FastAPI dependency) and the worker.

SQLite (embedded mode) gets WAL, a busy timeout and foreign keys so that the API process and
the worker process can write the same file; PostgreSQL gets pre-ping so that a restarted
server costs one retry rather than a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from sqlalchemy.orm import Session, sessionmaker

from dfmscd_service.core.settings import get_settings

T = TypeVar("T")
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Kept open: a new connection (a file open and four PRAGMAs) per session was most of an
        # embedded poll's cost. Unbounded overflow, so there is still nothing to exhaust; up to
        # api_threads + api_read_threads + 2 stay open (one per thread, as for PostgreSQL). In-memory databases
        # keep NullPool's semantics out of reach: each connection would be a different database.
        sqlite_args = {"check_same_thread": False, "timeout": 30}
        if ":memory:" in url or url in ("sqlite://", "sqlite:///"):
            engine = create_engine(url, poolclass=NullPool, connect_args=sqlite_args)
        else:
            settings = get_settings()
            engine = create_engine(url, pool_size=settings.db_pool_size or settings.api_threads + settings.api_read_threads + 2, max_overflow=-1,
                                   connect_args=sqlite_args)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    settings = get_settings()
    capacity = settings.db_pool_size or settings.api_threads + settings.api_read_threads + 2
    kept = min(10, capacity)  # connections kept open when idle; the rest open on demand
    return create_engine(url, pool_pre_ping=True, pool_size=kept, max_overflow=capacity - kept,
                         pool_timeout=settings.db_pool_timeout_seconds, connect_args=connect_args)


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().resolved_database_url
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
            _factories[url] = sessionmaker(_engines[url], expire_on_commit=False)
        return _engines[url]


_read_engines: dict[str, Engine] = {}


def get_read_engine(url: str | None = None) -> Engine:
    """The engine of the API's cheap reads (``api.reads.job_reads``): on PostgreSQL, autocommit
    connections with neither a pre-ping nor a rollback on return, so a poll's query is its only
    round trip (the ping, BEGIN and ROLLBACK around it were three more: most of a poll's time);
    ``run_read`` retries once on a dropped connection instead. SQLite's reads are local: the
    main engine."""
    url = url or get_settings().resolved_database_url
    if not url.startswith("postgresql"):
        return get_engine(url)
    with _lock:
        if url not in _read_engines:
            settings = get_settings()
            _read_engines[url] = create_engine(
                url, isolation_level="AUTOCOMMIT", pool_pre_ping=False, pool_reset_on_return=None,
                pool_size=settings.api_read_threads, max_overflow=2, pool_timeout=settings.db_pool_timeout_seconds,
                connect_args={"connect_timeout": 5})
        return _read_engines[url]


def run_read(read: Callable[[Connection], T]) -> T:
    """``read(connection)`` on the read engine, once more on a fresh connection if the server
    dropped the first (a restarted PostgreSQL costs one retry, not a 500). Reads only: a
    retried write could happen twice."""
    for attempt in (1, 2):
        try:
            with get_read_engine().connect() as conn:
                return read(conn)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().resolved_database_url
    get_engine(url)
    return _factories[url]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (worker and CLI)."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one session per request; routes commit explicitly."""
    session = session_factory()()
    try:
        yield session
    finally:
        session.close()


def dispose_engines(close: bool = True) -> None:
    """After fork (worker child) pass ``close=False`` so the parent's connections stay usable."""
    with _lock:
        for engine in [*_engines.values(), *_read_engines.values()]:
            engine.dispose(close=close)
        if close:
            _engines.clear()
            _read_engines.clear()
            _factories.clear()
