"""The service commands: ``serve`` (the HTTP API) and ``migrate`` (the database schema).

Nothing here imports FastAPI, Celery or torch at import time, so ``layercut --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import tempfile

import typer

from layercut.cli.database import database_revision, safe_url, upgrade_database
from layercut.cli.output import err_console, fail, out_console
from layercut.settings import Settings


def migrate() -> None:
    """Create or upgrade the database (alembic upgrade head) named by LAYERCUT_DATABASE_URL (default: the embedded SQLite file)."""
    url = Settings().resolved_database_url
    try:
        before, head = database_revision(url)
        upgrade_database(url)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        fail(f"could not migrate {safe_url(url)}: {type(exc).__name__}: {exc}")
    if before == head:
        out_console.print(f"{safe_url(url)} is already at revision {head}", highlight=False)
    else:
        out_console.print(f"{safe_url(url)}: {before or 'empty'} → {head}", highlight=False)


def describe_mode(settings: Settings) -> list[str]:
    """What ``layercut serve`` runs with these settings, and what it does not give."""
    db = safe_url(settings.resolved_database_url)
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
            "run `celery -A layercut.worker.app worker -Q gpu,cpu` — or `docker compose up`."
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
            f"mode: service — database {db}, broker {safe_url(settings.broker_url or '')}, artifacts in "
            f"{settings.resolved_artifact_root}; jobs run on Celery workers "
            "(`celery -A layercut.worker.app worker -Q gpu,cpu`), none run in this process"
        )
    return lines


def prepare_database(url: str, migrate_embedded: bool) -> None:
    """Before serving: migrate the embedded database if asked to, else warn when the schema is not at head."""
    try:
        current, head = database_revision(url)
        if migrate_embedded:
            if current != head:
                err_console.print(f"migrating {safe_url(url)}: {current or 'empty'} → {head}", highlight=False)
                upgrade_database(url)
        elif current != head:
            err_console.print(
                f"[bold yellow]warning:[/] database {safe_url(url)} is at revision {current or 'none'}, "
                f"the code expects {head}; run `layercut migrate` (or the compose migrate service)",
                highlight=False,
                soft_wrap=True,
            )
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        fail(f"database {safe_url(url)}: {type(exc).__name__}: {exc}")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 for every interface)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    workers: int = typer.Option(1, "--workers", help="API processes (only with a database and a broker configured)"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
    no_migrate: bool = typer.Option(
        False, "--no-migrate", help="embedded mode: do not create/upgrade the SQLite database"
    ),
) -> None:
    """Run the HTTP API. With no LAYERCUT_DATABASE_URL / LAYERCUT_BROKER_URL: embedded (SQLite in the data directory,
    LAYERCUT_DATA_DIR or ~/.local/share/layercut; jobs run in-process)."""
    settings = Settings()
    embedded_db = not settings.database_url
    if workers < 1:
        fail("--workers must be at least 1")
    if workers > 1 and (embedded_db or settings.embedded):
        fail(
            "--workers > 1 needs a database (LAYERCUT_DATABASE_URL) and a broker (LAYERCUT_BROKER_URL): "
            "in-process jobs and SQLite allow one API process"
        )
    if settings.insecure_defaults():
        fail(
            "; ".join(settings.insecure_defaults()) + " (or, for development only, LAYERCUT_ALLOW_INSECURE_DEFAULTS=1)"
        )
    for line in describe_mode(settings):
        err_console.print(line, highlight=False, soft_wrap=True)
    prepare_database(settings.resolved_database_url, migrate_embedded=embedded_db and not no_migrate)

    import uvicorn

    os.environ["LAYERCUT_LOG_LEVEL"] = log_level.upper()  # the API processes configure their logging from it
    if workers > 1 and "prometheus_client" not in sys.modules:  # every API process's metrics summed on /metrics
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="layercut-api-metrics-"))
    from layercut.telemetry import configure_logging

    settings.resolved_artifact_root.mkdir(parents=True, exist_ok=True)
    err_console.print(
        f"serving http://{host}:{port} (docs at /docs, health at /healthz, metrics at /metrics); "
        f"logs: {settings.log_format} lines on stderr (LAYERCUT_LOG_FORMAT)",
        highlight=False,
    )
    configure_logging(settings.log_format, log_level)
    uvicorn.run(
        "layercut.api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers go through ours: one format, with request ids
        access_log=False,  # the API logs one line per request itself (layercut.api.observe)
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )
