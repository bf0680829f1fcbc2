"""Logging a finished run to MLflow: its parameters, both models' metrics (the final ones and every epoch's), the
report, pictures and JSON records as the run's artifacts, and base and slim registered as ONNX versions of one
registered model (with a model signature), slim tagged with its parent version and its cut point.

MLflow is the optional extra ``layercut[mlflow]``; nothing here runs unless a tracking URI is given.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from layercut.contracts import files
from layercut.contracts.configs import ExportConfig, MlflowConfig
from layercut.contracts.errors import LayercutError
from layercut.contracts.results import (
    ExportResult,
    MlflowModelVersion,
    MlflowResult,
    RetrainResult,
    RunSummary,
    TrainResult,
)
from layercut.stages.data import Dataset
from layercut.stages.export import export_stage
from layercut.stages.progress import SILENT, Reporter
from layercut.stages.stages import write_result

MISSING = "MLflow is not installed here: pip install 'layercut[mlflow]' (or leave out --mlflow)"
LOGGED_SUFFIXES = (".html", ".png", ".json", ".csv", ".md")
"""What of a run folder becomes the MLflow run's artifacts (checkpoints and GBP maps stay in the folder; the ONNX
files are the registered models' own)."""
ROLE_TAG, PARENT_TAG, CUT_TAG, CUT_INDEX_TAG, CHOSEN_BY_TAG = (
    "layercut.role",
    "layercut.parent_version",
    "layercut.cut_point",
    "layercut.cut_point_index",
    "layercut.chosen_by",
)
ONNX_CHECK = ExportConfig(format="onnx", parity_images=32, latency_batches=[1], latency_repeats=3, latency_warmup=1)
"""The ONNX export made for the registry: checked against torch on the test images, timed briefly."""


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise LayercutError(MISSING) from None
    return mlflow


def public_uri(uri: str) -> str:
    """The tracking URI without a user name or password (what is shown and recorded)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def check_tracking(config: MlflowConfig, timeout: float = 5.0) -> None:
    """Before any work: MLflow is installed and an HTTP tracking server answers its health check, so that a run
    is never trained only to find it cannot be logged."""
    _mlflow()
    if not config.tracking_uri.startswith(("http://", "https://")):
        return
    url = config.tracking_uri.rstrip("/") + "/health"
    try:
        answer = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise LayercutError(
            f"the MLflow tracking server {public_uri(config.tracking_uri)} does not answer ({type(exc).__name__}): "
            "start it, or fix --mlflow / LAYERCUT_MLFLOW_TRACKING_URI"
        ) from None
    if answer.status_code != 200:
        raise LayercutError(
            f"{public_uri(config.tracking_uri)} answered {answer.status_code} to /health: is it an MLflow "
            "tracking server?"
        )


@contextmanager
def tracking_at(mlflow: Any, uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set for the block, then put back."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def run_params(summary: RunSummary, base: TrainResult | None, slim: RetrainResult) -> dict[str, str]:
    """The run's parameters as MLflow keeps them (text); a base model trained elsewhere has no training settings."""
    params: dict[str, Any] = {
        "architecture": summary.architecture,
        "data.source": summary.data.source,
        "data.classes": len(summary.data.classes),
        "data.image_size": summary.data.image_size,
        "cut_point": summary.cut_point.name,
        "cut_point_index": summary.cut_point.index,
        "cut_points": summary.cut_point.of,
        "cut.chosen_by": summary.cut_point.chosen_by,
        "base.trained_here": base is not None,
    }
    trainings = (("train", base), ("retrain", slim)) if base is not None else (("retrain", slim),)
    for role, result in trainings:
        for key, value in result.config.model_dump(mode="json").items():
            if value is not None and not isinstance(value, (dict, list)):
                params[f"{role}.{key}"] = value
    if summary.selection is not None:
        params["select.within_budget"] = summary.selection.within_budget
    return {key: str(value)[:6000] for key, value in params.items()}


def run_metrics(summary: RunSummary) -> dict[str, float]:
    """The run's final numbers: both models' accuracy, size and latency, and what the cut saved."""
    metrics: dict[str, float] = {}
    for role, brief in (("base", summary.base), ("slim", summary.slim)):
        for key in ("accuracy", "macro_f1", "params", "macs", "checkpoint_bytes", "best_epoch", "epochs_run"):
            value = getattr(brief, key)
            if value is not None:
                metrics[f"{role}.{key}"] = float(value)
        for label, ms in brief.latency_ms.items():
            metrics[f"{role}.latency_ms.{label}"] = float(ms)
    for key, value in summary.comparison.reduction_percent.model_dump().items():
        if value is not None:
            metrics[f"reduction_percent.{key}"] = float(value)
    metrics["accuracy_drop_points"] = 100.0 * (summary.base.accuracy - summary.slim.accuracy)
    return metrics


def log_history(mlflow: Any, role: str, result: TrainResult | RetrainResult) -> None:
    """Every epoch's numbers, as metric histories stepped by epoch."""
    for row in result.history:
        values = {
            f"{role}.{key}": float(value)
            for key, value in row.model_dump().items()
            if key != "epoch" and value is not None
        }
        mlflow.log_metrics(values, step=row.epoch)


