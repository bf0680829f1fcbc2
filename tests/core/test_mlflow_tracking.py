"""A run logged to MLflow, checked on a real tracking server (a process on loopback, SQLite backend store, local
artifact root): its parameters and metrics (every epoch), its report and pictures, and base and slim registered
as ONNX versions that ONNX Runtime runs to torch's logits."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from layercut.contracts import files
from layercut.contracts.configs import (
    AnalyzeConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    MlflowConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.contracts.errors import LayercutError
from layercut.contracts.results import MlflowResult, TrainResult
from layercut.local import load_model, run_pipeline
from layercut.stages.architectures import build_model
from layercut.stages.tracking import CUT_TAG, PARENT_TAG, ROLE_TAG, public_uri
from layercut.testing.commands import clean_env, free_port, layercut


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "light")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 90, (32, 32, 3)) + label * 140
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def logged(tmp_path_factory, mlflow_server):
    tmp = tmp_path_factory.mktemp("tracked")
    config = MlflowConfig(
        tracking_uri=mlflow_server.url, experiment="layercut-tests", registered_model=f"tiny-{uuid.uuid4().hex[:6]}"
    )
    out = tmp / "run"
    summary = run_pipeline(
        DataConfig(source=str(image_folder(tmp / "data")), image_size=32),
        "smallcnn",
        out,
        train=TrainConfig(epochs=2, batch_size=16, device="cpu", patience=None),
        analyze=AnalyzeConfig(probes_per_class=2, device="cpu"),
        cut=TruncateConfig(cut="knee"),
        compare=CompareConfig(device="cpu", latency_repeats=2, latency_warmup=0, latency_batches=[1]),
        explain=ExplainConfig(images=2, methods=["gradcam"], feature_maps=1, device="cpu"),
        mlflow=config,
        progress=False,
    )
    result = MlflowResult.model_validate_json((out / files.MLFLOW_FOLDER / files.MLFLOW_JSON).read_text())
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)  # models:/ URIs resolve through the process-wide tracking URI
    try:
        yield out, summary, result, mlflow.MlflowClient()
    finally:
        mlflow.set_tracking_uri(before)


def test_the_run_is_logged_with_its_parameters_and_every_epoch(logged) -> None:
    out, summary, result, client = logged
    run = client.get_run(result.run_id)
    assert run.info.experiment_id == result.experiment_id and run.info.status == "FINISHED"
    params = run.data.params
    assert params["architecture"] == "smallcnn" and params["cut_point"] == summary.cut_point.name
    assert params["cut.chosen_by"] == "knee" and params["train.epochs"] == "2"
    metrics = run.data.metrics
    assert metrics["base.accuracy"] == pytest.approx(summary.base.accuracy)
    assert metrics["slim.params"] == summary.slim.params and metrics["base.macs"] == summary.base.macs
    base = TrainResult.model_validate_json((out / "base" / files.METRICS_JSON).read_text())
    history = client.get_metric_history(result.run_id, "base.val_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (row.epoch, pytest.approx(row.val_accuracy)) for row in base.history
    ]
    assert len(history) == base.epochs_run == 2


def test_the_report_pictures_and_records_are_its_artifacts(logged) -> None:
    out, _, result, client = logged

    def listed(path: str | None = None) -> set[str]:
        found = set()
        for item in client.list_artifacts(result.run_id, path):
            found |= listed(item.path) if item.is_dir else {item.path}
        return found

    artifacts = listed()
    assert {"report.html", "run.json", "base/metrics.json", "compare/compare.json"} <= artifacts
    pictures = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert pictures and pictures <= artifacts  # every picture of the run
    assert not [a for a in artifacts if a.endswith((".safetensors", ".npz"))]  # weights go to the registry only
    shown = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.suffix in (".html", ".png", ".json", ".csv")}
    assert artifacts == shown - {f"{files.MLFLOW_FOLDER}/{files.MLFLOW_JSON}"} and result.artifacts == len(artifacts)
    page = (out / files.REPORT_HTML).read_text()  # the run folder's report, written again once the run was logged
    logged_section = page[page.index('id="mlflow"') :]
    assert result.run_id in logged_section and result.models[1].model_uri in logged_section


def test_base_and_slim_are_registered_versions_that_onnx_runtime_runs(logged) -> None:
    out, summary, result, client = logged
    base, slim = result.models
    assert (base.role, slim.role) == ("base", "slim")
    base_version = client.get_model_version(result.registered_model, base.version)
    slim_version = client.get_model_version(result.registered_model, slim.version)
    assert base_version.run_id == slim_version.run_id == result.run_id
    assert base_version.tags[ROLE_TAG] == "base"
    assert slim_version.tags[ROLE_TAG] == "slim" and slim_version.tags[PARENT_TAG] == base.version
    assert slim_version.tags[CUT_TAG] == summary.cut_point.name

    images = torch.rand(5, 3, 32, 32)
    for registered, role in ((base, "base"), (slim, "slim")):
        info = mlflow.models.get_model_info(registered.model_uri)
        assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)
        session = ort.InferenceSession(
            mlflow.onnx.load_model(registered.model_uri).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        model, spec = load_model(out / role / files.CHECKPOINT)
        with torch.no_grad():
            expected = model.eval()(images).numpy()
        (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        assert logits.shape == (5, len(spec.classes))
        np.testing.assert_allclose(logits, expected, atol=1e-4)
        assert registered.parity_max_abs_diff <= 1e-4


def test_a_tracking_server_that_does_not_answer_stops_the_run_before_any_work(tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LayercutError, match="does not answer"):
        run_pipeline(
            DataConfig(source="digits", image_size=32),
            "smallcnn",
            tmp_path / "run",
            mlflow=MlflowConfig(tracking_uri=dead),
            progress=False,
        )
    assert not (tmp_path / "run").exists()
    # the command line reads the server from LAYERCUT_MLFLOW_TRACKING_URI when --mlflow is not given
    env = clean_env(tmp_path, LAYERCUT_MLFLOW_TRACKING_URI=f"http://user:secret@127.0.0.1:{free_port()}")
    answer = layercut(
        "run",
        "--data",
        "digits",
        "--arch",
        "smallcnn",
        "--image-size",
        "32",
        "--out",
        "cli-run",
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert answer.returncode != 0 and "does not answer" in answer.stderr and "secret" not in answer.stderr
    assert "Traceback" not in answer.stderr and not (tmp_path / "cli-run").exists()


def test_credentials_never_leave_the_tracking_uri() -> None:
    assert public_uri("https://me:pw@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert public_uri("http://mlflow.internal") == "http://mlflow.internal"
    assert json.loads(MlflowConfig(tracking_uri="file:/tmp/mlruns").model_dump_json())["experiment"] == "layercut"


def test_a_model_trained_elsewhere_is_imported_slimmed_exported_and_logged_from_the_command_line(
    tmp_path, mlflow_server
) -> None:
    """Import → run → export → MLflow on the command line: `layercut import` of a .pt state dict, then `layercut run
    --checkpoint` with no training of a base, exporting the slim model and logging the run (its base marked as not
    trained here, with no epochs)."""
    data = image_folder(tmp_path / "data")
    weights = tmp_path / "trained-elsewhere.pt"
    torch.save({"model_state_dict": build_model("smallcnn", 2).state_dict()}, weights)
    env = clean_env(tmp_path)
    registered = f"imported-{uuid.uuid4().hex[:6]}"
    layercut(
        "import",
        "--arch",
        "smallcnn",
        "--weights",
        str(weights),
        "--classes",
        "dark,light",
        "--image-size",
        "32",
        "--out",
        "imported.safetensors",
        env=env,
        cwd=tmp_path,
    )
    answer = layercut(
        "run",
        "--checkpoint",
        "imported.safetensors",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--cut",
        "1",
        "--probes-per-class",
        "2",
        "--explain-images",
        "2",
        "--explain-methods",
        "gradcam",
        "--export",
        "onnx",
        "--mlflow",
        mlflow_server.url,
        "--mlflow-model",
        registered,
        "--out",
        "run",
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    out = tmp_path / "run"
    assert not (out / "base" / files.METRICS_JSON).exists() and (out / "base" / files.CHECKPOINT).is_file()
    summary = json.loads((out / files.RUN_JSON).read_text())
    assert summary["base"]["epochs_run"] is None and summary["slim"]["epochs_run"] == 1
    assert summary["outputs"]["export"].endswith(".onnx") and (tmp_path / summary["outputs"]["export"]).is_file()
    result = MlflowResult.model_validate_json((out / files.MLFLOW_FOLDER / files.MLFLOW_JSON).read_text())
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(result.run_id)
    assert run.data.params["base.trained_here"] == "False" and "train.epochs" not in run.data.params
    assert run.data.params["architecture"] == "smallcnn" and run.data.params["cut_point_index"] == "1"
    slim = client.get_model_version(registered, result.models[1].version)
    assert slim.tags[PARENT_TAG] == result.models[0].version
