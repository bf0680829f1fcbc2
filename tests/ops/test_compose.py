"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine (none runs here).

The compose file is parsed with PyYAML; every command the image runs must name a module that exists
in this checkout and defines the object it names.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def command(service: str) -> list[str]:
    value = SERVICES[service].get("command")
    if value is None:  # the image's CMD
        return dockerfile_instruction("CMD")
    return value if isinstance(value, list) else shlex.split(value)


def dockerfile_instruction(name: str) -> list[str]:
    lines = [line for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]
    assert lines, f"the Dockerfile has no {name}"
    return json.loads(lines[-1][len(name) + 1 :])  # exec form


def env(service: str) -> dict[str, str]:
    value = SERVICES[service].get("environment", {})
    if isinstance(value, list):
        value = dict(item.split("=", 1) for item in value)
    return {k: str(v) for k, v in value.items()}


def resolve(value: str) -> str:
    """Compose's ${VAR:-default} with no variables set, and a required ${VAR:?message} as given ("given-VAR")."""
    value = re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", r"given-\1", value)
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def module_defines(module: str, name: str) -> bool:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} does not exist"
    path = Path(spec.origin)
    tree = ast.parse(path.read_text())
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            targets = [node.name]
        elif isinstance(node, ast.ImportFrom):
            targets = [a.asname or a.name for a in node.names]
        if name in targets:
            return True
    return False


def test_services_present():
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(SERVICES)


