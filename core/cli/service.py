"""The service commands of ``layercut``: ``serve``, ``migrate`` and ``keys create | list | revoke``.

``core/cli/main.py`` registers them:

    app.command()(serve)
    app.command()(migrate)
    app.add_typer(keys_app, name="keys")

Nothing here imports torch, FastAPI or Celery at import time, so ``layercut --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from layercut.cli.progress import err_console

out_console = Console()

ROOT = Path(__file__).resolve().parents[2]

keys_app = typer.Typer(
    name="keys",
    help="API keys: each maps to one tenant; only a hash is stored and the secret is shown once.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings():
    """Fresh settings from the environment (not the process-wide cache: the CLI may change the env)."""
    from layercut.settings import Settings

    return Settings()


def _safe_url(url: str) -> str:
    """A database URL with its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only
        return url


# --------------------------------------------------------------------------------------------------
# migrations


def _alembic_config(url: str):
    """An Alembic config for ``url``: the project's alembic.ini and migrations/ folder."""
    from alembic.config import Config

    for base in (ROOT, Path.cwd()):
        ini, scripts = base / "alembic.ini", base / "migrations"
        if ini.is_file() and (scripts / "env.py").is_file():
            break
    else:
        _fail(
            f"the Alembic migrations were not found (looked for alembic.ini and migrations/ in {ROOT} and "
            f"{Path.cwd()}); run layercut from a source checkout or the Docker image's /app"
        )
    config = Config(str(ini))
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _sqlite_folder(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def upgrade_database(url: str) -> None:
    """``alembic upgrade head`` on ``url`` (creates the SQLite file's folder first)."""
    from alembic import command

    _sqlite_folder(url)
    command.upgrade(_alembic_config(url), "head")


def database_revision(url: str) -> tuple[str | None, str | None]:
    """(current revision of the database, head revision of the migrations)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    head = ScriptDirectory.from_config(_alembic_config(url)).get_current_head()
    _sqlite_folder(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return current, head


def _ensure_embedded_schema(settings) -> None:
    """The embedded SQLite database is created and migrated on first use, so it just works."""
    if settings.database_url:
        return
    url = settings.resolved_database_url
    current, head = database_revision(url)
    if current != head:
        upgrade_database(url)


def migrate() -> None:
    """Create or upgrade the database (alembic upgrade head) named by LAYERCUT_DATABASE_URL (default: the embedded SQLite file)."""
    settings = _settings()
    url = settings.resolved_database_url
    try:
        before, head = database_revision(url)
        upgrade_database(url)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        _fail(f"could not migrate {_safe_url(url)}: {type(exc).__name__}: {exc}")
    if before == head:
        out_console.print(f"{_safe_url(url)} is already at revision {head}", highlight=False)
    else:
        out_console.print(f"{_safe_url(url)}: {before or 'empty'} → {head}", highlight=False)


# --------------------------------------------------------------------------------------------------
# keys


def _key_session(settings):
    from layercut.store.db import get_sessionmaker

    try:
        _ensure_embedded_schema(settings)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(f"could not prepare the embedded database {_safe_url(settings.resolved_database_url)}: {exc}")
    return get_sessionmaker(settings.resolved_database_url)()


def _db_error(settings, exc: Exception) -> None:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    url = _safe_url(settings.resolved_database_url)
    if isinstance(exc, (OperationalError, ProgrammingError)) and settings.database_url:
        _fail(f"database {url} is unreachable or not migrated (run `layercut migrate`): {exc.orig or exc}")
    _fail(f"database {url}: {type(exc).__name__}: {exc}")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="the tenant this key acts for (letters, digits, - _ .)")],
    name: Annotated[Optional[str], typer.Option("--name", help="a label to recognise the key by")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (with the secret) on stdout")] = False,
) -> None:
    """Create an API key for a tenant and print its secret — the only time it is shown."""
    from sqlalchemy.exc import SQLAlchemyError

    from layercut.store.keys import create_key

    settings = _settings()
    session = _key_session(settings)
    try:
        row, secret = create_key(session, tenant, name)
    except ValueError as exc:
        _fail(f"--tenant: {exc}")
    except SQLAlchemyError as exc:
        _db_error(settings, exc)
    finally:
        session.close()
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "key": secret,
                    "tenant": row.tenant,
                    "prefix": row.prefix,
                    "name": row.name,
                    "id": str(row.id),
                    "created_at": row.created_at.isoformat(),
                }
            )
            + "\n"
        )
        return
    err_console.print(
        f"API key for tenant [bold]{row.tenant}[/] (prefix {row.prefix}); store it now, it is not shown again:",
        highlight=False,
        soft_wrap=True,
    )
    # The secret alone on stdout, so `KEY=$(layercut keys create --tenant t)` works.
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def keys_list(
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="only this tenant's keys")] = None,
    revoked: Annotated[
        bool, typer.Option("--revoked/--active", help="include revoked keys (default: active only)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list on stdout")] = False,
) -> None:
    """List API keys (prefix, tenant, name, created, revoked); secrets are never stored, so never shown."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from layercut.store.models import ApiKey

    settings = _settings()
    session = _key_session(settings)
    try:
        query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
        if tenant:
            query = query.where(ApiKey.tenant == tenant)
        if not revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        rows = list(session.scalars(query))
    except SQLAlchemyError as exc:
        _db_error(settings, exc)
    finally:
        session.close()
    if as_json:
        sys.stdout.write(
            json.dumps(
                [
                    {
                        "prefix": r.prefix,
                        "tenant": r.tenant,
                        "name": r.name,
                        "id": str(r.id),
                        "created_at": r.created_at.isoformat(),
                        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                    }
                    for r in rows
                ],
                indent=2,
            )
            + "\n"
        )
        return
    if not rows:
        err_console.print("no keys" + (f" for tenant {tenant}" if tenant else ""), highlight=False)
        return
    table = Table(title=f"{len(rows)} API key(s)")
    for column in ("prefix", "tenant", "name", "created", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r.prefix,
            r.tenant,
            r.name or "",
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
        )
    out_console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Option("--prefix", help="the key's prefix, as `layercut keys list` shows it")],
) -> None:
    """Revoke an API key: requests with it are rejected from now on."""
    from sqlalchemy.exc import SQLAlchemyError

    from layercut.store.keys import revoke_key

    settings = _settings()
    session = _key_session(settings)
    try:
        done = revoke_key(session, prefix)
    except SQLAlchemyError as exc:
        _db_error(settings, exc)
    finally:
        session.close()
    if not done:
        _fail(f"no active key with prefix {prefix!r} (see `layercut keys list`)")
    err_console.print(f"revoked key {prefix}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------------
# serve


def describe_mode(settings) -> list[str]:
    """What ``layercut serve`` runs with these settings, and what it does not give."""
    db = _safe_url(settings.resolved_database_url)
    lines: list[str] = []
    if not settings.database_url and settings.embedded:
        lines.append(
            f"mode: embedded — SQLite database {db}, artifacts in {settings.resolved_artifact_root}, "
            "jobs run in this process"
        )
        lines.append(
            "not given in this mode: no separate workers (a job runs inside the API process), one job at "
            "a time (others wait queued), SQLite (one machine, one API process, no concurrent writers), "
            "no GPU scheduling; a job running when the process stops is re-run or failed on the next "
            "start. For more, set LAYERCUT_DATABASE_URL (Postgres) and LAYERCUT_BROKER_URL (Redis) and "
            "run `celery -A worker.app worker -Q gpu,cpu` — or `docker compose up`."
        )
    elif settings.embedded:
        lines.append(
            f"mode: database {db}, no broker — jobs run in this process, one at a time; "
            f"artifacts in {settings.resolved_artifact_root}"
        )
        lines.append(
            "not given in this mode: no separate workers; set LAYERCUT_BROKER_URL to send jobs to Celery workers"
        )
    else:
        lines.append(
            f"mode: service — database {db}, broker {_safe_url(settings.broker_url)}, artifacts in "
            f"{settings.resolved_artifact_root}; jobs run on Celery workers "
            "(`celery -A worker.app worker -Q gpu,cpu`), none run in this process"
        )
    return lines


def serve(
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (0.0.0.0 for every interface)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", help="API processes (only with a database and a broker configured)")
    ] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="embedded mode: do not create/upgrade the SQLite database")
    ] = False,
) -> None:
    """Run the HTTP API. With no LAYERCUT_DATABASE_URL / LAYERCUT_BROKER_URL: embedded (SQLite under ./layercut-data, jobs run in-process)."""
    settings = _settings()
    embedded_db = not settings.database_url
    if workers < 1:
        _fail("--workers must be at least 1")
    if workers > 1 and (embedded_db or settings.embedded):
        _fail(
            "--workers > 1 needs a database (LAYERCUT_DATABASE_URL) and a broker (LAYERCUT_BROKER_URL): "
            "in-process jobs and SQLite allow one API process"
        )
    for line in describe_mode(settings):
        err_console.print(line, highlight=False, soft_wrap=True)

    url = settings.resolved_database_url
    try:
        if embedded_db and not no_migrate:
            before, head = database_revision(url)
            if before != head:
                err_console.print(f"migrating {_safe_url(url)}: {before or 'empty'} → {head}", highlight=False)
                upgrade_database(url)
        else:
            current, head = database_revision(url)
            if current != head:
                err_console.print(
                    f"[bold yellow]warning:[/] database {_safe_url(url)} is at revision {current or 'none'}, "
                    f"the code expects {head}; run `layercut migrate` (or the compose migrate service)",
                    highlight=False,
                    soft_wrap=True,
                )
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        _fail(f"database {_safe_url(url)}: {type(exc).__name__}: {exc}")

    import uvicorn

    settings.resolved_artifact_root.mkdir(parents=True, exist_ok=True)
    err_console.print(f"serving http://{host}:{port} (docs at /docs, health at /healthz)", highlight=False)
    uvicorn.run(
        "layercut.api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )
