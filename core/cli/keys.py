"""``layercut keys create | list | revoke``: the API keys of the service, each for one tenant.

Only a hash of a key is stored, so its secret is printed once, when it is created.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.table import Table

from layercut.cli.database import fail_on_database_error, open_session, safe_url
from layercut.cli.output import err_console, fail, out_console
from layercut.settings import Settings

keys_app = typer.Typer(
    name="keys",
    help="API keys: each maps to one tenant; only a hash is stored and the secret is shown once.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def where(settings: Settings) -> str:
    """The database the keys live in, as a server started with the same environment uses it."""
    return f"the database {safe_url(settings.resolved_database_url)}" + (
        "" if settings.database_url else " (set LAYERCUT_DATA_DIR to use another)"
    )


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="the tenant this key acts for (letters, digits, - _ .)"),
    name: Optional[str] = typer.Option(None, "--name", help="a label to recognise the key by"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (with the secret) on stdout"),
) -> None:
    """Create an API key for a tenant and print its secret — the only time it is shown."""
    from sqlalchemy.exc import SQLAlchemyError

    from layercut.store.keys import create_key

    settings = Settings()  # fresh from the environment, not the process-wide cache
    session = open_session(settings)
    try:
        row, secret = create_key(session, tenant, name)
    except ValueError as exc:
        fail(f"--tenant: {exc}")
    except SQLAlchemyError as exc:
        fail_on_database_error(settings, exc)
    finally:
        session.close()
    if as_json:
        created = {
            "key": secret,
            "tenant": row.tenant,
            "prefix": row.prefix,
            "name": row.name,
            "id": str(row.id),
            "created_at": row.created_at.isoformat(),
        }
        sys.stdout.write(json.dumps(created) + "\n")
        return
    err_console.print(
        f"API key for tenant [bold]{row.tenant}[/] (prefix {row.prefix}) in {where(settings)}; store it now, it is "
        "not shown again:",
        highlight=False,
        soft_wrap=True,
    )
    # The secret alone on stdout, so `KEY=$(layercut keys create --tenant t)` works.
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def keys_list(
    tenant: Optional[str] = typer.Option(None, "--tenant", help="only this tenant's keys"),
    revoked: bool = typer.Option(False, "--revoked/--active", help="include revoked keys (default: active only)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list on stdout"),
) -> None:
    """List API keys (prefix, tenant, name, created, revoked); secrets are never stored, so never shown."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from layercut.store.models import ApiKey

    settings = Settings()
    session = open_session(settings)
    try:
        query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
        if tenant:
            query = query.where(ApiKey.tenant == tenant)
        if not revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        rows = list(session.scalars(query))
    except SQLAlchemyError as exc:
        fail_on_database_error(settings, exc)
    finally:
        session.close()
    if as_json:
        listed = [
            {
                "prefix": r.prefix,
                "tenant": r.tenant,
                "name": r.name,
                "id": str(r.id),
                "created_at": r.created_at.isoformat(),
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
            }
            for r in rows
        ]
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
        return
    if not rows:
        err_console.print(
            "no keys" + (f" for tenant {tenant}" if tenant else "") + f" in {where(settings)}",
            highlight=False,
            soft_wrap=True,
        )
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
    prefix: str = typer.Option(..., "--prefix", help="the key's prefix, as `layercut keys list` shows it"),
) -> None:
    """Revoke an API key: requests with it are rejected from now on."""
    from sqlalchemy.exc import SQLAlchemyError

    from layercut.store.keys import revoke_key

    settings = Settings()
    session = open_session(settings)
    try:
        done = revoke_key(session, prefix)
    except SQLAlchemyError as exc:
        fail_on_database_error(settings, exc)
    finally:
        session.close()
    if not done:
        fail(f"no active key with prefix {prefix!r} (see `layercut keys list`)")
    err_console.print(f"revoked key {prefix}", highlight=False, soft_wrap=True)
