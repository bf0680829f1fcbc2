"""The contract a platform integrates by: a client generated from our OpenAPI document with openapi-python-client
(what MLOps platforms do), and nothing else, uploads a dataset, starts a pipeline and reads it back (its times
comparable), runs it to succeeded and reads every step's typed params, result and metrics, lists jobs with filters,
downloads artifacts and checks their sha256, cancels a job, reads a 404 and a 422 as typed errors, and imports a model
from a .pt state dict."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import subprocess
import sys
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

PACKAGE = "layercut_generated_client"


_GENERATED: dict[str, Path] = {}
"""Folders holding a client generated from a given OpenAPI document (by its sha256): generated once per run."""


@pytest.fixture
def generated(env, tmp_path_factory: pytest.TempPathFactory, monkeypatch):
    """The client package generated from this API's OpenAPI document, importable."""
    text = json.dumps(env.app.openapi(), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    root = _GENERATED.get(digest)
    if root is None:
        root = tmp_path_factory.mktemp("generated-client")
        document = root / "openapi.json"
        document.write_text(text)
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "openapi-python-client"),
                "generate",
                "--path",
                str(document),
                "--output-path",
                str(root / PACKAGE),
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
        _GENERATED[digest] = root
    monkeypatch.syspath_prepend(str(root))
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


def generated_client(env, generated):
    client_module = importlib.import_module(f"{PACKAGE}.client")
    client = client_module.AuthenticatedClient(base_url="http://testserver", token=env.key)
    env.client.headers["Authorization"] = f"Bearer {env.key}"  # the test's transport carries the key
    client.set_httpx_client(env.client)
    return client


def operation(group: str, name: str):
    return importlib.import_module(f"{PACKAGE}.api.{group}.{name}")


def run_dispatched(env) -> list[str]:
    """Run every job the API (and each finished job) sent, in order, as a worker would; their final statuses."""
    from layercut.jobs.runner import execute_job

    statuses = []
    while env.dispatcher.sent:
        job_id, _ = env.dispatcher.sent.pop(0)
        statuses.append(execute_job(str(job_id), env.settings, dispatcher=env.dispatcher))
    return statuses