def test_postgres_and_redis_have_healthchecks():
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert "ping" in " ".join(SERVICES["redis"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in SERVICES["postgres"]["volumes"])


def test_migrate_is_one_shot_after_postgres():
    migrate = SERVICES["migrate"]
    assert command("migrate") == ["alembic", "upgrade", "head"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"
    assert (ROOT / "alembic.ini").is_file() and (ROOT / "migrations" / "env.py").is_file()


@pytest.mark.parametrize("service", ["api", "worker"])
def test_api_and_worker_wait_for_migration_and_broker(service):
    depends = SERVICES[service]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"


def test_one_image_for_migrate_api_and_worker():
    images = {SERVICES[s]["image"] for s in ("migrate", "api", "worker")}
    assert len(images) == 1
    for s in ("migrate", "api", "worker"):
        assert SERVICES[s]["build"]["context"] == "."


def test_api_port_and_command():
    assert any(str(p).endswith(":8000") for p in SERVICES["api"]["ports"])
    cmd = command("api")
    assert cmd[0] == "uvicorn" and "layercut.api.main:app" in cmd
    assert cmd[cmd.index("--port") + 1] == "8000" and cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_worker_command_and_gpu_reservation():
    cmd = command("worker")
    assert cmd[:4] == ["celery", "-A", "layercut.worker.app", "worker"]
    queues = set(cmd[cmd.index("-Q") + 1].split(","))
    assert queues == {"gpu", "cpu"}
    assert cmd[cmd.index("--concurrency") + 1] == "1"
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in SERVICES["api"]  # the API never needs the GPU


def test_artifact_volume_is_shared_by_api_and_worker():
    assert "artifacts" in COMPOSE["volumes"]
    for service in ("api", "worker"):
        mounts = dict(v.split(":")[:2] for v in SERVICES[service]["volumes"])
        assert mounts.get("artifacts") == "/artifacts", service
        assert env(service)["LAYERCUT_ARTIFACT_ROOT"] == "/artifacts"


def test_environment_is_consistent():
    api, worker, migrate = env("api"), env("worker"), env("migrate")
    for key in (
        "LAYERCUT_DATABASE_URL",
        "LAYERCUT_BROKER_URL",
        "LAYERCUT_ARTIFACT_ROOT",
        "LAYERCUT_CALLBACK_SECRET",
        "LAYERCUT_DATASET_ROOTS",
    ):
        assert api[key] == worker[key], key
    assert migrate["LAYERCUT_DATABASE_URL"] == api["LAYERCUT_DATABASE_URL"]

    db = urlsplit(resolve(api["LAYERCUT_DATABASE_URL"]))
    pg = {k: resolve(str(v)) for k, v in SERVICES["postgres"]["environment"].items()}
    assert db.scheme == "postgresql+psycopg"  # the driver the project installs (psycopg 3)
    assert db.hostname == "postgres" and (db.port or 5432) == 5432
    assert db.username == pg["POSTGRES_USER"] and db.password == pg["POSTGRES_PASSWORD"]
    assert db.path.lstrip("/") == pg["POSTGRES_DB"]

    broker = urlsplit(api["LAYERCUT_BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis" and broker.hostname in SERVICES

    # every LAYERCUT_* name is a real setting
    from layercut.settings import Settings

    known = {f"LAYERCUT_{name.upper()}" for name in Settings.model_fields}
    for service in ("api", "worker", "migrate"):
        unknown = {k for k in env(service) if k.startswith("LAYERCUT_")} - known
        assert not unknown, f"{service}: {unknown} are not settings"
    # and they parse
    values = {k[len("LAYERCUT_") :].lower(): resolve(v) for k, v in api.items()}
    settings = Settings(**{k: json.loads(v) if v.startswith("[") else v for k, v in values.items()})
    assert not settings.embedded and str(settings.resolved_artifact_root) == "/artifacts"


def test_dockerfile_base_user_and_default_command():
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE, re.M)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "chown" in DOCKERFILE and "/artifacts" in DOCKERFILE  # the volume is writable by that user
    cmd = dockerfile_instruction("CMD")
    assert cmd[0] == "uvicorn" and "layercut.api.main:app" in cmd


def test_commands_reference_modules_that_exist():
    """`layercut.api.main:app` and `layercut.worker.app` (a Celery app named `app`) exist in this checkout."""
    referenced = set()
    for service in ("api", "worker", "migrate"):
        referenced.update(command(service))
    referenced.update(dockerfile_instruction("CMD"))
    assert "layercut.api.main:app" in referenced and "layercut.worker.app" in referenced
    assert module_defines("layercut.api.main", "app"), "api/main.py defines no top-level `app`"
    assert module_defines("layercut.worker.app", "app"), "worker/app.py defines no top-level `app` (the Celery app)"


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for needed in (
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "migrations/env.py",
        "api/__init__.py",
        "worker/__init__.py",
        "core/settings.py",
    ):
        assert not ignored(needed), needed
    for excluded in (".venv", ".git", "layercut-data"):
        assert ignored(excluded), excluded


def test_no_secret_has_a_default_and_secrets_stay_out_of_git_and_the_image():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "LAYERCUT_CALLBACK_SECRET"):
        assert "${" + secret + ":?" in text and "${" + secret + ":-" not in text, secret
    assert "change-me" not in text
    assert (
        ".env" in (ROOT / ".gitignore").read_text().split() and ".env" in (ROOT / ".dockerignore").read_text().split()
    )


def test_api_is_healthy_when_ready_and_the_worker_when_it_answers_its_broker():
    api = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert "/readyz" in api and "/healthz" not in api
    worker = SERVICES["worker"]["healthcheck"]
    assert not worker.get("disable") and "inspect ping" in " ".join(worker["test"])
    assert "celery@$$HOSTNAME" in " ".join(worker["test"])  # $$: the container's own name, not compose's variable


def test_forwarded_headers_are_believed_only_from_configured_proxies():
    """X-Forwarded-Proto/-For from anyone would let a caller choose the scheme the API believes: neither the compose
    file nor the image trusts every address; the API's FORWARDED_ALLOW_IPS defaults to 127.0.0.1."""
    for cmd in (command("api"), dockerfile_instruction("CMD")):
        assert "*" not in cmd and "--forwarded-allow-ips" not in cmd, cmd
    assert env("api")["FORWARDED_ALLOW_IPS"] == "${FORWARDED_ALLOW_IPS:-127.0.0.1}"
