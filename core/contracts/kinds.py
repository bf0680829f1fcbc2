"""The stage kinds a job can be, the queue each runs on, and the Celery task that runs it: declared once."""

from __future__ import annotations

from typing import Literal, get_args

StageKind = Literal["train", "analyze", "truncate", "retrain", "compare", "explain"]
"""One stage of the pipeline, run as one job."""

STAGE_KINDS: tuple[StageKind, ...] = get_args(StageKind)

MODEL_MAKING_KINDS: tuple[StageKind, ...] = ("train", "truncate", "retrain")
"""The kinds whose job produces a model version (a checkpoint)."""

QUEUES: dict[StageKind, str] = {
    "train": "gpu",
    "analyze": "gpu",
    "truncate": "cpu",
    "retrain": "gpu",
    "compare": "gpu",
    "explain": "gpu",
}
"""The Celery queue of each kind: everything that runs a network on images needs a GPU worker."""

REAP_TASK = "layercut.reap"
"""The Celery task that re-queues jobs whose worker died and re-sends jobs the broker lost."""


def task_name(kind: StageKind) -> str:
    """The Celery task that runs a job of ``kind`` (the API sends by name, never importing the worker)."""
    return f"layercut.{kind}"
