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
    ArchitectureName,
    CompareConfig,
    ExplainConfig,
    TrainConfig,
    TruncateConfig,
)


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
    arch: ArchitectureName = Field("vgg11", description="architecture")
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
    truncate: TruncateConfig = Field(default_factory=TruncateConfig)
    analysis_job: uuid.UUID | None = Field(None, description="the analyze job whose knee to cut at (for cut='knee')")


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


JobParams = Annotated[
    Union[TrainParams, AnalyzeParams, TruncateParams, RetrainParams, CompareParams, ExplainParams],
    Field(discriminator="kind"),
]
