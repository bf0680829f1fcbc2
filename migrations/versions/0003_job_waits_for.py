"""jobs.waits_for: the jobs a fan-in job waits for (a sweep gathers the sweep_cut jobs its plan fanned out)

A job runs when its ``depends_on`` has finished and every job in ``waits_for`` has succeeded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 21:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('waits_for', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('waits_for')
