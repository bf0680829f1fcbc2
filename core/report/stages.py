"""The stages a report is drawn from: what the caller says about each (``StageInput``) and what the report found.

A stage's result is read once, here (its JSON file, else the job's stored result), into its contract model
(``layercut.contracts.results.RESULT_MODELS``); each section then reads the fields it shows from ``Stage.result``.
A result that does not validate is read as far as it does (``layercut.report.reading``: a partial model) and the
stage keeps why (``Stage.problem``: the file and the first validation error), which its sections show as a note.
A stage's pictures are each shown once: the sections take them in turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from layercut.contracts.errors import first_error
from layercut.contracts.files import CANDIDATES_FOLDER, INITIAL_CHECKPOINT, METRICS_JSON, RESULT_JSON, TRUNCATE_JSON
from layercut.contracts.kinds import STAGE_KINDS
from layercut.contracts.results import RESULT_MODELS, SelectResult
from layercut.report.figures import Figure, caption_from_name, embed_figure, png_files
from layercut.report.reading import empty, load_json, salvage

__all__ = [
    "KEY_FILES",
    "STAGE_KINDS",
    "STAGE_TITLES",
    "Stage",
    "StageInput",
    "chosen_model_stages",
    "resolve_stage",
]

M = TypeVar("M", bound=BaseModel)

KEY_FILES: Mapping[str, str] = RESULT_JSON
"""The file whose presence means a stage ran: its JSON result (``layercut.contracts.files.RESULT_JSON``)."""

STORED_ONLY = ("model_id",)
"""Keys the job engine adds to a stage's result when it stores it in the job row (``layercut.jobs.runner``): not
part of the result, left out before it is read."""

STAGE_TITLES = {
    "train": "train the base model",
    "analyze": "analyze (GBP + SSIM)",
    "truncate": "truncate at the cut point",
    "retrain": "retrain the slim model",
    "select": "select the cut (accuracy budget)",
    "sweep": "sweep the cut points",
    "compare": "compare base and slim",
    "explain": "explain base and slim",
    "export": "export the slim model",
    "mlflow": "log the run to MLflow",
}


@dataclass
class StageInput:
    """One stage of a report: its kind, the folder with its files and what else is known about it.

    ``status`` is the job's status (queued, running, cancelling, succeeded, failed, cancelled), or None for
    a CLI run folder, where a stage counts as done when its key file (``KEY_FILES``) is there.
    ``summary`` is the stage's summary (a job's stored result), used when the folder has no key file, or one that
    cannot be read or does not validate; ``source`` is how a note names it.
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
    result_file: Path | None = None  # the stage's JSON result when it is not the key file of ``folder``
    source: str | None = None  # how a note names ``summary`` (default: "The stored result of <label>")


@dataclass
class Stage:
    """A stage as found: its input, its result (None until it ran), why the result is partial, and its pictures.

    ``result`` is an instance of the stage's result model (``RESULT_MODELS``), validated, or partial when it did
    not validate; then ``problem`` says which file and why, and ``raw`` holds the result as read (for what only an
    untyped reading can still show, such as the pictures an older explain.json lists).
    """

    input: StageInput
    result: BaseModel | None
    pngs: list[Path]
    problem: str | None = None
    raw: Mapping[str, Any] | None = None
    used: set[str] = field(default_factory=set)  # the pictures already shown, so that none is shown twice

    @property
    def kind(self) -> str:
        return self.input.kind

    @property
    def ready(self) -> bool:
        """Whether the stage's outputs can be shown: it succeeded (or, in a run folder, ran) and left a result."""
        if self.input.status not in (None, "succeeded"):
            return False
        return self.result is not None or self.raw is not None or (self.kind == "explain" and bool(self.pngs))

    @property
    def partial(self) -> bool:
        """Whether the result did not validate, so that any of its fields may be empty."""
        return self.problem is not None

    def read(self, model: type[M]) -> M:
        """The stage's result as ``model``; an empty (partial) one when the stage left no such result."""
        return self.result if isinstance(self.result, model) else empty(model)

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


def result_name(stage: StageInput, file: Path) -> str:
    """How the page names a stage's result file: "base/metrics.json", or "metrics.json of step 1: job 3f0c…"."""
    label = stage.label or ""
    if not label or label.endswith("/"):
        return f"{label}{file.name}"
    return f"{file.name} of {label}"


