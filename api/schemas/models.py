from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.pipeline.config import ARCHITECTURE_NAMES


class CutPointRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=200)


class ImportSpec(BaseModel):
    """The fields of ``core.pipeline.checkpoint.ModelSpec`` (kept torch-free here), sent as a JSON string."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "architecture": "resnet18", "classes": ["cat", "dog"], "image_size": 64,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]})
    format_version: int = Field(1, ge=1, le=1)
    architecture: str
    classes: list[str] = Field(min_length=2, max_length=100_000)
    image_size: int = Field(ge=32, le=1024)
    source_channels: int = Field(3, ge=1, le=4)
    mean: list[float] = Field(min_length=1, max_length=4)
    std: list[float] = Field(min_length=1, max_length=4)
    pretrained: bool = False
    cut_point: CutPointRef | None = None
    head_dropout: float | None = Field(None, ge=0, lt=1)
    data: dict | None = None

    @field_validator("architecture")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ARCHITECTURE_NAMES:
            raise ValueError(f"unknown architecture {value!r}; use one of {', '.join(ARCHITECTURE_NAMES)}")
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


class ModelOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "architecture": "vgg11", "classes": ["brick", "grass", "gravel"],
        "image_size": 64, "params": 9220931, "trained": True, "metrics": {"test_accuracy": 0.97}, "cut_point": None,
        "source": "job", "job_id": "6f1c2b8a-5e4d-4c3b-a291-0f8e7d6c5b4a", "dataset_id": None, "parent_id": None,
        "created_at": "2025-01-01T12:00:00Z",
        "checkpoint_url": "http://localhost:8000/v1/models/7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f/checkpoint"}]})

    id: uuid.UUID
    architecture: str
    classes: list[Any]
    image_size: int
    params: int = Field(description="number of parameters")
    trained: bool
    metrics: dict[str, Any]
    cut_point: dict[str, Any] | None
    source: str = Field(description="job | import")
    job_id: uuid.UUID | None
    dataset_id: uuid.UUID | None
    parent_id: uuid.UUID | None
    created_at: datetime
    checkpoint_url: str
