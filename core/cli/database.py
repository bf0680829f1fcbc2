"""The database as the service commands need it: the Alembic migrations (revision, upgrade), the embedded SQLite
file created on first use, a session, and URLs printed without their password.

Nothing here imports SQLAlchemy or Alembic at import time, so ``layercut --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer

from layercut.cli.output import fail
from layercut.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
"""The source checkout (alembic.ini and migrations/ live there)."""


def safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only
        return url


def alembic_config(url: str) -> Any:
    """An Alembic config for ``url``: the project's alembic.ini and migrations/ folder (from the checkout or the
    working directory)."""
    from alembic.config import Config

    for base in (ROOT, Path.cwd()):
        ini, scripts = base / "alembic.ini", base / "migrations"
        if ini.is_file() and (scripts / "env.py").is_file():
            break
    else:
        fail(
            f"the Alembic migrations were not found (looked for alembic.ini and migrations/ in {ROOT} and "
            f"{Path.cwd()}); run layercut from a source checkout or the Docker image's /app"
        )
    config = Config(str(ini))
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def make_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite file, so a fresh embedded database can be made in it."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def upgrade_database(url: str) -> None:
    """``alembic upgrade head`` on ``url`` (creates the SQLite file's folder first)."""
    from alembic import command

    make_sqlite_folder(url)
    command.upgrade(alembic_config(url), "head")


def database_revision(url: str) -> tuple[str | None, str | None]:
    """(current revision of the database, head revision of the migrations)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    make_sqlite_folder(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return current, head


def ensure_embedded_schema(settings: Settings) -> None:
    """The embedded SQLite database is created and migrated on first use, so it just works."""
    if settings.database_url:
        return
    url = settings.resolved_database_url
    current, head = database_revision(url)
    if current != head:
        upgrade_database(url)


def open_session(settings: Settings) -> Any:
    """A session on the settings' database (the embedded one migrated first); a failure ends in one line."""
    from layercut.store.db import get_sessionmaker

    try:
        ensure_embedded_schema(settings)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        fail(f"could not prepare the embedded database {safe_url(settings.resolved_database_url)}: {exc}")
    return get_sessionmaker(settings.resolved_database_url)()


def fail_on_database_error(settings: Settings, exc: Exception) -> NoReturn:
    """End the command with one line about a database error (an unmigrated or unreachable service database)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    url = safe_url(settings.resolved_database_url)
    if isinstance(exc, (OperationalError, ProgrammingError)) and settings.database_url:
        fail(f"database {url} is unreachable or not migrated (run `layercut migrate`): {exc.orig or exc}")
    fail(f"database {url}: {type(exc).__name__}: {exc}")
