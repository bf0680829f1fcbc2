"""Progress reporting and cooperative cancellation shared by every stage.

A stage takes a ``Reporter``; the command line turns its updates into progress bars and the
worker writes them to the job row. ``Reporter.update`` raises ``Cancelled`` when the caller's
cancellation check says so, which makes every progress update a cancellation point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

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

    def check(self, stage: str) -> None:
        """A cancellation point without a progress update (for tight loops: ``should_cancel`` is throttled)."""
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled(f"cancelled during {stage}")

    def scaled(self, start: float, end: float) -> Reporter:
        """A reporter whose 0..1 maps to ``start..end`` of this one (for stages inside a pipeline)."""
        parent = self

        def forward(stage: str, fraction: float, message: str) -> None:
            if parent.callback is not None:
                parent.callback(stage, start + (end - start) * fraction, message)

        return Reporter(callback=forward, should_cancel=self.should_cancel)


SILENT = Reporter()


def interleaved(parent: Reporter, weights: tuple[float, ...]) -> list[Reporter]:
    """Reporters for parts of one task whose work alternates (a batch of one, a batch of the other, …): each
    reports its own 0..1, and ``parent`` sees the weighted sum, so its fraction only grows. Weights sum to 1."""
    fractions = [0.0] * len(weights)

    def part(k: int) -> Reporter:
        def forward(stage: str, fraction: float, message: str) -> None:
            fractions[k] = fraction
            if parent.callback is not None:
                parent.callback(stage, sum(w * f for w, f in zip(weights, fractions, strict=True)), message)

        return Reporter(callback=forward, should_cancel=parent.should_cancel)

    return [part(k) for k in range(len(weights))]


def _duration(seconds: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class PlainLines:
    """Progress as plain lines for a log file or CI, where bars would only be dumped at the end: a line when a
    stage starts, then at most one every ``every`` seconds (stage, percent, elapsed, ETA, message), and while a
    stage says nothing, the last line again after ``heartbeat`` seconds, so the output is never silent for longer.

    A callback for ``Reporter``; use it as a context manager (``with PlainLines(sys.stderr) as lines:``) so that
    the heartbeat thread runs and a last line closes the stage.
    """

    def __init__(
        self,
        stream: TextIO,
        every: float = 5.0,
        heartbeat: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.every, self.heartbeat, self.clock = stream, every, heartbeat, clock
        self.started = clock()
        self.stage: str | None = None
        self.stage_started = self.started
        self.fraction, self.message = 0.0, ""
        self.last_line = float("-inf")
        self.news = False  # an update arrived since the last line
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        with self.lock:
            now = self.clock()
            new_stage = stage != self.stage
            if new_stage and self.stage is not None and self.fraction < 1.0:
                self.fraction = 1.0  # a new stage means the earlier one is done
                self._write(now, "done")
            if new_stage:
                self.stage, self.stage_started = stage, now
            finished = fraction >= 1.0 and self.fraction < 1.0
            self.fraction, self.message, self.news = fraction, message, True
            if new_stage or finished or now - self.last_line >= self.every:
                self._write(now)

    def _write(self, now: float, note: str = "") -> None:
        elapsed = now - self.stage_started
        eta = ""
        if 0.02 <= self.fraction < 1.0 and elapsed > 0:
            eta = f"  ETA {_duration(elapsed * (1 - self.fraction) / self.fraction)}"
        text = note or self.message
        line = f"[{_duration(now - self.started):>6}] {self.stage:<12} {100 * self.fraction:5.1f}%{eta}  {text}"
        try:
            self.stream.write(line.rstrip() + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream never stops the work
            pass
        self.last_line, self.news = now, False

    def _beat(self) -> None:
        while not self.stopped.wait(min(1.0, self.heartbeat / 4)):
            with self.lock:
                now = self.clock()
                if self.stage is not None and now - self.last_line >= self.heartbeat:
                    # news not printed yet (throttled): print it; none at all: say the stage is still at work
                    still = "" if self.news else (self.message + " " if self.message else "") + "(still working)"
                    self._write(now, still)

    def __enter__(self) -> PlainLines:
        self.thread = threading.Thread(target=self._beat, name="layercut-progress-lines", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        with self.lock:
            if self.stage is not None and self.fraction < 1.0 and exc_info[0] is None:
                self.fraction = 1.0
                self._write(self.clock(), "done")
