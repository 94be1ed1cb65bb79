"""Budget advice: the costs workers measured, per device and architecture, and each job's advice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('measured_costs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device', sa.String(length=255), nullable=False),
    sa.Column('device_kind', sa.String(length=16), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('architecture', sa.String(length=255), nullable=False),
    sa.Column('input_shape', sa.String(length=64), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('ms', sa.Float(), nullable=False),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device', 'role', 'architecture', 'input_shape', name='uq_measured_costs_key')
    )
    with op.batch_alter_table('measured_costs', schema=None) as batch_op:
        batch_op.create_index('ix_measured_costs_kind_shape', ['device_kind', 'input_shape'], unique=False)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('advice', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('advice')
    with op.batch_alter_table('measured_costs', schema=None) as batch_op:
        batch_op.drop_index('ix_measured_costs_kind_shape')
    op.drop_table('measured_costs')
