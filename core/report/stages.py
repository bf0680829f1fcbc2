"""The stages a report is drawn from: what the caller says about each (``StageInput``) and what the report found.

A stage's result is read once, here (its JSON file, else the job's stored result); each section then reads the
fields it shows from ``Stage.summary``. A stage's pictures are each shown once: the sections take them in turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layercut.contracts.files import RESULT_JSON
from layercut.contracts.kinds import STAGE_KINDS
from layercut.report.figures import Figure, caption_from_name, embed_figure, png_files
from layercut.report.reading import read_json

__all__ = ["KEY_FILES", "STAGE_KINDS", "STAGE_TITLES", "Stage", "StageInput", "resolve_stage"]

KEY_FILES: Mapping[str, str] = RESULT_JSON
"""The file whose presence means a stage ran: its JSON result (``layercut.contracts.files.RESULT_JSON``)."""

STAGE_TITLES = {
    "train": "train the base model",
    "analyze": "analyze (GBP + SSIM)",
    "truncate": "truncate at the cut point",
    "retrain": "retrain the slim model",
    "compare": "compare base and slim",
    "explain": "explain base and slim",
}


@dataclass
class StageInput:
    """One stage of a report: its kind, the folder with its files and what else is known about it.

    ``status`` is the job's status (queued, running, cancelling, succeeded, failed, cancelled), or None for
    a CLI run folder, where a stage counts as done when its key file (``KEY_FILES``) is there.
    ``summary`` is the stage's summary (a job's stored result), used when the folder has no key file.
    """

    kind: str
    folder: Path | None = None
    summary: Mapping[str, Any] | None = None
    status: str | None = None
    label: str | None = None  # how the page names the stage's place: "base/", "job 3f0c…"
    params: Mapping[str, Any] | None = None
    step: int | None = None
    percent: float | None = None
    stage: str | None = None
    message: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    expects: str | None = None  # for a CLI run: the file whose presence means the stage ran (default: its key file)


@dataclass
class Stage:
    """A stage as found: its input, its result (None until it ran) and the PNG files of its folder."""

    input: StageInput
    summary: dict | None
    pngs: list[Path]
    used: set[str] = field(default_factory=set)  # the pictures already shown, so that none is shown twice

    @property
    def kind(self) -> str:
        return self.input.kind

    @property
    def ready(self) -> bool:
        """Whether the stage's outputs can be shown: it succeeded (or, in a run folder, ran) and left a result."""
        if self.input.status not in (None, "succeeded"):
            return False
        return self.summary is not None or (self.kind == "explain" and bool(self.pngs))

    @property
    def state(self) -> str:
        """The job's status, or for a run folder "done" / "not run yet"."""
        if self.input.status is not None:
            return self.input.status
        return "done" if self.ready else "not run yet"

    @property
    def expected_output(self) -> str:
        """The file whose absence means the stage has not run, as the page names it ("base/metrics.json")."""
        s = self.input
        return f"{s.label or ''}{s.expects or KEY_FILES.get(s.kind, 'its outputs')}"

    def take(self, known: Sequence[tuple[str, str]]) -> list[Figure]:
        """Figures for the known (file name, caption) present, in the given order, not shown yet."""
        out = []
        by_name = {p.name: p for p in self.pngs}
        for name, caption in known:
            if name in by_name and name not in self.used:
                self.used.add(name)
                out.append(self.figure(by_name[name], caption))
        return out

    def rest(self) -> list[Figure]:
        """Figures for every PNG of the folder not shown yet, captioned by file name."""
        out = []
        for path in self.pngs:
            if path.name not in self.used:
                self.used.add(path.name)
                out.append(self.figure(path, caption_from_name(path.stem)))
        return out

    def figure(self, path: Path, caption: str, label: str | None = None) -> Figure:
        """The picture at ``path`` of this stage's folder, embedded."""
        assert self.input.folder is not None, "a stage with pictures has a folder"
        return embed_figure(path, caption, self.input.folder, label)


def resolve_stage(stage: StageInput) -> Stage:
    """Read a stage's result and list its pictures."""
    folder = stage.folder if stage.folder is not None and stage.folder.is_dir() else None
    # The key file is the stage's full record; a job's stored result is the same summary, used when the file is gone.
    summary = read_json(folder / KEY_FILES.get(stage.kind, f"{stage.kind}.json")) if folder is not None else None
    if summary is None and isinstance(stage.summary, Mapping) and stage.summary:
        summary = dict(stage.summary)
    return Stage(stage, summary, png_files(folder))
