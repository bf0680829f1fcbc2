"""The SSIM curve and its knee: which curve, where the knee is and how it was found, the SSIM settings, timing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from layercut.report.reading import as_mapping, get, is_number
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


def knee_text(knee: Mapping) -> str:
    """How the knee was found (kneed's settings), or why there is none; '' when the result has no knee record."""
    if not knee:
        return ""
    if knee.get("found"):
        return (
            f"found by kneed.KneeLocator (S={knee.get('S')}, curve='{knee.get('curve')}', "
            f"direction='{knee.get('direction')}')"
        )
    rule = f" (rule {knee['rule']})" if knee.get("rule") else ""
    return f"no knee found — {knee.get('reason') or 'no reason recorded'}{rule}"


def ssim_settings(ssim: Mapping) -> str | None:
    """The SSIM parameters in one line."""
    if not ssim:
        return None
    return (
        f"data range {ssim.get('data_range')}, {ssim.get('win_size')}×{ssim.get('win_size')} "
        f"{'Gaussian' if ssim.get('gaussian_weights') else 'uniform'} window, K1 {ssim.get('k1')}, "
        f"K2 {ssim.get('k2')}, {ssim.get('covariance')} covariance, "
        f"border of {ssim.get('border_cropped')} cropped, mean over {ssim.get('channels')} channel(s)"
    )


def context(stage: Stage) -> dict[str, Any]:
    """The curve, the knee and the cut point it gives, the SSIM settings and the analysis's timing."""
    analysis = stage.summary or {}
    knee, cut = as_mapping(analysis.get("knee")), as_mapping(analysis.get("cut_point"))
    mode = knee.get("curve_mode") or get(analysis, "config", "curve")
    seconds = as_mapping(analysis.get("seconds"))
    timing = None
    if seconds:
        timing = " · ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if is_number(v))
        timing += f" on {analysis['device']}" if analysis.get("device") else ""
    return {
        "curve": CURVE_MODES.get(mode, mode),
        "knee_at": f"{cut.get('name')} (cut point {cut.get('index')})" if cut else knee.get("index"),
        "how": knee_text(knee),
        "curve_value": cut.get("curve_value"),
        "settings": ssim_settings(as_mapping(analysis.get("ssim"))),
        "timing": timing,
        "no_knee": bool(knee) and not knee.get("found"),
        "pictures": stage.take(SSIM_FIGURES) + stage.rest(),
    }


def render(stage: Stage) -> Markup:
    return render_template("ssim.html", **context(stage))
