"""Base vs slim: accuracy, macro-F1, parameters, MACs, checkpoint size and latency side by side, with the change."""

from __future__ import annotations

from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.contracts.results import (
    ComparedMetrics,
    CompareResult,
    FloatChange,
    IntChange,
    LatencyMeasurement,
    ProfiledModel,
)
from layercut.report.formats import latency_label, speed
from layercut.report.reading import empty, first, is_number
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


def spread(measured: LatencyMeasurement | None) -> Spread | None:
    if measured is None:
        return None
    p10, p90 = measured.p10_ms, measured.p90_ms
    return Spread(p10, p90) if is_number(p10) and is_number(p90) else None


def measurement(model: ProfiledModel | None, key: str) -> LatencyMeasurement | None:
    """A model's own latency measurement under a label (cpu_b1, …)."""
    return model.latency.get(key) if model is not None else None


def latency_rows(result: CompareResult) -> list[LatencyRow]:
    """One row per measured (device, batch size), from the comparison or else from each model's own latencies."""
    base, slim = result.base, result.slim
    latency = result.comparison.latency if result.comparison is not None else {}
    keys = list(latency)
    if not keys and base is not None and slim is not None:
        keys = [k for k in base.latency if k in slim.latency]
    rows = []
    for key in keys:
        entry = latency.get(key)
        own_base, own_slim = measurement(base, key), measurement(slim, key)
        base_ms = first(entry and entry.base_ms, own_base and own_base.median_ms)
        slim_ms = first(entry and entry.slim_ms, own_slim and own_slim.median_ms)
        speedup = entry.speedup if entry is not None else None
        if not is_number(speedup):
            speedup = base_ms / slim_ms if is_number(base_ms) and is_number(slim_ms) and slim_ms else None
        change = speed(speedup) if is_number(speedup) and speedup > 0 else MISSING
        label = latency_label(key, first(entry and entry.batch_size, own_base and own_base.batch_size))
        rows.append(LatencyRow(label, base_ms, slim_ms, spread(own_base), spread(own_slim), change))
    return rows


def both(base: Any, slim: Any, measured: FloatChange | IntChange | None) -> tuple[Any, Any]:
    """A measure of base and slim: from each model's record, else from the comparison."""
    return first(base, measured and measured.base), first(slim, measured and measured.slim)


def context(stage: Stage) -> dict[str, Any]:
    """Both models' measures (from each model's record, else from the comparison) and the notes on how."""
    result = stage.read(CompareResult)
    base = result.base or empty(ProfiledModel)
    slim = result.slim or empty(ProfiledModel)
    comparison = result.comparison
    metrics = (comparison.metrics if comparison is not None else None) or empty(ComparedMetrics)
    accuracy = both(base.accuracy, slim.accuracy, metrics.accuracy)
    macro_f1 = both(base.macro_f1, slim.macro_f1, metrics.macro_f1)
    params = both(base.params, slim.params, metrics.params)
    macs = both(base.macs, slim.macs, metrics.macs)
    size = both(base.checkpoint_bytes, slim.checkpoint_bytes, metrics.checkpoint_bytes)

    def numbers(pair: tuple[Any, Any]) -> bool:
        return is_number(pair[0]) and is_number(pair[1])

    notes = []
    if comparison is not None and comparison.latency_statistic:
        notes.append(f"Latency: {comparison.latency_statistic} (10th–90th percentile in brackets)")
    if result.threads:
        notes.append(f"{result.threads} CPU threads")
    if result.test_images:
        notes.append(f"{result.test_images} test images")
    for key, model in (("base", base), ("slim", slim)):
        if getattr(model, "onnxruntime_error", None):
            notes.append(f"ONNX Runtime could not time the {key} model ({model.onnxruntime_error})")
    return {
        "accuracy": Pair(*accuracy, f"{(accuracy[1] - accuracy[0]) * 100:+.1f} pts" if numbers(accuracy) else MISSING),
        "macro_f1": Pair(*macro_f1, f"{macro_f1[1] - macro_f1[0]:+.3f}" if numbers(macro_f1) else MISSING),
        "params": Pair(*params, kept(*params)),
        "macs": Pair(*macs, kept(*macs)),
        "checkpoint_bytes": Pair(*size, kept(*size)),
        "latency": latency_rows(result),
        "slim_cut": slim.cut_point.name if slim.cut_point is not None else None,
        "notes": "; ".join(notes) + "." if notes else None,
        "pictures": stage.take(COMPARE_FIGURES) + stage.rest(),
    }


def render(stage: Stage) -> Markup:
    return render_template("compare.html", **context(stage))