def test_a_generated_client_runs_a_pipeline_logged_to_mlflow_and_reads_typed_results(
    env, generated, mlflow_server
) -> None:
    """The whole run over HTTP, ending in the service's MLflow step: the run is in MLflow with base and slim
    registered, and every step's params, result and metrics read back typed by kind."""
    import mlflow

    from layercut.stages.tracking import CUT_TAG, PARENT_TAG, ROLE_TAG
    from layercut.testing.workers import TINY_ANALYZE, TINY_COMPARE, TINY_TRAIN, image_archive

    env.settings.mlflow_tracking_uri = mlflow_server.url
    registered = f"generated-{uuid.uuid4().hex[:6]}"
    client = generated_client(env, generated)
    types = importlib.import_module(f"{PACKAGE}.types")
    models = importlib.import_module(f"{PACKAGE}.models")
    body = models.BodyUploadDataset(file=types.File(payload=io.BytesIO(image_archive()), file_name="colours.zip"))
    dataset = operation("datasets", "upload_dataset").sync(client=client, body=body)
    request = models.PipelineCreate.from_dict(
        {
            "data": {"dataset_id": str(dataset.id), "image_size": 32},
            "arch": "smallcnn",
            "train": TINY_TRAIN,
            "analyze": TINY_ANALYZE,
            "truncate": {"cut": "knee"},
            "compare": {**TINY_COMPARE, "onnxruntime": False},
            "explain": {"images": 2, "methods": ["gradcam", "gradcam++"], "feature_maps": 1},
            "mlflow": {"experiment": "generated-client", "registered_model": registered},
            "labels": {"run": "typed"},
        }
    )
    pipeline = operation("pipelines", "create_pipeline").sync(client=client, body=request)
    assert set(run_dispatched(env)) == {"succeeded"}

    read = operation("pipelines", "get_pipeline").sync(client=client, pipeline_id=pipeline.id)
    assert read.status.value == "succeeded" and read.stored_status.value == "succeeded"
    assert read.params.arch == "smallcnn" and read.params.truncate.cut == "knee"  # the request, typed
    kinds = [step.kind.value for step in read.steps]
    assert kinds == ["train", "analyze", "truncate", "retrain", "compare", "explain", "mlflow"]
    get_job = operation("jobs", "get_job")
    jobs = {step.kind.value: get_job.sync(client=client, job_id=step.id) for step in read.steps}
    for kind, job in jobs.items():
        assert job.params.kind == kind and job.result.stage == kind  # told apart by the tag
        assert type(job.result).__name__ == f"{kind.title()}JobResult"
    train, truncate, retrain, compare = (jobs[k] for k in ("train", "truncate", "retrain", "compare"))
    assert train.params.arch == "smallcnn" and train.params.train.epochs == TINY_TRAIN["epochs"]
    assert 0 <= train.result.accuracy <= 1 and train.metrics.accuracy == train.result.accuracy
    assert train.metrics.params == train.result.params > 0 and isinstance(train.result.model_id, uuid.UUID)
    assert truncate.metrics.params_kept == truncate.result.params_kept < 1
    assert retrain.result.cut_point.index == truncate.result.cut_point.index
    assert compare.metrics.accuracy == compare.result.slim.accuracy
    assert compare.result.slim.params == retrain.result.params < compare.result.base.params
    assert [m.value for m in jobs["explain"].result.methods] == ["gradcam", "gradcam++"]  # both read back

    logged = jobs["mlflow"]
    assert logged.metrics is None and logged.result.registered_model == registered
    assert "127.0.0.1" in logged.result.tracking_uri and logged.params.mlflow.experiment == "generated-client"
    assert sorted(a.name for a in logged.artifacts) == ["mlflow.json", "report.html", "run.json"]
    tracking = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    run = tracking.get_run(logged.result.run_id)
    assert run.info.run_name == f"pipeline-{pipeline.id}" and run.data.params["architecture"] == "smallcnn"
    assert run.data.params["cut_point"] == truncate.result.cut_point.name and "slim.accuracy" in run.data.metrics
    assert run.data.metrics["slim.accuracy"] == compare.result.slim.accuracy
    base_version, slim_version = (tracking.get_model_version(registered, m.version) for m in logged.result.models)
    assert base_version.tags[ROLE_TAG] == "base" and slim_version.tags[ROLE_TAG] == "slim"
    assert slim_version.tags[PARENT_TAG] == base_version.version
    assert slim_version.tags[CUT_TAG] == truncate.result.cut_point.name
    report = operation("reports", "get_pipeline_report").sync_detailed(client=client, pipeline_id=pipeline.id)
    assert report.status_code == 200 and b"Explanations" in report.content  # the page renders with the mlflow step
    logged_section = report.content.decode()[report.content.decode().index('id="mlflow"') :]
    assert "Logged to MLflow" in logged_section and run.info.run_id in logged_section
    assert f"models:/{registered}/{slim_version.version}" in logged_section
    shown = {a.path for a in tracking.list_artifacts(run.info.run_id)}
    assert {"report.html", "run.json", "base", "slim", "analysis", "compare", "explain"} <= shown

    list_jobs = operation("jobs", "list_jobs")
    page = list_jobs.sync(client=client, pipeline_id=pipeline.id, kind=models.ListJobsKindType0("retrain"))
    assert [job.id for job in page.items] == [retrain.id]
    oldest_first = list_jobs.sync(client=client, pipeline_id=pipeline.id, sort=models.ListJobsSort.OLDEST_FIRST)
    assert [job.kind.value for job in oldest_first.items] == kinds
    succeeded = list_jobs.sync(client=client, status=models.ListJobsStatusType0("succeeded"), label=["run=typed"])
    assert {job.id for job in succeeded.items} == {step.id for step in read.steps}

    download = operation("artifacts", "download_artifact")
    assert retrain.artifacts, "a retrain job has artifacts"
    for artifact in retrain.artifacts:
        answer = download.sync_detailed(client=client, artifact_id=artifact.id)
        assert answer.status_code == 200, (artifact.name, answer.status_code)
        assert hashlib.sha256(answer.content).hexdigest() == artifact.sha256 and len(answer.content) == artifact.bytes_


