"""What was cut and why: the cut point, the rule that chose it, the parameters removed, the new head, and which
cut points were kept and dropped."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup
from pydantic import ValidationError

from layercut.contracts.configs import TruncateConfig
from layercut.contracts.jobs import TruncateParams
from layercut.contracts.results import AnalyzeResult, TruncateResult
from layercut.report.formats import human, integer, pct
from layercut.report.reading import is_number
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.sections.ssim import knee_text
from layercut.report.stages import Stage
from layercut.report.templating import render_template


def requested(stage: Stage) -> TruncateConfig | None:
    """What the truncate job was asked (its cut and the new head's dropout), when it is a job of the service."""
    if not stage.input.params:
        return None
    try:
        return TruncateParams.model_validate(stage.input.params).truncate
    except ValidationError:
        return None


def why_text(truncate: TruncateResult, analysis: AnalyzeResult | None, cut_asked: Any) -> str:
    """Why the model was cut where it was: at the analysis's knee, where the user said, or by the accuracy budget."""
    chosen = truncate.chosen_by
    knee = analysis.knee if analysis is not None else None
    if chosen == "knee":
        curve = knee.curve_mode if knee is not None else None
        why = f"at the knee of the analysis's {curve or ''} SSIM curve".replace("  ", " ")
        how = knee_text(knee)
        return f"{why} — {how}" if how else why
    if chosen == "user":
        why = "named by the user" + (f" (cut = {cut_asked!r})" if cut_asked not in (None, "knee") else "")
        knee_cut = analysis.cut_point if analysis is not None else None
        cut = truncate.cut_point
        if knee_cut is not None and knee_cut.name and knee_cut.name != (cut.name if cut else None):
            why += f"; the analysis's knee was {knee_cut.name}"
        return why
    if chosen == "auto":
        return (
            "chosen by the accuracy budget (auto): the smallest retrained candidate whose validation accuracy is "
            "within the budget, or the best one when none is (see “Is this the right cut?”)"
        )
    return chosen or "not recorded"


def context(stage: Stage, analyze: Stage | None) -> dict[str, Any]:
    """The cut, read from the truncate result, with the analysis (when done) for the knee and the cut points."""
    truncate = stage.read(TruncateResult)
    analysis = analyze.read(AnalyzeResult) if analyze is not None and analyze.ready else None
    asked = requested(stage)
    cut = truncate.cut_point
    name, index = (cut.name, cut.index) if cut is not None else (None, None)
    points = analysis.cut_points if analysis is not None else []
    total = truncate.cut_points_total or (len(points) or None)
    base_params, slim_params = truncate.base_params, truncate.slim_params
    kept = truncate.params_kept
    if not is_number(kept) and is_number(base_params) and is_number(slim_params) and base_params:
        kept = slim_params / base_params
    params_text = None
    if is_number(base_params) and is_number(slim_params):
        removed = human(base_params - slim_params)
        params_text = f"{integer(base_params)} → {integer(slim_params)} ({pct(kept)} kept, {removed} removed)"
    dropout = asked.dropout if asked is not None else None
    classes = analysis.classes if analysis is not None else []
    head = (
        "global average pooling, dropout"
        + (f" p={dropout}" if is_number(dropout) else "")
        + ", one linear layer"
        + (f" to {len(classes)} classes" if classes else " to the classes")
    )
    context: dict[str, Any] = {
        "cut_after": f"{name or '—'} — cut point {index}" + (f" of {total}" if is_number(total) else ""),
        "why": why_text(truncate, analysis, asked.cut if asked is not None else None),
        "params": params_text,
        "head": head + " (untrained until the retrain step)",
        "show_cut_points": bool(points) and isinstance(index, int),
        "pictures": stage.take([]) + stage.rest(),
    }
    if context["show_cut_points"]:
        at = [p for p in points if isinstance(p.index, int)]
        context["kept"] = [p.name for p in at if p.index <= index][:MAX_TABLE_ROWS]
        context["dropped"] = [p.name for p in at if p.index > index][:MAX_TABLE_ROWS]
    return context


def render(stage: Stage, analyze: Stage | None) -> Markup:
    return render_template("cut.html", **context(stage, analyze))
