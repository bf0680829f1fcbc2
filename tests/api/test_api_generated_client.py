"""The contract a platform integrates by: a client generated from our OpenAPI document with openapi-python-client
(what MLOps platforms do) uploads a dataset, starts a pipeline and reads it back, its times comparable, and imports a
model from a .pt state dict."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

PACKAGE = "layercut_generated_client"


@pytest.fixture
def generated(env, tmp_path: Path, monkeypatch):
    """The client package generated from this API's OpenAPI document, importable."""
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(env.app.openapi()))
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(tmp_path / PACKAGE),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout  # every operation and schema generated
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    return importlib.import_module(PACKAGE)


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in ("train/cat/1.png", "train/cat/2.png", "train/dog/1.png", "val/cat/1.png", "val/dog/1.png"):
            zf.writestr(name, b"\x89PNG\r\n\x1a\nfake")
    return buffer.getvalue()


def test_a_generated_client_uploads_starts_and_reads_back(env, generated) -> None:
    client_module = importlib.import_module(f"{PACKAGE}.client")
    types = importlib.import_module(f"{PACKAGE}.types")
    models = importlib.import_module(f"{PACKAGE}.models")
    upload = importlib.import_module(f"{PACKAGE}.api.datasets.upload_dataset")
    create_pipeline = importlib.import_module(f"{PACKAGE}.api.pipelines.create_pipeline")
    get_pipeline = importlib.import_module(f"{PACKAGE}.api.pipelines.get_pipeline")
    get_job = importlib.import_module(f"{PACKAGE}.api.jobs.get_job")

    client = client_module.AuthenticatedClient(base_url="http://testserver", token=env.key)
    env.client.headers["Authorization"] = f"Bearer {env.key}"
    client.set_httpx_client(env.client)

    body = models.BodyUploadDataset(file=types.File(payload=io.BytesIO(archive()), file_name="pets.zip"))
    answer = upload.sync_detailed(client=client, body=body)
    assert answer.status_code == 201, answer.content  # the file went as a file, not as a string field
    dataset = answer.parsed
    assert dataset.classes == ["cat", "dog"]

    request = models.PipelineCreate.from_dict(
        {"data": {"dataset_id": str(dataset.id), "image_size": 32}, "arch": "smallcnn", "labels": {"via": "gen"}}
    )
    created = create_pipeline.sync_detailed(client=client, body=request)
    assert created.status_code == 201, created.content
    read = get_pipeline.sync(client=client, pipeline_id=created.parsed.id)
    now = datetime.now(timezone.utc)
    for moment in (created.parsed.created_at, read.created_at, read.updated_at):
        assert moment.tzinfo is not None and now - timedelta(minutes=5) < moment <= now + timedelta(seconds=5)
    assert read.created_at == created.parsed.created_at  # the same time on create and on a later read
    step = get_job.sync(client=client, job_id=read.steps[0].id)
    assert step.kind.value == "train" and step.status.value == "queued"  # enums, not plain strings
    assert step.created_at.tzinfo is not None and step.labels.to_dict() == {"via": "gen"}
    assert read.status.value == "queued" and [s.kind.value for s in read.steps][:2] == ["train", "analyze"]


def test_a_generated_client_imports_a_pt_state_dict(env, generated) -> None:
    """A .pt state dict goes up as a file through the generated code; the import job it starts makes the model."""
    import torch

    from layercut.jobs.runner import execute_job
    from layercut.stages.architectures import build_model

    client_module = importlib.import_module(f"{PACKAGE}.client")
    types = importlib.import_module(f"{PACKAGE}.types")
    models = importlib.import_module(f"{PACKAGE}.models")
    import_model = importlib.import_module(f"{PACKAGE}.api.models.import_model")
    get_job = importlib.import_module(f"{PACKAGE}.api.jobs.get_job")
    get_model = importlib.import_module(f"{PACKAGE}.api.models.get_model")
    client = client_module.AuthenticatedClient(base_url="http://testserver", token=env.key)
    env.client.headers["Authorization"] = f"Bearer {env.key}"  # the test's transport carries the key
    client.set_httpx_client(env.client)

    weights = io.BytesIO()
    torch.save(build_model("smallcnn", 2).state_dict(), weights)
    spec = {"architecture": "smallcnn", "classes": ["cat", "dog"], "image_size": 32, "mean": [0.5], "std": [0.25]}
    body = models.BodyImportModel(
        weights=types.File(payload=io.BytesIO(weights.getvalue()), file_name="smallcnn.pt"), spec=json.dumps(spec)
    )
    answer = import_model.sync_detailed(client=client, body=body)
    assert answer.status_code == 201, answer.content
    job = answer.parsed
    assert job.kind.value == "import" and job.status.value == "queued"
    assert execute_job(str(job.id), env.settings) == "succeeded"
    done = get_job.sync(client=client, job_id=job.id)
    model = get_model.sync(client=client, model_id=done.result.to_dict()["model_id"])
    assert model.source == "import" and model.classes == ["cat", "dog"]
