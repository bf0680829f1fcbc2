"""The guided-backprop maps across depth: how the probes were chosen, the map grid, and the table of cut points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.report.reading import as_list, as_mapping, get
from layercut.report.sections import MAX_TABLE_ROWS
from layercut.report.stages import Stage
from layercut.report.templating import render_template

GBP_FIGURES = [
    (
        "gbp_grid.png",
        "Guided-backprop maps of probe images at every cut point, from shallow to deep (the knee is marked)",
    )
]


class CutPointRow(NamedTuple):
    index: Any
    name: Any
    module: Any
    shape: str  # "C × H × W"
    cut_curve: Any  # the cut curve's value at this depth
    adjacent: Any  # SSIM between this cut point's maps and the next one's
    knee: bool


def cut_point_rows(analysis: Mapping) -> list[CutPointRow]:
    """The cut points, shallow to deep, with both SSIM curves at each and the knee marked."""
    curves = as_mapping(analysis.get("curves"))
    cut_curve, adjacent = as_list(curves.get("cut")), as_list(curves.get("adjacent"))
    knee = get(analysis, "cut_point", "index", default=get(analysis, "knee", "index"))
    points = [p for p in as_list(analysis.get("cut_points")) if isinstance(p, Mapping)]
    rows = []
    for i, p in enumerate(points[:MAX_TABLE_ROWS]):
        index = p.get("index", i)
        shape = " × ".join(str(p[k]) for k in ("channels", "height", "width") if p.get(k) is not None) or "—"
        row = CutPointRow(
            index,
            p.get("name"),
            p.get("module", "—"),
            shape,
            get(cut_curve, index),
            get(adjacent, index),
            index == knee,
        )
        rows.append(row)
    return rows


def context(stage: Stage) -> dict[str, Any]:
    """The probes, the gradient rule, the map grid and the cut points of the analysis."""
    analysis = stage.summary or {}
    probes = as_mapping(analysis.get("probes"))
    probe_text = None
    if probes:
        probe_text = (
            f"{probes.get('count', '—')} images of the {probes.get('split', '—')} split "
            f"({probes.get('per_class', '—')} per class, seed {probes.get('seed', '—')})"
        )
    rows = cut_point_rows(analysis)
    described = len([p for p in as_list(analysis.get("cut_points")) if isinstance(p, Mapping)])
    return {
        "probes": probe_text,
        "gbp": as_mapping(analysis.get("gbp")),
        "map_image": as_mapping(analysis.get("map_image")),
        "cut_point_count": len(as_list(analysis.get("cut_points"))) or None,
        "pictures": stage.take(GBP_FIGURES),
        "cut_points": rows,
        "cut_points_described": described,
        "first_rows_only": described > len(rows),
        "max_rows": MAX_TABLE_ROWS,
    }


def render(stage: Stage) -> Markup:
    return render_template("gbp.html", **context(stage))
