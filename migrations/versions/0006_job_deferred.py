"""jobs.deferred_at: when a worker last left the job queued for its tenant's fair share (other tenants waited)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 11:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('deferred_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('deferred_at')
