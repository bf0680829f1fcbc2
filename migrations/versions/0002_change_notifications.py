"""change notifications: Postgres triggers that NOTIFY layercut_changes when a job, its artifacts or a key change

The API keeps a read cache of job states and key → tenant lookups; these notifications are how every API
process learns, within milliseconds of the commit, which entries to drop (api/read_cache.py).
SQLite (embedded mode) has no NOTIFY; the API reads it directly.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00
"""
from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

CHANNEL = "layercut_changes"

FUNCTIONS = {
    # payload "job:<id>" for a job row and for any artifact of that job; "key:<sha256>" for an API key
    "layercut_notify_job": "PERFORM pg_notify('layercut_changes', 'job:' || COALESCE(NEW.id, OLD.id)::text);",
    "layercut_notify_artifact": "PERFORM pg_notify('layercut_changes', 'job:' || COALESCE(NEW.job_id, OLD.job_id)::text);",
    "layercut_notify_key": "PERFORM pg_notify('layercut_changes', 'key:' || COALESCE(NEW.key_hash, OLD.key_hash));",
}
TRIGGERS = {  # trigger name: (table, function, events)
    "layercut_jobs_changed": ("jobs", "layercut_notify_job", "UPDATE OR DELETE"),
    "layercut_artifacts_changed": ("artifacts", "layercut_notify_artifact", "INSERT OR UPDATE OR DELETE"),
    "layercut_api_keys_changed": ("api_keys", "layercut_notify_key", "UPDATE OR DELETE"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN {body} RETURN NULL; END $$")
    for trigger, (table, function, events) in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {trigger} AFTER {events} ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for trigger, (table, _function, _events) in TRIGGERS.items():
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {name}()")
