"""Workers on many machines: a pipeline whose artifacts live in object storage (moto's S3 server, a real process
on loopback), run by a real Celery worker on Redis and Postgres. The API and each worker have their own local
folder, as separate machines would: nothing reaches one from another except through the bucket."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from layercut.api.main import create_app
from layercut.artifacts import file_sha256
from layercut.store.keys import create_key
from layercut.store.models import Artifact, ModelVersion
from layercut.testing.workers import (
    ARCHIVE_SPEC,
    TINY_ANALYZE,
    TINY_COMPARE,
    TINY_TRAIN,
    Worker,
    flush_broker,
    image_archive,
    session_for,
    settings_from,
    wait_for,
)

BROKER_DB = 8
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.new_bucket()


@pytest.fixture(scope="module")
def machines(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("machines")
    return {name: base / name for name in ("api", "worker-a", "worker-b")}


@pytest.fixture(scope="module")
def env(worker_env, machines, s3_server, bucket) -> dict[str, str]:
    env = worker_env(BROKER_DB, machines["worker-a"], **s3_server.settings(bucket))
    flush_broker(env["LAYERCUT_BROKER_URL"])
    return env


@pytest.fixture(scope="module")
def api(env, machines, postgres_url):
    """The API on its own machine, with a key of a fresh tenant."""
    settings = settings_from({**env, "LAYERCUT_ARTIFACT_ROOT": str(machines["api"])})
    tenant = f"t-s3-{uuid.uuid4().hex[:8]}"
    with session_for(postgres_url) as session:
        _, key = create_key(session, tenant)
    with TestClient(create_app(settings, run_embedded_jobs=False)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        client.tenant = tenant  # type: ignore[attr-defined]
        yield client


def submit(api, **params) -> str:
    """POST /v1/jobs with ``params``; the new job's id."""
    response = api.post("/v1/jobs", json={"params": params})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_ended(api, path: str, timeout: float) -> dict:
    def ended():
        body = api.get(path).json()
        return body if body["status"] in FINAL else None

    return wait_for(ended, timeout, 0.5, f"{path} to end")


def test_a_pipeline_runs_with_its_artifacts_in_object_storage(
    api, env, machines, s3_server, bucket, postgres_url, tmp_path_factory
) -> None:
    tenant = api.tenant
    logs = tmp_path_factory.mktemp("logs")
    worker = Worker(env, logs / "worker-a.log", "s3-a").wait_ready()
    try:
        assert api.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok", "artifacts": "ok"}
        uploaded = api.post("/v1/datasets/upload", files={"file": ("colours.zip", image_archive())})
        assert uploaded.status_code == 201, uploaded.text
        dataset = uploaded.json()
        stored = s3_server.objects(bucket, f"artifacts/{tenant}/datasets/{dataset['id']}/")
        assert len([k for k in stored if k.endswith(".png")]) == 20
        assert not (machines["api"] / tenant / "datasets" / dataset["id"]).exists()  # the API keeps no copy

        body = {
            "data": {"dataset_id": dataset["id"], "image_size": 32, "val_fraction": 0.25, "test_fraction": 0.25},
            "arch": "smallcnn",
            "train": TINY_TRAIN,
            "analyze": TINY_ANALYZE,
            "truncate": {"cut": "knee"},
            "compare": TINY_COMPARE,
            "explain": {"images": 2, "feature_maps": 2},
        }
        created = api.post("/v1/pipelines", json=body)
        assert created.status_code == 201, created.text
        pipeline = wait_ended(api, f"/v1/pipelines/{created.json()['id']}", 240)
        assert pipeline["status"] == "succeeded", (pipeline, worker.tail())
    finally:
        worker.stop()
    steps = {step["kind"]: step["id"] for step in pipeline["steps"]}

    # every recorded file is in the bucket, byte for byte
    with session_for(postgres_url) as session:
        rows = session.scalars(select(Artifact).where(Artifact.tenant == tenant)).all()
        models = {str(m.job_id): m for m in session.scalars(select(ModelVersion).where(ModelVersion.tenant == tenant))}
    objects = s3_server.objects(bucket, f"artifacts/{tenant}/")
    assert len(rows) > 20
    for row in rows:
        key = f"artifacts/{row.path}"
        assert objects.get(key) == row.bytes, row.path
        if row.kind in ("checkpoint", "analysis", "metrics"):
            assert hashlib.sha256(s3_server.read(bucket, key)).hexdigest() == row.sha256, row.path

    # downloads stream from the store, through the tenant check
    checkpoint = next(r for r in rows if r.path == models[steps["train"]].checkpoint)
    download = api.get(f"/v1/artifacts/{checkpoint.id}")
    assert download.status_code == 200 and download.content == s3_server.read(bucket, f"artifacts/{checkpoint.path}")
    assert download.headers["content-length"] == str(checkpoint.bytes)
    assert 'filename="model.safetensors"' in download.headers["content-disposition"]
    model_id = models[steps["train"]].id
    assert api.get(f"/v1/models/{model_id}/checkpoint").content == download.content  # the same, by model

    # the report and the logs are read from the store on the API's machine
    page = api.get(f"/v1/pipelines/{pipeline['id']}/report")
    assert page.status_code == 200 and page.text.count("data:image/png;base64,") >= 8, page.text[:500]
    assert not list((machines["api"] / tenant).rglob("*.safetensors"))  # only what the report shows was fetched
    lines = api.get(f"/v1/jobs/{steps['analyze']}/logs").json()["items"]
    assert lines[0]["message"].startswith("job started: analyze") and lines[-1]["message"].startswith("job succeeded")


