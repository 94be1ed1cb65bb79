"""Alembic: upgrade from empty and downgrade cleanly on SQLite and PostgreSQL; models == migrations."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from service_kit import new_pg_database, require_service
from sqlalchemy import create_engine, inspect

from dfmscd_service.core.migrate import downgrade, upgrade_head
from dfmscd_service.core.models import Base

TABLES = {"api_keys", "teachers", "jobs", "job_students", "job_events", "idempotency_keys",
          "webhook_endpoints", "webhook_deliveries"}


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
        downgrade(empty_db, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_head(empty_db)  # and back up again
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
