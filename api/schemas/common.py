from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first. Pass ``next_cursor`` as ``cursor`` for the next page; null at the end."""

    items: list[T]
    next_cursor: str | None = Field(None, description="opaque; null when this is the last page")


LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"
MAX_LABELS = 20
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(
        max_length=MAX_LABELS,
        description=f"up to {MAX_LABELS} key=value labels (keys: letters, digits, . _ / -; values up to 200 "
        "characters) to find this again with `?label=key=value`",
        examples=[{"team": "vision", "ticket": "ML-42"}],
    ),
]


def _aware_utc(value: datetime) -> datetime:
    """A time as UTC with its offset: the database may hand back naive UTC times (SQLite, timestamp columns)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


UtcDateTime = Annotated[datetime, AfterValidator(_aware_utc)]
"""Every time the API answers with: ISO 8601 in UTC, always with its offset (…Z), so clients can compare them."""


JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
"""A job's (and a pipeline's) status; succeeded, failed and cancelled are final."""
