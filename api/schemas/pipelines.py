from __future__ import annotations

import uuid

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from layercut.api.schemas.common import JobStatus, Labels, UtcDateTime
from layercut.contracts.configs import (
    AnalyzeConfig,
    Architecture,
    CompareConfig,
    ExplainConfig,
    ExportConfig,
    MlflowTarget,
    SelectConfig,
    SweepConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.contracts.jobs import DataParams
from layercut.contracts.kinds import StageKind
from layercut.contracts.plan import StopAfter

_D = "2b9f6a1e-8c3d-4e5f-9a0b-1c2d3e4f5a6b"
_M = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"

PIPELINE_EXAMPLES = {
    "full": {
        "summary": "train → analyze → the auto cut (smallest slim model within 1 point) → compare → explain",
        "value": {"data": {"dataset_id": _D, "image_size": 64}, "arch": "vgg11", "train": {"epochs": 5}},
    },
    "budget_and_sweep": {
        "summary": "the auto cut within 2 points of the base, and a sweep of every second cut point",
        "value": {
            "data": {"dataset_id": _D, "image_size": 32},
            "arch": "resnet18",
            "select": {"max_drop": 2.0},
            "sweep": {"cuts": "every:2"},
        },
    },
    "knee": {
        "summary": "the paper's rule: cut at the knee of the SSIM curve (no accuracy budget)",
        "value": {"data": {"dataset_id": _D}, "arch": "vgg11", "truncate": {"cut": "knee"}},
    },
    "from_model": {
        "summary": "slim an imported model (no train step)",
        "value": {"model_id": _M, "truncate": {"cut": "knee"}, "retrain": {"epochs": 3}},
    },
    "mlflow": {
        "summary": "the whole run, logged to the service's MLflow server (base and slim registered as ONNX versions)",
        "value": {
            "data": {"dataset_id": _D, "image_size": 64},
            "arch": "resnet18",
            "mlflow": {"experiment": "slimming", "registered_model": "pets-resnet18"},
        },
    },
    "analyze_only": {
        "summary": "train and analyze, then stop",
        "value": {"data": {"dataset_id": _D}, "arch": "smallcnn", "stop_after": "analyze"},
    },
}


class PipelineCreate(BaseModel):
    """The slimming pipeline as linked jobs. Give ``data`` to train a base model first, or ``model_id`` to start
    from an existing (e.g. imported) model; with ``model_id``, ``data`` is optional and only its ``dataset_id``
    is used (default: the model's own dataset)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PIPELINE_EXAMPLES["full"]["value"]]})
    data: DataParams | None = None
    model_id: uuid.UUID | None = Field(None, description="start from this model version: no train step")
    arch: Architecture = Field("vgg11", description="architecture of the trained base: a built-in name, or timm/<name>")
    pretrained: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)
    truncate: TruncateConfig = Field(
        default_factory=TruncateConfig,
        description="where to cut: auto (default: the accuracy budget of `select`), knee, or a cut point",
    )
    select: SelectConfig = Field(
        default_factory=SelectConfig, description="the accuracy budget of the auto cut (truncate.cut = auto)"
    )
    sweep: SweepConfig | None = Field(
        None, description="also retrain a slim model at these cut points after the analysis (the trade-off chart)"
    )
    retrain: TrainConfig | None = Field(None, description="default: the same settings as train")
    from_scratch: bool = False
    compare: CompareConfig = Field(default_factory=CompareConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    export: ExportConfig | None = Field(
        None,
        description="also export the slim model as a deployable file after the comparison (its export step's "
        "artifacts: the file and export.json with the parity check and the latency)",
    )
    mlflow: MlflowTarget | None = Field(
        None,
        description="also log the run to the service's MLflow tracking server (its parameters, every epoch's "
        "metrics, the report and pictures) and register base and slim as ONNX versions of a registered model: a last "
        "`mlflow` step. Needs the whole run (stop_after explain) and a server with LAYERCUT_MLFLOW_TRACKING_URI set",
    )
    stop_after: StopAfter = Field(
        "explain", description="the last step: analyze, compare, or explain (base and slim side by side)"
    )
    callback_url: AnyHttpUrl | None = None
    labels: Labels = Field(default_factory=dict)


class PipelineStep(BaseModel):
    id: uuid.UUID
    step: int
    kind: StageKind
    status: JobStatus
    stage: str | None
    percent: float
    depends_on: uuid.UUID | None
    waits_for: list[uuid.UUID] = Field(
        default_factory=list, description="a fan-in step (a sweep's gather) waits for these steps to succeed"
    )
    error_code: str | None
    error_message: str | None


class PipelineOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                    "status": "running",
                    "stored_status": "queued",
                    "params": PIPELINE_EXAMPLES["full"]["value"],
                    "callback_url": None,
                    "created_at": "2025-01-01T12:00:00Z",
                    "updated_at": "2025-01-01T12:00:00Z",
                    "finished_at": None,
                    "steps": [
                        {
                            "id": "6f1c2b8a-5e4d-4c3b-a291-0f8e7d6c5b4a",
                            "step": 0,
                            "kind": "train",
                            "status": "running",
                            "stage": "train",
                            "percent": 40.0,
                            "depends_on": None,
                            "error_code": None,
                            "error_message": None,
                        }
                    ],
                }
            ]
        }
    )

    id: uuid.UUID
    status: JobStatus = Field(
        description="from the steps: failed if one failed, cancelled if one was cancelled, "
        "succeeded when all did, running while one runs, else queued"
    )
    stored_status: JobStatus = Field(description="the status column the job runner keeps")
    params: PipelineCreate = Field(description="the pipeline as it was asked for, defaults filled in")
    labels: dict[str, str] = Field(default_factory=dict, description="the labels given at creation")
    callback_url: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    finished_at: UtcDateTime | None
    steps: list[PipelineStep]
