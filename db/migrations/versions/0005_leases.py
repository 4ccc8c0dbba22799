"""leases: per-queue and global duties shared by several harvester instances

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 21:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'leases',
        sa.Column('name', sa.String(length=160), nullable=False),
        sa.Column('holder', sa.String(length=256), nullable=False),
        sa.Column('acquired_at', db.models.TZDateTime(), nullable=False),
        sa.Column('expires_at', db.models.TZDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('leases')
