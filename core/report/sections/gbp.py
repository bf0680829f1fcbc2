"""The guided-backprop maps across depth: how the probes were chosen, the map grid, and the table of cut points."""

from __future__ import annotations

from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.contracts.results import AnalyzeResult
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.stages import Stage
from layercut.report.templating import render_template

GBP_FIGURES = [
    (
        "gbp_grid.png",
        "Guided-backprop maps of probe images at every cut point, from shallow to deep (the knee is marked)",
    )
]
MISSING = "—"


class CutPointRow(NamedTuple):
    index: Any
    name: Any
    module: Any
    shape: str  # "C × H × W"
    cut_curve: Any  # the cut curve's value at this depth
    adjacent: Any  # SSIM between this cut point's maps and the next one's
    knee: bool


def at(values: list[float], index: int) -> float | None:
    """``values[index]``, or None when the curve has no such point."""
    return values[index] if -len(values) <= index < len(values) else None


def cut_point_rows(analysis: AnalyzeResult) -> list[CutPointRow]:
    """The cut points, shallow to deep, with both SSIM curves at each and the knee marked."""
    curves = analysis.curves
    cut_curve, adjacent = (curves.cut, curves.adjacent) if curves is not None else ([], [])
    if analysis.cut_point is not None and analysis.cut_point.index is not None:
        knee = analysis.cut_point.index
    else:
        knee = analysis.knee.index if analysis.knee is not None else None
    rows = []
    for i, p in enumerate(analysis.cut_points[:MAX_TABLE_ROWS]):
        index = p.index if p.index is not None else i
        shape = " × ".join(str(n) for n in (p.channels, p.height, p.width) if n is not None) or MISSING
        rows.append(
            CutPointRow(
                index,
                p.name,
                p.module if p.module is not None else MISSING,
                shape,
                at(cut_curve, index),
                at(adjacent, index),
                index == knee,
            )
        )
    return rows


def context(stage: Stage) -> dict[str, Any]:
    """The probes, the gradient rule, the map grid and the cut points of the analysis."""
    analysis = stage.read(AnalyzeResult)
    probes = analysis.probes
    probe_text = None
    if probes is not None:

        def shown(value: Any) -> Any:
            return MISSING if value is None else value

        probe_text = (
            f"{shown(probes.count)} images of the {shown(probes.split)} split "
            f"({shown(probes.per_class)} per class, seed {shown(probes.seed)})"
        )
    rows = cut_point_rows(analysis)
    described = len(analysis.cut_points)
    return {
        "probes": probe_text,
        "gbp": analysis.gbp,
        "map_image": analysis.map_image,
        "cut_point_count": described or None,
        "pictures": stage.take(GBP_FIGURES),
        "cut_points": rows,
        "cut_points_described": described,
        "first_rows_only": described > len(rows),
        "max_rows": MAX_TABLE_ROWS,
    }


def render(stage: Stage) -> Markup:
    return render_template("gbp.html", **context(stage))
