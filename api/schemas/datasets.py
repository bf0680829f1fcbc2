from __future__ import annotations

import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from layercut.api.schemas.common import UtcDateTime
from layercut.contracts.sources import BuiltinDataset

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class FolderDatasetCreate(BaseModel):
    """A folder on the server, under one of the configured dataset roots (LAYERCUT_DATASET_ROOTS)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"kind": "folder", "path": "/data/datasets/flowers", "name": "flowers"}]},
    )
    kind: Literal["folder"]
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="absolute path; symlinks are resolved and the result must lie under a dataset root",
    )
    name: Name | None = Field(None, description="default: the folder's name")


class BuiltinDatasetCreate(BaseModel):
    """One of the offline sets that ship with layercut."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "builtin", "builtin": "textures"}]}
    )
    kind: Literal["builtin"]
    builtin: BuiltinDataset
    name: Name | None = Field(None, description="default: the builtin's name")


DatasetCreate = Annotated[Union[FolderDatasetCreate, BuiltinDatasetCreate], Field(discriminator="kind")]


class DatasetOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "2b9f6a1e-8c3d-4e5f-9a0b-1c2d3e4f5a6b",
                    "name": "flowers",
                    "kind": "folder",
                    "classes": ["daisy", "rose", "tulip"],
                    "counts": {
                        "train": {"daisy": 120, "rose": 110, "tulip": 130},
                        "val": {"daisy": 20, "rose": 20, "tulip": 20},
                    },
                    "total_images": 420,
                    "layout": "pre-split (train, val)",
                    "warnings": [],
                    "created_at": "2025-01-01T12:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    name: str
    kind: str = Field(description="folder | upload | builtin")
    classes: list[str]
    counts: dict[str, dict[str, int]] = Field(
        description="images per split, per class ('all' when the data is not split)"
    )
    total_images: int
    layout: str | None = None
    warnings: list[str] = Field(default_factory=list)
    created_at: UtcDateTime
