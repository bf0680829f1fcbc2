"""jobs.labels and pipelines.labels: key=value labels given at creation, to find jobs and pipelines by

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 01:50:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('jobs', 'pipelines'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('labels', sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ('jobs', 'pipelines'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('labels')
