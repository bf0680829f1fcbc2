"""Helpers for layercut's own tests and benchmarks, importable instead of ``sys.path`` edits.

- ``nets``: seeded tiny models and images (captum-style fixed weights) and module-state snapshots;
- ``services``: real Postgres and Redis, started if down, one migrated database per test session;
- ``api_env``: an API app over a test database with a recording dispatcher and a tenant key;
- ``workers``: Celery worker processes, job rows and polling helpers;
- ``commands``: the ``layercut`` command in a subprocess and an embedded ``layercut serve``.

``services``, ``workers`` and ``commands`` run from a source checkout (they use its alembic.ini and
migrations/): ``SOURCE_ROOT`` is that checkout.
"""

from __future__ import annotations

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The repository this package was installed from in editable mode (holds alembic.ini and migrations/)."""
