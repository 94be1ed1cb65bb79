"""Run Alembic migrations programmatically (API start-up, ``dfmscd serve``, the worker).

Several processes may start at once (API + workers), so the upgrade is serialised: a
PostgreSQL advisory lock, or a file lock beside the SQLite database.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

# The Alembic scripts ship inside the service package, beside core (a path, not an import).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_ADVISORY_LOCK_ID = 0x0DF35CD  # arbitrary, constant across processes


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    db = make_url(url).database
    if not db or db == ":memory:":
        yield
        return
    lock_path = Path(db).with_suffix(Path(db).suffix + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(url: str, fn: str, revision: str) -> None:
    cfg = alembic_config(url)
    if url.startswith("sqlite"):
        with _sqlite_file_lock(url):
            getattr(command, fn)(cfg, revision)
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_ID})
            conn.commit()
            try:
                cfg.attributes["connection"] = conn
                getattr(command, fn)(cfg, revision)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_ID})
                conn.commit()
    finally:
        engine.dispose()


def upgrade_head(url: str) -> None:
    _run(url, "upgrade", "head")


def downgrade(url: str, revision: str = "base") -> None:
    _run(url, "downgrade", revision)