def test_a_generated_client_cancels_and_reads_typed_errors(env, generated) -> None:
    client = generated_client(env, generated)
    models = importlib.import_module(f"{PACKAGE}.models")
    dataset = env.dataset()
    train = {"kind": "train", "data": {"dataset_id": dataset, "image_size": 32}, "arch": "smallcnn"}
    created = operation("jobs", "create_job").sync(client=client, body=models.JobCreate.from_dict({"params": train}))
    assert created.status.value == "queued" and created.params.data.dataset_id == uuid.UUID(dataset)
    cancelled = operation("jobs", "cancel_job").sync(client=client, job_id=created.id)
    assert cancelled.status.value == "cancelled" and cancelled.cancel_requested

    missing = operation("jobs", "get_job").sync_detailed(client=client, job_id=uuid.uuid4())
    assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorOut)
    assert "not found" in missing.parsed.detail
    unknown = {**train, "data": {"dataset_id": str(uuid.uuid4()), "image_size": 32}}
    refused = operation("jobs", "create_job").sync_detailed(
        client=client, body=models.JobCreate.from_dict({"params": unknown})
    )
    assert refused.status_code == 422 and isinstance(refused.parsed, models.HTTPValidationError)
    (detail,) = refused.parsed.detail
    assert detail.loc == ["body", "params", "data", "dataset_id"] and "not found" in detail.msg


def test_a_generated_client_slims_an_imported_model_exports_it_and_logs_it_to_mlflow(
    env, generated, mlflow_server
) -> None:
    """Import → pipeline → export → MLflow over HTTP: a .pt state dict trained elsewhere is imported, a pipeline from
    it cuts, retrains, exports the slim model to ONNX and logs the run, its base marked as not trained here."""
    import mlflow
    import torch

    from layercut.stages.architectures import build_model
    from layercut.testing.workers import ARCHIVE_SPEC, TINY_ANALYZE, TINY_COMPARE, TINY_TRAIN, image_archive

    env.settings.mlflow_tracking_uri = mlflow_server.url
    client = generated_client(env, generated)
    types = importlib.import_module(f"{PACKAGE}.types")
    models = importlib.import_module(f"{PACKAGE}.models")
    upload = models.BodyUploadDataset(file=types.File(payload=io.BytesIO(image_archive()), file_name="colours.zip"))
    dataset = operation("datasets", "upload_dataset").sync(client=client, body=upload)
    weights = io.BytesIO()
    torch.save({"state_dict": build_model("smallcnn", 2).state_dict()}, weights)
    body = models.BodyImportModel(
        weights=types.File(payload=io.BytesIO(weights.getvalue()), file_name="trained-elsewhere.pt"),
        spec=json.dumps(ARCHIVE_SPEC),
    )
    answer = operation("models", "import_model").sync_detailed(client=client, body=body)
    assert answer.status_code == 201, answer.content
    imported = answer.parsed
    assert run_dispatched(env) == ["succeeded"]
    model_id = operation("jobs", "get_job").sync(client=client, job_id=imported.id).result.model_id

    registered = f"imported-{uuid.uuid4().hex[:6]}"
    request = models.PipelineCreate.from_dict(
        {
            "model_id": str(model_id),
            "data": {"dataset_id": str(dataset.id), "image_size": 32},
            "retrain": TINY_TRAIN,
            "analyze": TINY_ANALYZE,
            "truncate": {"cut": "1"},
            "compare": {**TINY_COMPARE, "onnxruntime": False},
            "explain": {"images": 2, "methods": ["gradcam"], "feature_maps": 1},
            "export": {"format": "onnx", "latency_batches": [1], "latency_repeats": 1},
            "mlflow": {"experiment": "imported", "registered_model": registered},
        }
    )
    pipeline = operation("pipelines", "create_pipeline").sync(client=client, body=request)
    assert set(run_dispatched(env)) == {"succeeded"}
    read = operation("pipelines", "get_pipeline").sync(client=client, pipeline_id=pipeline.id)
    kinds = [step.kind.value for step in read.steps]
    assert kinds == ["analyze", "truncate", "retrain", "compare", "export", "explain", "mlflow"]
    jobs = {step.kind.value: operation("jobs", "get_job").sync(client=client, job_id=step.id) for step in read.steps}
    exported = jobs["export"].result
    assert exported.format_.value == "onnx" and exported.parity.max_abs_diff <= exported.parity.tolerance

    logged = jobs["mlflow"].result
    tracking = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    run = tracking.get_run(logged.run_id)
    assert run.data.params["base.trained_here"] == "False" and "train.epochs" not in run.data.params
    assert run.data.params["retrain.epochs"] == str(TINY_TRAIN["epochs"]) and "base.best_epoch" not in run.data.metrics
    assert run.data.metrics["slim.accuracy"] == jobs["compare"].result.slim.accuracy
    base_version, slim_version = (tracking.get_model_version(registered, m.version) for m in logged.models)
    assert slim_version.tags["layercut.parent_version"] == base_version.version
    assert slim_version.tags["layercut.cut_point"] == jobs["truncate"].result.cut_point.name
