"""Health, readiness, auth on every route, the torch-free import and the OpenAPI document."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from layercut.api.main import create_app
from layercut.settings import Settings
from layercut.testing.api_env import make_env

ROOT = Path(__file__).resolve().parents[2]
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_api_imports_without_torch():
    code = "import layercut.api.main, sys; assert 'torch' not in sys.modules, 'api imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_healthz_and_readyz_need_no_key(env):
    assert env.client.get("/healthz").json() == {"status": "ok"}
    ready = env.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"] == "ok"


def test_readyz_with_redis(env, redis_url):
    env.settings.broker_url = redis_url
    ready = env.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"


def test_readyz_reports_what_failed(postgres_url, tmp_path):
    from fastapi.testclient import TestClient

    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1",
        broker_url="redis://127.0.0.1:1/0",
        artifact_root=tmp_path,
        callback_secret="a-secret-of-this-test",
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["database"] != "ok" and checks["broker"] != "ok"


def _concrete(path: str) -> str:
    return (
        path.replace("{", "")
        .replace("}", "")
        .replace("job_id", str(uuid.uuid4()))
        .replace("dataset_id", str(uuid.uuid4()))
        .replace("pipeline_id", str(uuid.uuid4()))
        .replace("model_id", str(uuid.uuid4()))
        .replace("artifact_id", str(uuid.uuid4()))
    )


def test_every_v1_route_needs_a_valid_key(postgres_url, tmp_path):
    env = make_env(postgres_url, tmp_path, auth_failures_per_minute=0)  # one wrong key per route, 30 routes
    spec = env.client.get("/openapi.json").json()
    routes = [(p, m.upper()) for p, ops in spec["paths"].items() for m in ops if p.startswith("/v1")]
    assert len(routes) >= 17
    for path, method in routes:
        url = _concrete(path)
        for headers in ({}, {"Authorization": "Bearer lc_not-a-key"}, {"Authorization": "Basic abc"}):
            response = env.client.request(method, url, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert "detail" in response.json()


def test_revoked_key_is_refused(env):
    from layercut.store.keys import revoke_key

    with env.session() as s:
        assert revoke_key(s, env.key[:10])
    assert env.client.get("/v1/jobs", headers=env.headers).status_code == 401


def test_openapi_has_examples_for_every_job_kind(env):
    spec = env.client.get("/openapi.json").json()
    examples = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {"train", "analyze", "truncate", "retrain", "compare"}
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
    for path in spec["paths"]:
        assert path in OPEN_PATHS or path.startswith("/v1/")


def test_the_api_docs_load_nothing_from_outside(env):
    """/docs (Swagger UI) and /redoc work offline: every script, style sheet and icon they name is served by the
    API itself, and the pages name no other host."""
    import re

    for page in ("/docs", "/redoc"):
        html = env.client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://", html.text), f"{page} loads from another host"
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:
            served = env.client.get(asset)
            assert served.status_code == 200 and len(served.content) > 500, (page, asset, served.status_code)


def test_the_service_refuses_default_secrets_unless_told_it_is_development(tmp_path):
    """With a database or broker configured (the service), the API does not start on the default callback secret or
    a well-known database password, and says what to set; the embedded default and the development flag start."""
    import pytest
    from fastapi.testclient import TestClient

    from layercut.settings import InsecureDefaults

    service = Settings(
        database_url="postgresql+psycopg://layercut:layercut@127.0.0.1:1/none", broker_url="redis://127.0.0.1:1/0"
    )
    problems = service.insecure_defaults()
    assert len(problems) == 2 and "LAYERCUT_CALLBACK_SECRET" in problems[0] and "database password" in problems[1]
    with pytest.raises(InsecureDefaults, match="LAYERCUT_ALLOW_INSECURE_DEFAULTS"):
        with TestClient(create_app(service, run_embedded_jobs=False)):
            pass
    assert Settings(data_dir=tmp_path).insecure_defaults() == []  # embedded: one user's machine
    assert service.model_copy(update={"allow_insecure_defaults": True}).insecure_defaults() == []
    safe = service.model_copy(
        update={"callback_secret": "x" * 32, "database_url": "postgresql+psycopg://layercut:S3cr3t-r4nd0m@db/l"}
    )
    assert safe.insecure_defaults() == []
