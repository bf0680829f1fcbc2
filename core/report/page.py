"""One self-contained HTML page from the outputs of a pipeline's stages: the sections, assembled.

A report is described by a list of ``StageInput``: one per stage (job kind) with the folder holding its
files and, where known, its summary dict and job status. Each section (``layercut.report.sections``) is drawn
from its stage's result when that stage is done, else it says "not run yet"; a result that does not validate is
drawn as far as it can be, under a note naming the file and the first validation error; a section that fails to
draw says so and the rest of the page still renders. Pictures are embedded as base64 ``data:`` URIs; CSS is
inline; there are no scripts and no external references, so the page works offline and printed.

Torch-free (the API imports this).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from markupsafe import Markup

from layercut.contracts.results import RunSummary
from layercut.report.sections import (
    compare,
    cut,
    cut_choice,
    data,
    explain,
    gbp,
    model,
    overview,
    pending,
    ssim,
    tracking,
)
from layercut.report.stages import Stage, StageInput, chosen_model_stages, resolve_stage
from layercut.report.templating import render_template

log = logging.getLogger("layercut.report")

SUBTITLE = "base model → analysis → cut → slim model → comparison → explanations"


@dataclass(frozen=True)
class Section:
    """One section of the page: where it links to, its heading, the stage it follows, and its body (or why not)."""

    ident: str
    title: str
    stage: Stage | None  # the stage whose status the section follows (None: the overview)
    body: Markup = Markup("")
    problem: str | None = None  # set when the body could not be drawn
    warning: str | None = None  # set when the stage's result did not validate: the file and the first error

    @property
    def state(self) -> str | None:
        return self.stage.state if self.stage is not None else None

    @property
    def where(self) -> str | None:
        return self.stage.input.label if self.stage is not None else None


def render_report(
    stages: Sequence[StageInput],
    title: str,
    *,
    subtitle: str | None = None,
    details: Iterable[tuple[str, Any]] = (),
    status: str | None = None,
    generated_at: datetime | None = None,
    run: RunSummary | None = None,
) -> str:
    """The HTML page for ``stages`` (one per kind; the first of a kind wins).

    Sections appear for the stages given: data and base model (train), GBP maps and SSIM/knee (analyze),
    whether this is the right cut (select, sweep, or an analysis with depth probes), what was cut and why
    (truncate), slim model (retrain), comparison (compare), explanations (explain), where the run was logged
    (mlflow); the data section follows
    retrain when there is no train stage, and a pipeline whose select job stands for truncate and retrain shows
    its chosen candidate as both. A stage not done shows "not run yet" with its status. ``details`` are (label,
    value) pairs shown in the overview (values are escaped); ``status`` is an overall status shown beside the
    title; ``run`` is a run folder's run.json, whose verdict and rules the overview and the cut's section show.
    """
    ordered = [resolve_stage(stage) for stage in stages]
    by_kind: dict[str, Stage] = {}
    for stage in ordered:
        by_kind.setdefault(stage.kind, stage)
    if "select" in by_kind and "truncate" not in by_kind and "retrain" not in by_kind:
        for stage in chosen_model_stages(by_kind["select"]):
            by_kind[stage.kind] = stage
    analyze = by_kind.get("analyze")
    choice = cut_choice.followed_stage(by_kind)
    plan: list[tuple[str, str, Stage | None, Callable[[Stage], Markup]]] = [
        ("data", "The data", by_kind.get("train") or by_kind.get("retrain"), data.render),
        ("base", "Base model", by_kind.get("train"), lambda s: model.render(s, "base")),
        ("gbp", "Guided-backprop maps across depth", analyze, gbp.render),
        ("ssim", "SSIM curve and knee", analyze, ssim.render),
        ("choice", "Is this the right cut?", choice, lambda s: cut_choice.render(by_kind, s, run)),
        ("cut", "What was cut and why", by_kind.get("truncate"), lambda s: cut.render(s, analyze)),
        ("slim", "Slim model", by_kind.get("retrain"), lambda s: model.render(s, "slim")),
        ("compare", "Base vs slim", by_kind.get("compare"), compare.render),
        ("explain", "Explanations", by_kind.get("explain"), explain.render),
        ("mlflow", "Logged to MLflow", by_kind.get("mlflow"), tracking.render),
    ]
    # The cut's section is drawn first so that it claims the depth-probe picture before the SSIM section shows
    # the analysis' other pictures; the page keeps the plan's order.
    drawn = {
        ident: draw(ident, heading, stage, make if stage.ready else pending.render)
        for ident, heading, stage, make in sorted(plan, key=lambda entry: entry[0] != "choice")
        if stage is not None
    }
    sections = [drawn[ident] for ident, *_ in plan if ident in drawn]
    front = draw("overview", "Overview", None, lambda _: overview.render(ordered, by_kind, details, run))
    return render_template(
        "page.html",
        title=title,
        subtitle=subtitle,
        status=status,
        sections=[front, *sections],
        version=layercut_version(),
        generated_at=(generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc),
    )


def draw(ident: str, title: str, stage: Stage | None, make: Callable[[Any], Markup]) -> Section:
    """A section drawn by ``make(stage)``, with the note of a result that did not validate; a malformed result must
    not take the whole report down, so a failure becomes a note saying what went wrong."""
    warning = stage.problem if stage is not None and stage.ready else None
    try:
        return Section(ident, title, stage, body=make(stage), warning=warning)
    except Exception as exc:
        log.exception("report section %s could not be drawn", ident)
        if stage is None:
            return Section(
                ident, title, stage, problem=f"The {title.lower()} could not be drawn ({type(exc).__name__}: {exc})."
            )
        return Section(
            ident,
            title,
            stage,
            problem=f"This section could not be drawn from the stage's outputs ({type(exc).__name__}: {exc}).",
            warning=warning,
        )


def layercut_version() -> str:
    """The installed layercut version, or "(development)" when it is not installed as a distribution."""
    try:
        return version("layercut")
    except PackageNotFoundError:
        return "(development)"
