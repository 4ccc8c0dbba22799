"""nodes: multi-node jobs (pcontainer --nNodes) and the allocations that hold them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 16:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('tasks', 'jobs', 'workers'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column('nodes', sa.Integer(), server_default='1', nullable=False)
            )
    # the claim filters on the pilot's allocation size: one index probe, as before
    op.drop_index('ix_jobs_claim', table_name='jobs')
    op.create_index(
        'ix_jobs_claim',
        'jobs',
        ['status', 'queue', 'nodes', sa.text('priority DESC'), 'id'],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index('ix_jobs_claim', table_name='jobs')
    op.create_index(
        'ix_jobs_claim', 'jobs', ['status', 'queue', sa.text('priority DESC'), 'id'], unique=False
    )
    for table in ('workers', 'jobs', 'tasks'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('nodes')