def resolve_stage(stage: StageInput) -> Stage:
    """Read a stage's result into its model and list its pictures.

    The key file is the stage's full record; a job's stored result is the same summary, used when the file is gone
    or cannot be read. The first of them that validates is the result. When none does, the first JSON object among
    them is read as far as it validates, and the stage says why (``problem``: each source tried, and its first error).
    """
    folder = stage.folder if stage.folder is not None and stage.folder.is_dir() else None
    pngs = png_files(folder)
    file = stage.result_file
    if file is None and folder is not None:
        file = folder / KEY_FILES.get(stage.kind, f"{stage.kind}.json")
    found: list[tuple[str, dict[str, Any] | None, str | None]] = []  # (where, the JSON object, why unreadable)
    if file is not None and file.is_file():
        found.append((result_name(stage, file), *load_json(file)))
    if isinstance(stage.summary, Mapping) and stage.summary:
        stored = {k: v for k, v in stage.summary.items() if k not in STORED_ONLY}
        where = stage.source or (f"The stored result of {stage.label}" if stage.label else "The job's stored result")
        found.append((where, stored, None))
    model = RESULT_MODELS.get(stage.kind)
    tried: list[tuple[str, dict[str, Any] | None, str]] = []  # (where, its JSON object, why it is not the result)
    for where, raw, unreadable in found:
        if raw is None:
            tried.append((where, None, f"{where} {unreadable}."))
            continue
        if model is None:  # a kind this version does not know: its result is kept as read
            return Stage(stage, None, pngs, raw=raw)
        try:
            return Stage(stage, model.model_validate(raw), pngs, raw=raw)
        except ValidationError as exc:
            mismatch = f"{where} does not match the {stage.kind} result this version of layercut writes"
            tried.append((where, raw, f"{mismatch} — {first_error(exc)}."))
    if not tried:
        return Stage(stage, None, pngs)
    # None validates: the first JSON object is read as far as it validates, and the note says why.
    notes = []
    for _, raw, why in tried:
        notes.append(why)
        if raw is not None and model is not None:
            notes.append("This section shows what could be read from it.")
            return Stage(stage, salvage(model, raw), pngs, problem=" ".join(notes), raw=raw)
    notes.append("This section shows what could be drawn without it.")
    result = empty(model) if model is not None else None
    return Stage(stage, result, pngs, problem=" ".join(notes), raw={})


def chosen_model_stages(select: Stage) -> list[Stage]:
    """The truncate and retrain stages of the select stage's chosen slim model, for a pipeline whose select job
    stands for both; none when the stage is not done or the chosen model's files are not there.

    The select stage writes the chosen candidate's files (truncate.json, metrics.json, its pictures) beside
    select.json, so its own folder reads as the slim model's; the retrain stage made of it shares the select
    stage's pictures, each still shown once. Without them the chosen candidate's own folder is used
    (``candidates/cut-05-layer3.0/``): its recorded path may be one on another machine (the worker's), so only its
    last part is looked up inside the stage's ``candidates/`` folder.
    """
    folder = select.input.folder
    if not select.ready or folder is None or not isinstance(select.result, SelectResult):
        return []
    label = select.input.label
    where: Path | None = folder if (folder / METRICS_JSON).is_file() else None
    if where is None:
        chosen = select.result.cut_point
        candidate = next(
            (c for c in select.result.candidates if chosen is not None and c.cut_point.index == chosen.index), None
        )
        if candidate is None or not candidate.folder:
            return []
        where = folder / CANDIDATES_FOLDER / Path(candidate.folder).name
        try:
            if not (where.resolve().is_relative_to(folder.resolve()) and where.is_dir()):
                return []
        except (OSError, RuntimeError, ValueError):
            return []
        inner = f"{CANDIDATES_FOLDER}/{where.name}/"
        label = f"{label}, {inner}" if label else inner
    status = select.input.status
    truncate = StageInput(
        "truncate", None, status=status, label=label, expects=INITIAL_CHECKPOINT, result_file=where / TRUNCATE_JSON
    )
    retrain = resolve_stage(StageInput("retrain", where, status=status, label=label))
    if where == folder:
        retrain.used = select.used  # the same pictures: shown once, by whichever section takes them first
    return [resolve_stage(truncate), retrain]
