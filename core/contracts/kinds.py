"""The stage kinds a job can be, the queue each runs on, and the Celery task that runs it: declared once."""

from __future__ import annotations

from typing import Literal, get_args

StageKind = Literal[
    "train",
    "analyze",
    "truncate",
    "retrain",
    "select",
    "sweep_plan",
    "sweep_cut",
    "sweep",
    "compare",
    "explain",
    "import",
    "export",
    "mlflow",
]
"""One stage of the pipeline, run as one job. A sweep in the service fans out: ``sweep_plan`` adds one
``sweep_cut`` job per cut point (run in parallel by as many workers as there are) and a ``sweep`` job that gathers
them into sweep.json and its chart. An ``import`` job checks a model trained elsewhere (uploaded through
``POST /v1/models/import``) against its architecture and writes it as a checkpoint. An ``export`` job writes a model as a deployable file (ONNX, TorchScript or an ExportedProgram), checked
against torch and timed on the CPU. An ``mlflow`` job, the last step of a pipeline that asks for it, logs the
pipeline's run to the service's MLflow tracking server and registers base and slim as ONNX model versions."""

STAGE_KINDS: tuple[StageKind, ...] = get_args(StageKind)

MODEL_MAKING_KINDS: tuple[StageKind, ...] = ("train", "truncate", "retrain", "select", "sweep_cut", "import")
"""The kinds whose job produces a model version (a checkpoint)."""

QUEUES: dict[StageKind, str] = {
    "train": "gpu",
    "analyze": "gpu",
    "truncate": "cpu",
    "retrain": "gpu",
    "select": "gpu",
    "sweep_plan": "gpu",
    "sweep_cut": "gpu",
    "sweep": "cpu",
    "compare": "gpu",
    "explain": "gpu",
    "import": "cpu",
    "export": "cpu",
    "mlflow": "cpu",
}
"""The Celery queue of each kind: everything that runs a network on images needs a GPU worker."""

REAP_TASK = "layercut.reap"
"""The Celery task that re-queues jobs whose worker died and re-sends jobs the broker lost."""


def task_name(kind: StageKind) -> str:
    """The Celery task that runs a job of ``kind`` (the API sends by name, never importing the worker)."""
    return f"layercut.{kind}"
