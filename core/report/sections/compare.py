"""Base vs slim: accuracy, macro-F1, parameters, MACs, checkpoint size and latency side by side, with the change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.report.formats import latency_label, speed
from layercut.report.reading import as_mapping, get, is_number
from layercut.report.stages import Stage
from layercut.report.templating import render_template

COMPARE_FIGURES = [("compare.png", "Base vs slim: accuracy, parameters, MACs and latency")]
MISSING = "—"


class Pair(NamedTuple):
    """One measure of both models and how it changed."""

    base: Any
    slim: Any
    change: str


class Spread(NamedTuple):
    """The 10th and 90th percentile of a latency, in milliseconds."""

    p10: float
    p90: float


class LatencyRow(NamedTuple):
    label: str  # "CPU, batch 1"
    base_ms: Any
    slim_ms: Any
    base_spread: Spread | None
    slim_spread: Spread | None
    change: str


def kept(base: Any, slim: Any) -> str:
    """How much of the base's size the slim model keeps: '39.2% kept (-60.8%)'."""
    if not (is_number(base) and is_number(slim)) or not base:
        return MISSING
    return f"{slim / base:.1%} kept ({(slim / base - 1) * 100:+.1f}%)"


def spread(entry: Any) -> Spread | None:
    p10, p90 = get(entry, "p10_ms"), get(entry, "p90_ms")
    return Spread(p10, p90) if is_number(p10) and is_number(p90) else None


def latency_rows(result: Mapping) -> list[LatencyRow]:
    """One row per measured (device, batch size), from the comparison or else from each model's own latencies."""
    base, slim = as_mapping(result.get("base")), as_mapping(result.get("slim"))
    latency = as_mapping(get(result, "comparison", "latency"))
    keys = list(latency) or [k for k in as_mapping(base.get("latency")) if k in as_mapping(slim.get("latency"))]
    rows = []
    for key in keys:
        entry = as_mapping(latency.get(key))
        base_ms = entry.get("base_ms", get(base, "latency", key, "median_ms"))
        slim_ms = entry.get("slim_ms", get(slim, "latency", key, "median_ms"))
        speedup = entry.get("speedup")
        if not is_number(speedup):
            speedup = base_ms / slim_ms if is_number(base_ms) and is_number(slim_ms) and slim_ms else None
        change = speed(speedup) if is_number(speedup) and speedup > 0 else MISSING
        label = latency_label(key, entry or as_mapping(get(base, "latency", key)))
        base_spread, slim_spread = spread(get(base, "latency", key)), spread(get(slim, "latency", key))
        rows.append(LatencyRow(label, base_ms, slim_ms, base_spread, slim_spread, change))
    return rows


def context(stage: Stage) -> dict[str, Any]:
    """Both models' measures (from each model's record, else from the comparison) and the notes on how."""
    result = stage.summary or {}
    base, slim = as_mapping(result.get("base")), as_mapping(result.get("slim"))
    metrics = as_mapping(get(result, "comparison", "metrics"))

    def pair(key: str) -> tuple[Any, Any]:
        measured = as_mapping(metrics.get(key))
        return (base.get(key, measured.get("base")), slim.get(key, measured.get("slim")))

    def both(b: Any, s: Any) -> bool:
        return is_number(b) and is_number(s)

    accuracy, macro_f1 = pair("accuracy"), pair("macro_f1")
    cut = as_mapping(slim.get("cut_point"))
    notes = []
    if get(result, "comparison", "latency_statistic"):
        notes.append(f"Latency: {get(result, 'comparison', 'latency_statistic')} (10th–90th percentile in brackets)")
    if result.get("threads"):
        notes.append(f"{result['threads']} CPU threads")
    if result.get("test_images"):
        notes.append(f"{result['test_images']} test images")
    return {
        "accuracy": Pair(*accuracy, f"{(accuracy[1] - accuracy[0]) * 100:+.1f} pts" if both(*accuracy) else MISSING),
        "macro_f1": Pair(*macro_f1, f"{macro_f1[1] - macro_f1[0]:+.3f}" if both(*macro_f1) else MISSING),
        "params": Pair(*pair("params"), kept(*pair("params"))),
        "macs": Pair(*pair("macs"), kept(*pair("macs"))),
        "checkpoint_bytes": Pair(*pair("checkpoint_bytes"), kept(*pair("checkpoint_bytes"))),
        "latency": latency_rows(result),
        "slim_cut": cut.get("name"),
        "notes": "; ".join(notes) + "." if notes else None,
        "pictures": stage.take(COMPARE_FIGURES) + stage.rest(),
    }


def render(stage: Stage) -> Markup:
    return render_template("compare.html", **context(stage))
