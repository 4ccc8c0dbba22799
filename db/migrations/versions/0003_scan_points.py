"""scan points of steered tasks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import db.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'scan_points',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('point_index', sa.Integer(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('metric', sa.Float(), nullable=True),
        sa.Column('results', sa.JSON(), nullable=True),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('created_at', db.models.TZDateTime(), nullable=False),
        sa.Column('evaluated_at', db.models.TZDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id']),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task_id', 'point_index', name='uq_scan_points_task_index'),
    )


def downgrade() -> None:
    op.drop_table('scan_points')
