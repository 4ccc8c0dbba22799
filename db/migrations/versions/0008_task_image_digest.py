"""task image digest: registry images are pinned by the digest that was pulled

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 23:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image_digest', sa.String(length=71), nullable=True))
        batch_op.add_column(sa.Column('image_message', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('image_message')
        batch_op.drop_column('image_digest')
