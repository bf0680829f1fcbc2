"""The SSIM curve and its knee: which curve, where the knee is and how it was found, the SSIM settings, timing."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from layercut.contracts.results import AnalyzeResult, Knee, SsimSettings
from layercut.report.reading import is_number
from layercut.report.stages import Stage
from layercut.report.templating import render_template

SSIM_FIGURES = [
    ("ssim_curve.png", "SSIM between depths, with the knee"),
    ("similarity_matrix.png", "SSIM of the GBP maps between every pair of cut points"),
]
CURVE_MODES = {
    "cut": "cut curve: mean SSIM over the pairs of maps on either side of each depth (the paper's SSIM cut curve)",
    "adjacent": "adjacent curve: SSIM between the maps of neighbouring cut points",
}


def knee_text(knee: Knee | None) -> str:
    """How the knee was found (kneed's settings), or why there is none; '' when the result has no knee record."""
    if knee is None or knee.found is None:  # no record, or a partial one that does not say
        return ""
    if knee.found:
        return f"found by kneed.KneeLocator (S={knee.S}, curve='{knee.curve}', direction='{knee.direction}')"
    rule = f" (rule {knee.rule})" if knee.rule else ""
    return f"no knee found — {knee.reason or 'no reason recorded'}{rule}"


def ssim_settings(ssim: SsimSettings | None) -> str | None:
    """The SSIM parameters in one line."""
    if ssim is None:
        return None
    return (
        f"data range {ssim.data_range}, {ssim.win_size}×{ssim.win_size} "
        f"{'Gaussian' if ssim.gaussian_weights else 'uniform'} window, K1 {ssim.k1}, "
        f"K2 {ssim.k2}, {ssim.covariance} covariance, "
        f"border of {ssim.border_cropped} cropped, mean over {ssim.channels} channel(s)"
    )


def context(stage: Stage) -> dict[str, Any]:
    """The curve, the knee and the cut point it gives, the SSIM settings and the analysis's timing."""
    analysis = stage.read(AnalyzeResult)
    knee, cut, seconds = analysis.knee, analysis.cut_point, analysis.seconds
    mode = (knee.curve_mode if knee else None) or (analysis.config.curve if analysis.config else None)
    timing = None
    if seconds is not None:
        timing = " · ".join(
            f"{name} {value:.1f} s"
            for name, value in (("gbp", seconds.gbp), ("ssim", seconds.ssim), ("total", seconds.total))
            if is_number(value)
        )
        timing += f" on {analysis.device}" if analysis.device else ""
    return {
        "curve": CURVE_MODES.get(mode, mode) if mode is not None else None,
        "knee_at": f"{cut.name} (cut point {cut.index})" if cut else (knee.index if knee else None),
        "how": knee_text(knee),
        "curve_value": cut.curve_value if cut else None,
        "settings": ssim_settings(analysis.ssim),
        "timing": timing,
        "no_knee": knee is not None and knee.found is False,
        "pictures": stage.take(SSIM_FIGURES) + stage.rest(),
    }


def render(stage: Stage) -> Markup:
    return render_template("ssim.html", **context(stage))
