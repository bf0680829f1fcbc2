"""How the Python API shows progress when it is given no reporter: a tqdm bar per stage in a notebook or on a
terminal (``tqdm.auto``), plain lines on stderr when that is a log file or a pipe, nothing with ``progress=False``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from layercut.stages.progress import SILENT, PlainLines, Reporter


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where tqdm.auto draws widgets)."""
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


@contextmanager
def tqdm_bars() -> Iterator[Reporter]:
    """A Reporter drawing one tqdm bar per stage (0–100 %, the stage's message beside it)."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}
    current: list[str] = []

    def callback(stage: str, fraction: float, message: str) -> None:
        if not current or current[-1] != stage:
            if current:  # a new stage means the earlier one is done
                done = bars[current[-1]]
                done.n = 100
                done.close()
            bars[stage] = tqdm(
                total=100, desc=f"{stage:<9}", unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}"
            )
            current.append(stage)
        bar = bars[stage]
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message[:80], refresh=False)
        bar.refresh()

    try:
        yield Reporter(callback=callback)
    except BaseException:
        if current:
            bars[current[-1]].close()
        raise
    if current:
        last = bars[current[-1]]
        last.n = 100
        last.close()


@contextmanager
def shown(reporter: Reporter | None, progress: bool = True) -> Iterator[Reporter]:
    """The reporter a Python API call uses: the caller's; else bars (notebook, terminal) or plain lines (a log),
    unless ``progress`` is False."""
    if reporter is not None:
        yield reporter
    elif not progress:
        yield SILENT
    elif in_notebook() or sys.stderr.isatty():
        with tqdm_bars() as bars:
            yield bars
    else:
        with PlainLines(sys.stderr) as lines:
            yield Reporter(callback=lines)
