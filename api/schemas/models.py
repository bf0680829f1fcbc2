from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from layercut.api.schemas.common import UtcDateTime
from layercut.contracts.spec import CutPointRef, ModelSpec

ImportSpec = ModelSpec
"""The spec of an imported model: the same model as the one in every checkpoint's header (one declaration)."""


class ModelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
                    "architecture": "vgg11",
                    "classes": ["brick", "grass", "gravel"],
                    "image_size": 64,
                    "params": 9220931,
                    "trained": True,
                    "metrics": {"test_accuracy": 0.97},
                    "cut_point": None,
                    "source": "job",
                    "job_id": "6f1c2b8a-5e4d-4c3b-a291-0f8e7d6c5b4a",
                    "dataset_id": None,
                    "parent_id": None,
                    "created_at": "2025-01-01T12:00:00Z",
                    "checkpoint_url": "http://localhost:8000/v1/models/7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f/checkpoint",
                }
            ]
        }
    )

    id: uuid.UUID
    architecture: str
    classes: list[Any]
    image_size: int
    params: int = Field(description="number of parameters")
    trained: bool
    metrics: dict[str, Any]
    cut_point: CutPointRef | None = Field(description="set for slim models: the base model's cut point they end at")
    source: str = Field(description="job | import")
    job_id: uuid.UUID | None
    dataset_id: uuid.UUID | None
    parent_id: uuid.UUID | None
    created_at: UtcDateTime
    checkpoint_url: str
