"""The model spec: everything needed to rebuild a model and feed it images, stored in its checkpoint's header.

A layercut checkpoint is one safetensors file whose ``__metadata__[SPEC_KEY]`` holds this spec as JSON, so a
checkpoint is readable by any safetensors tool and rebuilding it never unpickles anything.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from layercut.contracts.configs import architecture_problem

SPEC_KEY = "layercut.spec"
"""The safetensors header key (in ``__metadata__``) that holds the spec's JSON."""
FORMAT_VERSION = 1


class CutPointRef(BaseModel):
    """A cut point of a base model: its index among the cut points and its module name."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=200)


class ModelSpec(BaseModel):
    """Everything needed to rebuild a model and feed it images."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "architecture": "resnet18",
                    "classes": ["cat", "dog"],
                    "image_size": 64,
                    "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225],
                }
            ]
        },
    )
    format_version: int = Field(FORMAT_VERSION, ge=1, le=FORMAT_VERSION)
    architecture: str
    classes: list[str] = Field(min_length=2, max_length=100_000)
    image_size: int = Field(ge=32, le=1024)
    source_channels: int = Field(3, ge=1, le=4)
    mean: list[float] = Field(min_length=1, max_length=4)
    std: list[float] = Field(min_length=1, max_length=4)
    pretrained: bool = False
    cut_point: CutPointRef | None = Field(None, description="set for slim models: the base cut point they end at")
    head_dropout: float | None = Field(None, ge=0, lt=1)
    data: dict[str, Any] | None = Field(None, description="the DataConfig the model was trained on, for later stages")

    @field_validator("architecture")
    @classmethod
    def _known(cls, value: str) -> str:
        problem = architecture_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or any(not c for c in value):
            raise ValueError("class names must be distinct and non-empty")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(not (s > 0) for s in value):
            raise ValueError("std values must be positive")
        return value

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_slim(self) -> bool:
        return self.cut_point is not None
