"""A progress bar per stage on the terminal (stderr), or plain lines in a log, driven by the stages' Reporter
updates."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from layercut.cli.output import err_console
from layercut.stages.progress import PlainLines, Reporter


@contextmanager
def stage_bars(enabled: bool = True) -> Iterator[Reporter]:
    """Yield a Reporter that draws one bar per stage name as the stage reports progress on a terminal, or writes
    plain lines (``PlainLines``: never silent for more than a few seconds) when stderr is a file or a pipe."""
    if not enabled:
        yield Reporter()
        return
    if not err_console.is_terminal:
        with PlainLines(sys.stderr) as lines:
            yield Reporter(callback=lines)
        return
    progress = Progress(
        TextColumn("[bold]{task.fields[stage]:<9}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def callback(stage: str, fraction: float, message: str) -> None:
        if stage not in tasks:
            for other in tasks.values():  # a new stage means the earlier ones are done
                progress.update(other, completed=1000)
            tasks[stage] = progress.add_task(message, total=1000, stage=stage)
        progress.update(tasks[stage], completed=int(fraction * 1000), description=message)

    with progress:
        yield Reporter(callback=callback)
        for task in tasks.values():
            progress.update(task, completed=1000)
