"""Progress reporting and cooperative cancellation shared by every stage.

A stage takes a ``Reporter``; the command line turns its updates into progress bars and the
worker writes them to the job row. ``Reporter.update`` raises ``Cancelled`` when the caller's
cancellation check says so, which makes every progress update a cancellation point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from layercut.contracts.errors import Cancelled


class ProgressCallback(Protocol):
    def __call__(self, stage: str, fraction: float, message: str) -> None: ...


@dataclass
class Reporter:
    """Forwards ``(stage, fraction, message)`` updates and checks for cancellation."""

    callback: ProgressCallback | None = None
    should_cancel: Callable[[], bool] | None = None

    def update(self, stage: str, fraction: float, message: str = "") -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled(f"cancelled during {stage}")
        if self.callback is not None:
            self.callback(stage, min(max(float(fraction), 0.0), 1.0), message)

    def scaled(self, start: float, end: float) -> Reporter:
        """A reporter whose 0..1 maps to ``start..end`` of this one (for stages inside a pipeline)."""
        parent = self

        def forward(stage: str, fraction: float, message: str) -> None:
            if parent.callback is not None:
                parent.callback(stage, start + (end - start) * fraction, message)

        return Reporter(callback=forward, should_cancel=self.should_cancel)


SILENT = Reporter()
