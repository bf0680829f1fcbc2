"""The Alembic migrations create exactly what the SQLAlchemy models describe, on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from layercut.store.models import Base

ROOT = Path(__file__).resolve().parents[2]


def _upgrade(url: str) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


def _diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_migrations_match_models_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _upgrade(url)
    assert _diff(url) == []
    assert set(inspect(create_engine(url)).get_table_names()) >= set(Base.metadata.tables)


def test_migrations_match_models_on_postgres(postgres_url: str) -> None:
    # the session fixture already ran `alembic upgrade head` on this database
    assert _diff(postgres_url) == []


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _upgrade(url)
    _upgrade(url)  # already at head: nothing to do, no error
