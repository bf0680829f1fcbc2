"""What was cut and why: the cut point, the rule that chose it, the parameters removed, the new head, and which
cut points were kept and dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from layercut.report.formats import human, integer, pct
from layercut.report.reading import as_list, as_mapping, get, is_number
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.sections.ssim import knee_text
from layercut.report.stages import Stage
from layercut.report.templating import render_template


def why_text(truncate: Mapping, analysis: Mapping | None, requested: Any) -> str:
    """Why the model was cut where it was: at the analysis's knee, or where the user said."""
    chosen = truncate.get("chosen_by")
    cut = as_mapping(truncate.get("cut_point"))
    knee = as_mapping(get(analysis, "knee"))
    if chosen == "knee":
        why = f"at the knee of the analysis's {knee.get('curve_mode', '')} SSIM curve".replace("  ", " ")
        return f"{why} — {knee_text(knee)}" if knee else why
    if chosen == "user":
        why = "named by the user" + (f" (cut = {requested!r})" if requested not in (None, "knee") else "")
        analysis_cut = as_mapping(get(analysis, "cut_point"))
        if analysis_cut.get("name") and analysis_cut.get("name") != cut.get("name"):
            why += f"; the analysis's knee was {analysis_cut.get('name')}"
        return why
    return chosen or "not recorded"


def context(stage: Stage, analyze: Stage | None) -> dict[str, Any]:
    """The cut, read from the truncate result, with the analysis (when done) for the knee and the cut points."""
    truncate = stage.summary or {}
    analysis = analyze.summary if analyze is not None and analyze.ready else None
    params = stage.input.params
    cut = as_mapping(truncate.get("cut_point"))
    index = cut.get("index")
    points = [p for p in as_list(get(analysis, "cut_points")) if isinstance(p, Mapping)]
    total = truncate.get("cut_points_total") or (len(points) or None)
    base_params, slim_params = truncate.get("base_params"), truncate.get("slim_params")
    kept = truncate.get("params_kept")
    if not is_number(kept) and is_number(base_params) and is_number(slim_params) and base_params:
        kept = slim_params / base_params
    params_text = None
    if is_number(base_params) and is_number(slim_params):
        removed = human(base_params - slim_params)
        params_text = f"{integer(base_params)} → {integer(slim_params)} ({pct(kept)} kept, {removed} removed)"
    dropout = truncate.get("head_dropout", get(params, "truncate", "dropout"))
    classes = get(analysis, "classes") or truncate.get("classes")
    head = (
        "global average pooling, dropout"
        + (f" p={dropout}" if is_number(dropout) else "")
        + ", one linear layer"
        + (f" to {len(classes)} classes" if isinstance(classes, list) else " to the classes")
    )
    context: dict[str, Any] = {
        "cut_after": f"{cut.get('name', '—')} — cut point {index}" + (f" of 0–{total - 1}" if is_number(total) else ""),
        "why": why_text(truncate, analysis, get(params, "truncate", "cut")),
        "params": params_text,
        "head": head + " (untrained until the retrain step)",
        "show_cut_points": bool(points) and isinstance(index, int),
        "pictures": stage.take([]) + stage.rest(),
    }
    if context["show_cut_points"]:
        at = [p for p in points if isinstance(p.get("index"), int)]
        context["kept"] = [p.get("name") for p in at if p["index"] <= index][:MAX_TABLE_ROWS]
        context["dropped"] = [p.get("name") for p in at if p["index"] > index][:MAX_TABLE_ROWS]
    return context


def render(stage: Stage, analyze: Stage | None) -> Markup:
    return render_template("cut.html", **context(stage, analyze))
