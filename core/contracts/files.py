"""The names of the files each stage writes, and the folders of a run (``layercut run --out DIR``): declared once.

A job of the service writes the files of its stage into ``ARTIFACT_ROOT/<tenant>/<job id>/``; a run on one
machine writes each stage into its own folder of the run (``RUN_FOLDERS``).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal, get_args

CHECKPOINT = "model.safetensors"
"""The trained (or, for truncate, the untrained slim) model: weights with the spec in the header."""
INITIAL_CHECKPOINT = "initial.safetensors"
"""In a run folder, the slim model as cut, before retraining (beside the retrained ``model.safetensors``)."""
METRICS_JSON = "metrics.json"
ANALYSIS_JSON = "analysis.json"
GBP_MAPS_NPZ = "gbp_maps.npz"
TRUNCATE_JSON = "truncate.json"
COMPARE_JSON = "compare.json"
EXPLAIN_JSON = "explain.json"
EXPORT_JSON = "export.json"
"""Beside an exported model (``layercut export``): its format, checksum, parity with torch and CPU latency."""
SELECT_JSON = "select.json"
SWEEP_JSON = "sweep.json"
IMPORT_JSON = "import.json"
TRADE_OFF_PNG = "trade_off.png"
"""A select or sweep folder's chart: accuracy against MACs and parameters, one point per retrained cut point."""
DEPTH_PROBES_PNG = "depth_probes.png"
"""An analysis folder's chart of the probe curve beside the SSIM cut curve."""
CANDIDATES_FOLDER = "candidates"
"""Inside a select or sweep folder: one sub-folder per retrained candidate (``cut-05-layer3.0``)."""
RUN_JSON = "run.json"
MLFLOW_FOLDER = "mlflow"
"""In a run folder logged to MLflow: mlflow.json and the ONNX files registered (``base.onnx``, ``slim.onnx``)."""
MLFLOW_JSON = "mlflow.json"
IMPORTS_FOLDER = "imports"
"""Under a tenant's folder: the weights uploaded for import jobs, one folder per job, removed once imported."""
WeightSuffix = Literal[".safetensors", ".pt", ".pth", ".bin", ".ckpt", ""]
"""File name endings an uploaded weights file keeps (anything else is stored without one)."""
WEIGHT_SUFFIXES: tuple[str, ...] = get_args(WeightSuffix)


def weight_suffix(filename: str | None) -> WeightSuffix:
    """The ending an uploaded weights file keeps: its own when it is one of ``WEIGHT_SUFFIXES``, else none."""
    suffix = PurePath(filename or "").suffix.lower()
    return next((s for s in get_args(WeightSuffix) if s and s == suffix), "")


def import_upload(tenant: str, job_id: object, suffix: str) -> str:
    """Where, relative to the artifact root, the weights uploaded for import job ``job_id`` are kept."""
    return f"{tenant}/{IMPORTS_FOLDER}/{job_id}/weights{suffix if suffix in WEIGHT_SUFFIXES else ''}"


REPORT_HTML = "report.html"

RESULT_JSON: dict[str, str] = {
    "train": METRICS_JSON,
    "retrain": METRICS_JSON,
    "analyze": ANALYSIS_JSON,
    "truncate": TRUNCATE_JSON,
    "compare": COMPARE_JSON,
    "explain": EXPLAIN_JSON,
    "select": SELECT_JSON,
    "sweep_plan": "sweep_plan.json",
    "sweep_cut": METRICS_JSON,
    "sweep": SWEEP_JSON,
    "import": IMPORT_JSON,
    "export": EXPORT_JSON,
    "mlflow": f"{MLFLOW_FOLDER}/{MLFLOW_JSON}",
}
"""The JSON file in which each stage records its result."""

ArtifactKind = Literal["checkpoint", "metrics", "analysis", "maps", "image", "report", "other"]

ARTIFACT_KINDS: dict[str, ArtifactKind] = {
    METRICS_JSON: "metrics",
    ANALYSIS_JSON: "analysis",
    COMPARE_JSON: "report",
    TRUNCATE_JSON: "report",
    SELECT_JSON: "report",
    SWEEP_JSON: "report",
    IMPORT_JSON: "report",
    GBP_MAPS_NPZ: "maps",
}
"""Artifact kinds by file name (others go by extension)."""

RUN_FOLDERS: dict[str, str] = {
    "train": "base",
    "analyze": "analysis",
    "truncate": "slim",
    "retrain": "slim",
    "select": "select",
    "sweep_plan": "sweep",
    "sweep_cut": "sweep",
    "sweep": "sweep",
    "compare": "compare",
    "explain": "explain",
    "import": "imported",
    "export": "export",
    "mlflow": "mlflow",
}
"""The folder of each stage inside a run folder (truncate and retrain share ``slim/``; the auto cut's search
writes ``select/`` and moves its chosen model's folder to ``slim/``)."""