def stage_artifacts(run_folder: Path, staging: Path) -> int:
    """Copy what a run shows (report, pictures, JSON records) into ``staging``, in the run's layout; returns how
    many files."""
    count = 0
    for path in sorted(run_folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in LOGGED_SUFFIXES:
            target = staging / path.relative_to(run_folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            count += 1
    return count


def signature(mlflow: Any, export: ExportResult) -> Any:
    """The ONNX model's signature: float32 images (dynamic batch) in, one logit per class out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    shape = (-1, *(int(d) for d in export.input_shape[1:]))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape, export.input_name)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(export.classes)), export.output_name)]),
    )


def register(mlflow: Any, role: str, export: ExportResult, name: str) -> MlflowModelVersion:
    """Log one ONNX file as a model of the active run and register it as a new version of ``name``."""
    import onnx

    info = mlflow.onnx.log_model(
        onnx.load(export.file),
        name=f"{role}-onnx",  # beside the run folder's own base/ and slim/ artifacts, not inside them
        signature=signature(mlflow, export),
        registered_model_name=name,
        metadata={"classes": export.classes, "mean": export.mean, "std": export.std, "role": role},
    )
    version = str(info.registered_model_version)
    return MlflowModelVersion(
        role=role,  # type: ignore[arg-type]
        version=version,
        model_uri=f"models:/{name}/{version}",
        onnx_bytes=export.bytes,
        parity_max_abs_diff=export.parity.max_abs_diff,
    )


def publish_run(
    run_folder: str | Path,
    config: MlflowConfig,
    dataset: Dataset | None = None,
    reporter: Reporter = SILENT,
    run_name: str | None = None,
) -> MlflowResult:
    """Log a finished run folder (run.json, base/, slim/ …) to MLflow as run ``run_name`` (default: the folder's
    name) and register base and slim; writes ``mlflow/mlflow.json`` (and the two ONNX files beside it) into the
    folder and returns its record."""
    started = time.perf_counter()
    mlflow = _mlflow()
    out = Path(run_folder)
    summary = RunSummary.model_validate_json((out / files.RUN_JSON).read_text(encoding="utf-8"))
    trained = out / "base" / files.METRICS_JSON  # absent when the run started from a model trained elsewhere
    base = TrainResult.model_validate_json(trained.read_text(encoding="utf-8")) if trained.is_file() else None
    slim = RetrainResult.model_validate_json((out / "slim" / files.METRICS_JSON).read_text(encoding="utf-8"))
    folder = out / files.MLFLOW_FOLDER
    exports: dict[str, ExportResult] = {}
    for step, role in enumerate(("base", "slim")):
        share = reporter.scaled(0.4 * step, 0.4 * (step + 1))
        share.update("mlflow", 0.0, f"exporting the {role} model to ONNX for the registry")
        exports[role] = export_stage(
            out / role / files.CHECKPOINT, folder / role / "model.onnx", ONNX_CHECK, dataset, reporter=share
        )
    name = config.registered_model or f"layercut-{summary.architecture.replace('/', '-')}"

    reporter.update("mlflow", 0.8, f"logging the run to {public_uri(config.tracking_uri)}")
    with tracking_at(mlflow, config.tracking_uri):
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or out.resolve().name) as active:
            mlflow.log_params(run_params(summary, base, slim))
            mlflow.log_metrics(run_metrics(summary))
            if base is not None:
                log_history(mlflow, "base", base)
            log_history(mlflow, "slim", slim)
            mlflow.set_tags({"layercut.verdict": summary.verdict or "", "layercut.architecture": summary.architecture})
            with tempfile.TemporaryDirectory() as staging:
                logged = stage_artifacts(out, Path(staging))
                mlflow.log_artifacts(staging)
            versions = [register(mlflow, role, exports[role], name) for role in ("base", "slim")]
        base_version, slim_version = versions
        client.set_model_version_tag(name, base_version.version, ROLE_TAG, "base")
        for key, value in (
            (ROLE_TAG, "slim"),
            (PARENT_TAG, base_version.version),
            (CUT_TAG, summary.cut_point.name),
            (CUT_INDEX_TAG, str(summary.cut_point.index)),
            (CHOSEN_BY_TAG, summary.cut_point.chosen_by),
        ):
            client.set_model_version_tag(name, slim_version.version, key, value)
    result = MlflowResult(
        stage="mlflow",
        tracking_uri=public_uri(config.tracking_uri),
        experiment=config.experiment,
        experiment_id=str(experiment_id),
        run_id=str(active.info.run_id),
        registered_model=name,
        models=versions,
        artifacts=logged,
        seconds=time.perf_counter() - started,
    )
    write_result(folder / files.MLFLOW_JSON, result)
    reporter.update(
        "mlflow",
        1.0,
        f"logged as run {result.run_id}; {name} versions {base_version.version} (base), {slim_version.version} (slim)",
    )
    return result
