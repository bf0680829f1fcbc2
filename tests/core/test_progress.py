"""Progress where no bar can be drawn: ``PlainLines`` (a log file, CI) and the Python API's default display."""

from __future__ import annotations

import io
import time

import pytest

import layercut
from layercut.progress_display import shown
from layercut.stages.progress import SILENT, PlainLines, Reporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_a_line_per_stage_then_at_most_one_every_few_seconds() -> None:
    """A stage's first update and its end always print; updates in between print at most every ``every`` s, with
    the percent, the elapsed time and an ETA from the stage's own pace."""
    clock, out = Clock(), io.StringIO()
    lines = PlainLines(out, every=5.0, heartbeat=1e9, clock=clock)
    lines("train", 0.0, "epoch 1/4")
    for step in range(1, 10):  # one update a second: only the one 5 s after the last line prints
        clock.now += 1
        lines("train", step / 20, f"batch {step}")
    clock.now += 1
    lines("train", 1.0, "epoch 4/4")
    lines("analyze", 0.2, "gbp")
    printed = out.getvalue().splitlines()
    assert printed == [
        "[    0s] train          0.0%  epoch 1/4",
        "[    5s] train         25.0%  ETA 15s  batch 5",  # 5 s for 25 %: 15 s to go
        "[   10s] train        100.0%  epoch 4/4",
        "[   10s] analyze       20.0%  gbp",
    ]


def test_plain_lines_close_an_unfinished_stage_when_the_next_starts_and_at_the_end() -> None:
    clock, out = Clock(), io.StringIO()
    with PlainLines(out, clock=clock) as lines:
        lines("data", 0.5, "decoding")
        lines("train", 0.0, "epoch 1")
    assert out.getvalue().splitlines() == [
        "[    0s] data          50.0%  decoding",
        "[    0s] data         100.0%  done",
        "[    0s] train          0.0%  epoch 1",
        "[    0s] train        100.0%  done",
    ]


def test_plain_lines_repeat_the_last_line_while_a_stage_is_silent() -> None:
    """A long step that reports nothing (one slow epoch) still shows a line every ``heartbeat`` seconds."""
    out = io.StringIO()
    with PlainLines(out, heartbeat=0.2) as lines:
        lines("train", 0.3, "epoch 2/5")
        time.sleep(0.9)
    printed = out.getvalue().splitlines()
    assert printed[0].endswith("train         30.0%  epoch 2/5")
    still = [line for line in printed if line.endswith("epoch 2/5 (still working)")]
    assert 2 <= len(still) <= 6, printed


def test_the_python_api_shows_progress_unless_told_not_to(capsys) -> None:
    """Without a reporter, a call shows its progress (plain lines on stderr here, where stderr is not a terminal);
    ``progress=False`` is silent; a reporter given is used as it is."""
    layercut.load_data("textures", image_size=32)
    err = capsys.readouterr().err
    assert "data" in err and "100.0%" in err and "loaded textures" in err
    layercut.load_data("textures", image_size=32, progress=False)
    assert capsys.readouterr().err == ""
    seen: list[str] = []
    layercut.load_data("textures", image_size=32, reporter=Reporter(callback=lambda s, f, m: seen.append(s)))
    assert seen and set(seen) == {"data"} and capsys.readouterr().err == ""


def test_shown_passes_a_given_reporter_through_and_draws_bars_on_a_terminal(monkeypatch) -> None:
    given = Reporter()
    with shown(given) as reporter:
        assert reporter is given
    with shown(None, progress=False) as reporter:
        assert reporter is SILENT
    drawn = io.StringIO()
    monkeypatch.setattr("sys.stderr", drawn)
    monkeypatch.setattr(drawn, "isatty", lambda: True, raising=False)
    with shown(None) as reporter:
        reporter.update("train", 0.5, "epoch 1/2")
        reporter.update("analyze", 1.0, "done")
    text = drawn.getvalue()
    assert "train" in text and "analyze" in text and "100%" in text and "\r" in text  # tqdm's bars


@pytest.mark.parametrize("fraction", [0.0, 0.01])
def test_plain_lines_give_no_eta_before_the_stage_has_moved(fraction: float) -> None:
    clock, out = Clock(), io.StringIO()
    lines = PlainLines(out, clock=clock)
    lines("train", 0.0, "")
    clock.now += 6
    lines("train", fraction, "slow start")
    assert "ETA" not in out.getvalue()


def test_plain_lines_say_still_working_only_when_nothing_moved() -> None:
    """A stage that keeps reporting (faster than lines are written) gets its latest state on the heartbeat, not
    "(still working)"."""
    out = io.StringIO()
    with PlainLines(out, every=1e9, heartbeat=0.2) as lines:
        for step in range(12):
            lines("train", step / 20, f"batch {step}")
            time.sleep(0.05)
    printed = out.getvalue().splitlines()
    assert len(printed) >= 3 and not any("still working" in line for line in printed), printed
