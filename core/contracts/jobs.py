"""What a job is asked to do: typed parameters per job kind (a discriminated union on ``kind``).

Pydantic only, no torch: the API validates requests with these and the worker executes them.
References to models are either an existing model version (``model_id``) or "the model that job X
produces" (``from_job``), which is how the steps of a pipeline are linked before they have run.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
from layercut.contracts.files import WeightSuffix
from layercut.contracts.kinds import StageKind
from layercut.contracts.spec import ModelSpec


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Params):
    """A model version by id, or the model a job (usually an earlier pipeline step) produces."""

    model_id: uuid.UUID | None = None
    from_job: uuid.UUID | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelRef:
        if (self.model_id is None) == (self.from_job is None):
            raise ValueError("give exactly one of model_id or from_job")
        return self


class DataParams(_Params):
    """How a registered dataset is read for a job (the dataset itself is referenced by id)."""

    dataset_id: uuid.UUID
    image_size: int = Field(64, ge=32, le=1024)
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class TrainParams(_Params):
    kind: Literal["train"] = "train"
    data: DataParams
    arch: Architecture = Field("vgg11", description="architecture: a built-in name, or timm/<name>")
    pretrained: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)


class AnalyzeParams(_Params):
    kind: Literal["analyze"] = "analyze"
    model: ModelRef
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the model was trained on")
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig)


class TruncateParams(_Params):
    kind: Literal["truncate"] = "truncate"
    model: ModelRef
    truncate: TruncateConfig = Field(default_factory=lambda: TruncateConfig(cut="knee"))
    analysis_job: uuid.UUID | None = Field(None, description="the analyze job whose knee to cut at (for cut='knee')")

    @model_validator(mode="after")
    def _not_auto(self) -> TruncateParams:
        if self.truncate.cut == "auto":
            raise ValueError(
                "truncate cannot cut 'auto' (that retrains candidates): use a select job or a pipeline, or give "
                "truncate.cut knee, a cut point index or a name"
            )
        return self


class SelectParams(_Params):
    kind: Literal["select"] = "select"
    model: ModelRef
    analysis_job: uuid.UUID = Field(description="the analyze job of this model: its depth probes and knee")
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the model was trained on")
    select: SelectConfig = Field(default_factory=SelectConfig)
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout of each candidate's new head")
    from_scratch: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig, description="how each candidate is retrained")


class SweepPlanParams(_Params):
    kind: Literal["sweep_plan"] = "sweep_plan"
    model: ModelRef
    analysis_job: uuid.UUID | None = Field(None, description="the analyze job of this model, to mark knee and probes")
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the model was trained on")
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    from_scratch: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig, description="how each slim model is retrained")


class SweepCutParams(_Params):
    kind: Literal["sweep_cut"] = "sweep_cut"
    model: ModelRef = Field(description="the base model")
    cut: int = Field(ge=0, le=10_000, description="the cut point index")
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the model was trained on")
    threshold: float = Field(ge=0, le=1, description="the validation accuracy the budget asks (a fraction)")
    probe_accuracy: float | None = Field(None, ge=0, le=1, description="the depth probe at this cut point")
    dropout: float = Field(0.2, ge=0, lt=1)
    from_scratch: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)


class SweepParams(_Params):
    kind: Literal["sweep"] = "sweep"
    plan_job: uuid.UUID = Field(description="the sweep_plan job that fanned out")
    cut_jobs: list[uuid.UUID] = Field(min_length=1, max_length=10_000, description="its sweep_cut jobs, gathered here")


FAN_OUT_KINDS = ("sweep_cut", "sweep")
"""Kinds only a running sweep_plan job creates (a client asks for a sweep through a pipeline)."""


class RetrainParams(_Params):
    kind: Literal["retrain"] = "retrain"
    model: ModelRef
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the base model was trained on")
    from_scratch: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)


class CompareParams(_Params):
    kind: Literal["compare"] = "compare"
    base: ModelRef
    slim: ModelRef
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the base model was trained on")
    compare: CompareConfig = Field(default_factory=CompareConfig)


class ExplainParams(_Params):
    kind: Literal["explain"] = "explain"
    model: ModelRef
    compare_with: ModelRef | None = Field(
        None, description="a second model (e.g. the slim one) explained on the same images, side by side"
    )
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the model was trained on")
    explain: ExplainConfig = Field(default_factory=ExplainConfig)


class ExportParams(_Params):
    kind: Literal["export"] = "export"
    model: ModelRef
    dataset_id: uuid.UUID | None = Field(
        None,
        description="whose test images the parity check runs on; default: the model's own dataset (seeded random "
        "images when it has none)",
    )
    export: ExportConfig = Field(default_factory=ExportConfig)


class ImportParams(_Params):
    """Check an uploaded weights file against the architecture its spec names and write it as a checkpoint.

    Made only by ``POST /v1/models/import``, which stores the upload where ``files.import_upload`` says."""

    kind: Literal["import"] = "import"
    spec: ModelSpec
    dataset_id: uuid.UUID | None = Field(None, description="the registered dataset the model was trained on")
    weights_name: str = Field(max_length=255, description="the uploaded file's name")
    weights_suffix: WeightSuffix = Field("", description="the ending the stored file keeps")
    weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    weights_bytes: int = Field(ge=0)


class MlflowParams(_Params):
    """Log a finished pipeline to the service's MLflow tracking server (``LAYERCUT_MLFLOW_TRACKING_URI``): the run
    the steps' results and pictures make, and base and slim registered as ONNX versions. Made only by a pipeline."""

    kind: Literal["mlflow"] = "mlflow"
    base: ModelRef = Field(description="the base model: the train step's, or the one the pipeline started from")
    dataset_id: uuid.UUID | None = Field(None, description="default: the dataset the base model was trained on")
    steps: dict[StageKind, uuid.UUID] = Field(
        max_length=20, description="the job of each earlier step of the pipeline, by its kind"
    )
    mlflow: MlflowTarget = Field(default_factory=MlflowTarget)
    select: SelectConfig = Field(
        default_factory=SelectConfig, description="the pipeline's accuracy budget (what the probe rule is judged by)"
    )

    @model_validator(mode="after")
    def _has_a_run(self) -> MlflowParams:
        missing = [kind for kind in ("analyze", "compare", "explain") if kind not in self.steps]
        if missing or not ({"select", "retrain"} & self.steps.keys()):
            raise ValueError(
                "an mlflow step logs a whole run: it needs the analyze, select (or retrain), compare and explain "
                f"steps of its pipeline; missing: {', '.join(missing) or 'select or retrain'}"
            )
        return self


JobParams = Annotated[
    Union[
        TrainParams,
        AnalyzeParams,
        TruncateParams,
        RetrainParams,
        SelectParams,
        SweepPlanParams,
        SweepCutParams,
        SweepParams,
        CompareParams,
        ExplainParams,
        ImportParams,
        ExportParams,
        MlflowParams,
    ],
    Field(discriminator="kind"),
]