def test_a_worker_on_another_machine_reads_what_the_first_made(
    api, env, machines, s3_server, bucket, postgres_url, tmp_path_factory
) -> None:
    """Worker B has an empty folder: each input comes from the bucket, checked against its recorded SHA-256."""
    tenant = api.tenant
    pipeline = api.get("/v1/pipelines", params={"limit": 1}).json()["items"][0]
    steps = {step["kind"]: step["id"] for step in api.get(f"/v1/pipelines/{pipeline['id']}").json()["steps"]}
    other = dict(env, LAYERCUT_ARTIFACT_ROOT=str(machines["worker-b"]))
    worker = Worker(other, tmp_path_factory.mktemp("logs") / "worker-b.log", "s3-b").wait_ready()
    try:
        truncate = submit(
            api,
            kind="truncate",
            model={"from_job": steps["train"]},
            truncate={"cut": "knee"},
            analysis_job=steps["analyze"],
        )
        compare = submit(
            api,
            kind="compare",
            base={"from_job": steps["train"]},
            slim={"from_job": steps["retrain"]},
            compare=TINY_COMPARE,
        )
        checkpoint = api.get(f"/v1/jobs/{steps['train']}/artifacts").json()
        weights = next(a for a in checkpoint if a["name"] == "model.safetensors")
        imported = api.post(
            "/v1/models/import",
            files={"weights": ("base.safetensors", api.get(f"/v1/artifacts/{weights['id']}").content)},
            data={"spec": json.dumps(ARCHIVE_SPEC)},
        )
        assert imported.status_code == 201, imported.text
        assert s3_server.objects(bucket, f"artifacts/{tenant}/imports/{imported.json()['id']}/")
        for job in (truncate, compare, imported.json()["id"]):
            ended = wait_ended(api, f"/v1/jobs/{job}", 120)
            assert ended["status"] == "succeeded", (ended, worker.tail())
    finally:
        worker.stop()

    # worker B fetched the checkpoints, the analysis and the dataset, and they are what the database recorded
    with session_for(postgres_url) as session:
        for kind in ("train", "retrain"):
            model = session.scalars(select(ModelVersion).where(ModelVersion.job_id == uuid.UUID(steps[kind]))).one()
            row = session.scalars(select(Artifact).where(Artifact.path == model.checkpoint)).one()
            assert file_sha256(machines["worker-b"] / model.checkpoint) == row.sha256
    assert (machines["worker-b"] / tenant / steps["analyze"] / "analysis.json").is_file()
    assert not (machines["worker-b"] / tenant / steps["analyze"] / "gbp_maps.npz").exists()  # only what it read
    assert list((machines["worker-b"] / tenant / "datasets").rglob("*.png"))
    # the import's upload was removed from the store once read
    assert not s3_server.objects(bucket, f"artifacts/{tenant}/imports/")

    # deleting the pipeline removes its files from the bucket
    for job in (truncate, compare):
        assert api.delete(f"/v1/jobs/{job}").status_code == 204
    assert api.delete(f"/v1/pipelines/{pipeline['id']}").status_code == 204
    left = s3_server.objects(bucket, f"artifacts/{tenant}/")
    for job_id in steps.values():
        assert not [k for k in left if f"/{job_id}" in k], job_id
    assert not (machines["api"] / tenant / steps["train"]).exists()
