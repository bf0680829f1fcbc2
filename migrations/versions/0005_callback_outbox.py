"""callback_deliveries: the outbox of callbacks, delivered and retried from the table (durable, at least once)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'callback_deliveries',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('object_type', sa.String(length=16), nullable=False),
        sa.Column('object_id', sa.Uuid(), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('given_up_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('object_type', 'object_id', name='uq_callback_deliveries_object'),
    )
    op.create_index('ix_callback_deliveries_tenant', 'callback_deliveries', ['tenant'])
    op.create_index(
        'ix_callback_deliveries_due', 'callback_deliveries', ['delivered_at', 'given_up_at', 'next_attempt_at']
    )


def downgrade() -> None:
    op.drop_index('ix_callback_deliveries_due', table_name='callback_deliveries')
    op.drop_index('ix_callback_deliveries_tenant', table_name='callback_deliveries')
    op.drop_table('callback_deliveries')
