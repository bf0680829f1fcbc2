from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first. Pass ``next_cursor`` as ``cursor`` for the next page; null at the end."""

    items: list[T]
    next_cursor: str | None = Field(None, description="opaque; null when this is the last page")
