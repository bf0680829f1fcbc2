from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from layercut.api.schemas.common import UtcDateTime


class ArtifactOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0d9c3f8e-2b7a-4c1e-9f1a-3c5b6d7e8f90",
                    "job_id": "6f1c2b8a-5e4d-4c3b-a291-0f8e7d6c5b4a",
                    "name": "metrics.json",
                    "kind": "metrics",
                    "bytes": 1832,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "content_type": "application/json",
                    "created_at": "2025-01-01T12:00:00Z",
                    "download_url": "/v1/artifacts/0d9c3f8e-2b7a-4c1e-9f1a-3c5b6d7e8f90",
                }
            ]
        }
    )

    id: uuid.UUID
    job_id: uuid.UUID
    name: str = Field(description="file name")
    kind: str = Field(description="checkpoint | metrics | analysis | maps | image | report | other")
    bytes: int
    sha256: str
    content_type: str
    created_at: UtcDateTime
    download_url: str = Field(
        description="where to GET the file: the server's LAYERCUT_PUBLIC_URL + /v1/artifacts/{id}, or that path alone "
        "(relative to the API) when it is unset"
    )
