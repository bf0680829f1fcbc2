"""`layercut keys create | list | revoke` and `layercut migrate`, through the real command line."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, inspect, pool
from sqlalchemy.orm import Session

from layercut.store.keys import tenant_for_key
from layercut.store.models import Base
from layercut.testing.commands import clean_env, layercut


def _session(url: str) -> Session:
    return Session(create_engine(url, poolclass=pool.NullPool))


def test_keys_round_trip_on_a_fresh_embedded_database(tmp_path):
    """create (migrating the new SQLite file first) → the key authenticates → list → revoke → rejected."""
    env = clean_env(tmp_path)
    db = tmp_path / "data" / "layercut.db"
    assert not db.exists()

    created = json.loads(
        layercut("keys", "create", "--tenant", "acme", "--name", "ci", "--json", env=env, cwd=tmp_path).stdout
    )
    assert db.is_file() and created["tenant"] == "acme" and created["key"].startswith(created["prefix"])
    plain = layercut("keys", "create", "--tenant", "other", env=env, cwd=tmp_path)
    other_key = plain.stdout.strip()  # the secret alone on stdout, the explanation on stderr
    assert other_key.startswith("lc_") and "\n" not in other_key and "not shown again" in plain.stderr

    url = f"sqlite:///{db}"
    with _session(url) as session:
        assert tenant_for_key(session, created["key"]) == "acme"
        assert tenant_for_key(session, other_key) == "other"
        assert tenant_for_key(session, created["key"] + "x") is None

    listed = json.loads(layercut("keys", "list", "--tenant", "acme", "--json", env=env, cwd=tmp_path).stdout)
    assert [(k["prefix"], k["name"], k["revoked_at"]) for k in listed] == [(created["prefix"], "ci", None)]
    assert created["key"] not in json.dumps(listed)  # secrets are never shown again
    table = layercut("keys", "list", env=env, cwd=tmp_path).stdout
    assert created["prefix"] in table and "other" in table

    layercut("keys", "revoke", "--prefix", created["prefix"], env=env, cwd=tmp_path)
    with _session(url) as session:
        assert tenant_for_key(session, created["key"]) is None
        assert tenant_for_key(session, other_key) == "other"
    assert json.loads(layercut("keys", "list", "--tenant", "acme", "--json", env=env, cwd=tmp_path).stdout) == []
    with_revoked = json.loads(
        layercut("keys", "list", "--tenant", "acme", "--revoked", "--json", env=env, cwd=tmp_path).stdout
    )
    assert with_revoked[0]["revoked_at"] is not None

    again = layercut("keys", "revoke", "--prefix", created["prefix"], env=env, cwd=tmp_path, check=False)
    assert again.returncode == 2 and "no active key" in again.stderr


def test_keys_create_rejects_a_bad_tenant_in_one_line(tmp_path):
    result = layercut("keys", "create", "--tenant", "a/b", env=clean_env(tmp_path), cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") <= 2 and "--tenant" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_on_a_configured_postgres(tmp_path, postgres_url):
    env = clean_env(tmp_path, LAYERCUT_DATABASE_URL=postgres_url)
    created = json.loads(layercut("keys", "create", "--tenant", "pg-tenant", "--json", env=env, cwd=tmp_path).stdout)
    with _session(postgres_url) as session:
        assert tenant_for_key(session, created["key"]) == "pg-tenant"
    assert not (tmp_path / "data").exists()  # nothing embedded was created


def test_unmigrated_postgres_is_a_clear_error(tmp_path):
    from layercut.testing import services

    url = services.create_database()
    try:
        result = layercut("keys", "list", env=clean_env(tmp_path, LAYERCUT_DATABASE_URL=url), cwd=tmp_path, check=False)
        assert result.returncode == 2 and "layercut migrate" in result.stderr and "Traceback" not in result.stderr
        out = layercut("migrate", env=clean_env(tmp_path, LAYERCUT_DATABASE_URL=url), cwd=tmp_path)
        assert "empty →" in out.stdout
        engine = create_engine(url, poolclass=pool.NullPool)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        engine.dispose()
        assert (
            "already at revision"
            in layercut("migrate", env=clean_env(tmp_path, LAYERCUT_DATABASE_URL=url), cwd=tmp_path).stdout
        )
    finally:
        services.drop_database(url)


def test_migrate_creates_the_embedded_database(tmp_path):
    out = layercut("migrate", env=clean_env(tmp_path), cwd=tmp_path)
    assert "empty →" in out.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'layercut.db'}", poolclass=pool.NullPool)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
