"""indexes for the monitor's job queries, the task roll-up and the claim order

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 17:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the claim orders by priority DESC, id: an index in that order saves a sort per claim
    op.drop_index('ix_jobs_claim', table_name='jobs')
    op.create_index(
        'ix_jobs_claim', 'jobs', ['status', 'queue', sa.text('priority DESC'), 'id'], unique=False
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_queue_status', ['queue', 'status'], unique=False)
        batch_op.create_index('ix_jobs_task_status', ['task_id', 'status'], unique=False)
        batch_op.create_index('ix_jobs_created', ['created_at'], unique=False)
        batch_op.create_index('ix_jobs_ended', ['ended_at'], unique=False)
        batch_op.create_index('ix_jobs_error', ['pilot_error_code'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_error')
        batch_op.drop_index('ix_jobs_ended')
        batch_op.drop_index('ix_jobs_created')
        batch_op.drop_index('ix_jobs_queue_status')
        batch_op.drop_index('ix_jobs_task_status')
    op.drop_index('ix_jobs_claim', table_name='jobs')
    op.create_index('ix_jobs_claim', 'jobs', ['status', 'queue', 'priority', 'id'], unique=False)
