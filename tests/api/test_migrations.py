"""Alembic: upgrade from empty and downgrade cleanly on SQLite and PostgreSQL; models == migrations."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from service_kit import new_pg_database, require_service
from sqlalchemy import create_engine, inspect, text

from dfmscd_service.core.migrate import downgrade, upgrade_head
from dfmscd_service.core.models import Base

TABLES = {"api_keys", "teachers", "jobs", "job_students", "job_events", "idempotency_keys",
          "webhook_endpoints", "webhook_deliveries", "measured_costs", "student_files", "evaluation_sets",
          "evaluations"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite'}"
        return
    require_service("PostgreSQL", lambda: create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres").connect().close())
    url, drop = new_pg_database("mig")
    try:
        yield url
    finally:
        drop()


def test_upgrade_from_empty_then_downgrade_to_base(empty_db):
    engine = create_engine(empty_db)
    try:
        assert set(inspect(engine).get_table_names()) == set()
        upgrade_head(empty_db)
        assert TABLES <= set(inspect(engine).get_table_names())
        upgrade_head(empty_db)  # idempotent
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        assert _change_triggers(engine) == (CHANGE_TRIGGERS if engine.dialect.name == "postgresql" else set())
        downgrade(empty_db, "0003")  # the triggers and their function go (api/reads/change_epoch.py)
        assert _change_triggers(engine) == set()
        downgrade(empty_db, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_head(empty_db)  # and back up again
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# Migration 0004 (PostgreSQL only): the tables the poll, the list pages and the key check read.
CHANGE_TRIGGERS = {("api_keys", "api_keys_notify_change"), ("jobs", "jobs_notify_change"),
                   ("job_students", "job_students_notify_change"), ("teachers", "teachers_notify_change")}


def _change_triggers(engine) -> set[tuple[str, str]]:
    """(table, trigger) of the change-notification triggers, with their function still present."""
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal AND p.proname = 'dfmscd_notify_change'"))
        found = {(r[0], r[1]) for r in rows}
        function = conn.execute(text("SELECT count(*) FROM pg_proc WHERE proname = 'dfmscd_notify_change'")).scalar()
    assert bool(function) == bool(found), (function, found)
    return found
