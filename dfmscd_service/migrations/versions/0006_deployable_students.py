"""Students ready to deploy: each student's exported and verified files (student_files) and its
report, the job's INT8 calibration sample, evaluation sets and the evaluations made on them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('student_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('student_id', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('verification', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['student_id'], ['job_students.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('student_id', 'format', name='uq_student_files_format')
    )
    with op.batch_alter_table('student_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_student_files_student_id'), ['student_id'], unique=False)

    op.create_table('evaluation_sets',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner_id', sa.String(length=40), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('file_format', sa.String(length=16), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluation_sets', schema=None) as batch_op:
        batch_op.create_index('ix_evaluation_sets_owner_id_id', ['owner_id', 'id'], unique=False)

    op.create_table('evaluations',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner_id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('evaluation_set_id', sa.String(length=40), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('results', sa.JSON(), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['evaluation_set_id'], ['evaluation_sets.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index('ix_evaluations_job_id_id', ['job_id', 'id'], unique=False)
        batch_op.create_index('ix_evaluations_status_lease', ['status', 'lease_expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluations_evaluation_set_id'), ['evaluation_set_id'], unique=False)

    with op.batch_alter_table('job_students') as batch:
        batch.add_column(sa.Column('report', sa.JSON(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('evaluation_set_id', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('calibration_key', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('calibration_sha256', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('calibration_size_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('calibration_size_bytes')
        batch.drop_column('calibration_sha256')
        batch.drop_column('calibration_key')
        batch.drop_column('evaluation_set_id')
    with op.batch_alter_table('job_students') as batch:
        batch.drop_column('report')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_evaluation_set_id'))
        batch_op.drop_index('ix_evaluations_status_lease')
        batch_op.drop_index('ix_evaluations_job_id_id')
    op.drop_table('evaluations')
    with op.batch_alter_table('evaluation_sets', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluation_sets_owner_id_id')
    op.drop_table('evaluation_sets')
    with op.batch_alter_table('student_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_student_files_student_id'))
    op.drop_table('student_files')
