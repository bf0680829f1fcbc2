from __future__ import annotations

import uuid
from typing import Annotated, Any, Union

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, create_model

from layercut.api.schemas.artifacts import ArtifactOut
from layercut.api.schemas.common import JobStatus, Labels, UtcDateTime
from layercut.contracts.jobs import JobParams
from layercut.contracts.kinds import StageKind
from layercut.contracts.results import RESULT_MODELS

_D = "2b9f6a1e-8c3d-4e5f-9a0b-1c2d3e4f5a6b"
_M = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
_J = "6f1c2b8a-5e4d-4c3b-a291-0f8e7d6c5b4a"

JOB_CREATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "train": {
        "summary": "train a base model on a registered dataset",
        "value": {
            "params": {
                "kind": "train",
                "data": {"dataset_id": _D, "image_size": 64},
                "arch": "vgg11",
                "train": {"epochs": 5, "batch_size": 32},
            },
            "callback_url": "https://example.com/hooks/layercut",
        },
    },
    "analyze": {
        "summary": "GBP/SSIM analysis of a model version",
        "value": {"params": {"kind": "analyze", "model": {"model_id": _M}, "analyze": {"probes_per_class": 4}}},
    },
    "truncate": {
        "summary": "cut a model at the knee an analyze job found",
        "value": {
            "params": {"kind": "truncate", "model": {"model_id": _M}, "analysis_job": _J, "truncate": {"cut": "knee"}}
        },
    },
    "retrain": {
        "summary": "retrain the model a truncate job produces",
        "value": {"params": {"kind": "retrain", "model": {"from_job": _J}, "train": {"epochs": 3}}},
    },
    "compare": {
        "summary": "compare a base and a slim model",
        "value": {"params": {"kind": "compare", "base": {"model_id": _M}, "slim": {"from_job": _J}}},
    },
}


class JobCreate(BaseModel):
    """A job: ``params`` is one of the typed parameter sets, chosen by ``params.kind``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [JOB_CREATE_EXAMPLES["train"]["value"]]})
    params: JobParams
    callback_url: AnyHttpUrl | None = Field(None, description="receives a signed POST when the job ends")
    labels: Labels = Field(default_factory=dict)


class JobError(BaseModel):
    code: str | None = Field(None, examples=["bad_data"])
    message: str | None = Field(None, examples=["class folder 'rose' has no images"])


class JobSummary(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _J,
                    "kind": "train",
                    "status": "running",
                    "stage": "train",
                    "percent": 42.5,
                    "eta_seconds": 63.0,
                    "message": "epoch 3/5",
                    "error": None,
                    "attempts": 1,
                    "pipeline_id": None,
                    "step": None,
                    "depends_on": None,
                    "cancel_requested": False,
                    "created_at": "2025-01-01T12:00:00Z",
                    "started_at": "2025-01-01T12:00:01Z",
                    "finished_at": None,
                    "updated_at": "2025-01-01T12:01:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    kind: StageKind
    status: JobStatus = Field(description="queued | running | cancelling | succeeded | failed | cancelled")
    stage: str | None
    percent: float = Field(description="progress of the current run, 0-100")
    eta_seconds: float | None
    message: str | None
    error: JobError | None = Field(description="set when the job failed")
    attempts: int
    pipeline_id: uuid.UUID | None
    step: int | None
    depends_on: uuid.UUID | None
    cancel_requested: bool
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    updated_at: UtcDateTime
    labels: dict[str, str] = Field(default_factory=dict, description="the labels given at creation")


def _result_out(kind: StageKind, model: type[BaseModel]) -> type[BaseModel]:
    """The result of a ``kind`` job as the API shows it: the stage's own result, plus the model version it made."""
    return create_model(
        f"{''.join(part.title() for part in kind.split('_'))}JobResult",
        __base__=model,
        __doc__=f"What a succeeded {kind} job produced (its stage's result; ``stage`` is the job's kind).",
        model_id=(
            uuid.UUID | None,
            Field(None, description="the model version this job made (GET /v1/models/{model_id}), if it made one"),
        ),
    )


JOB_RESULT_MODELS: dict[StageKind, type[BaseModel]] = {
    kind: _result_out(kind, model) for kind, model in RESULT_MODELS.items()
}
"""The result schema of each job kind, told apart by ``stage`` (which is the job's kind)."""

JobResult = Annotated[Union[tuple(JOB_RESULT_MODELS.values())], Field(discriminator="stage")]  # type: ignore[valid-type]
"""The typed result of any job."""


class JobMetrics(BaseModel):
    """A finished job's headline numbers, lifted from its result so a client need not know each result's shape.
    Fractions are 0-1; a number the job's kind does not make is null."""

    model_config = ConfigDict(extra="forbid")
    accuracy: float | None = Field(None, description="test accuracy (train, retrain, select; compare: the slim model)")
    macro_f1: float | None = Field(None, description="test macro F1 (train, retrain, select; compare: slim)")
    best_val_accuracy: float | None = Field(None, description="the best epoch's validation accuracy (train, retrain)")
    val_accuracy: float | None = Field(None, description="validation accuracy of the chosen slim model (select)")
    params: int | None = Field(None, description="parameters of the model this job made or measured")
    params_kept: float | None = Field(None, description="slim parameters / base parameters (truncate, select)")
    shortfall: float | None = Field(
        None, description="points of validation accuracy the chosen cut misses its budget by (select); null if kept"
    )


class JobOut(JobSummary):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **JobSummary.model_config["json_schema_extra"]["examples"][0],
                    "params": JOB_CREATE_EXAMPLES["train"]["value"]["params"],
                    "callback_url": None,
                    "result": None,
                    "metrics": None,
                    "artifacts": [],
                }
            ]
        }
    )

    params: JobParams = Field(description="what the job was asked to do, typed by ``kind``")
    callback_url: str | None
    result: JobResult | None = Field(
        description="what the job produced once it succeeded, typed by its ``stage`` (the job's kind)"
    )
    metrics: JobMetrics | None = Field(
        description="the result's headline numbers (accuracy, macro_f1, params, …) once the job has a result"
    )
    artifacts: list[ArtifactOut]


class JobLogLine(BaseModel):
    """One log line of a job, as its worker wrote it."""

    time: str | None = Field(None, description="ISO 8601 with offset, e.g. 2026-12-06T01:02:03+0000")
    level: str | None = Field(None, examples=["INFO"])
    logger: str | None = Field(None, examples=["layercut.jobs.runner"])
    message: str = Field(examples=["job started: train, attempt 1, on host:1234"])
    fields: dict[str, Any] = Field(
        default_factory=dict, description="the line's other keys: kind, status, seconds, error_code, request_id …"
    )


class JobLogs(BaseModel):
    """A page of a job's log lines, oldest first."""

    items: list[JobLogLine]
    next_offset: int | None = Field(description="pass as `offset` for the next page; null at the end so far")
