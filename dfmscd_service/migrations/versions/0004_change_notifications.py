"""Change notifications (PostgreSQL only): every statement on the tables that the job poll, the
list pages and the key check read notifies channel ``dfmscd_changes`` when its transaction commits.

The API listens on that channel and serves those answers from its cache only while nothing was
notified since they were built (dfmscd_service/api/reads/change_epoch.py). Statement-level triggers: one
notification per statement at most, and PostgreSQL folds the identical ones of a transaction into
one. SQLite needs none (the API reads ``PRAGMA data_version`` instead): a no-op there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# A fixed copy, as migrations are: dfmscd_service.api.reads.change_epoch.CHANNEL listens on it.
CHANNEL = "dfmscd_changes"
TABLES = ("api_keys", "jobs", "job_students", "teachers")
FUNCTION = "dfmscd_notify_change"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$""")
    for table in TABLES:
        op.execute(f"CREATE TRIGGER {table}_notify_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
                   f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_change ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
