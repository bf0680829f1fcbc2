"""How the report writes numbers: registered once as Jinja filters, and used by the sections for their sentences.

Every formatter takes any value and writes "—" when it is not a finite number, so a missing metric never breaks
a table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from layercut.report.reading import is_number

MISSING = "—"


def pct(value: Any, digits: int = 1) -> str:
    """0.8123 → '81.2%'."""
    return f"{value:.{digits}%}" if is_number(value) else MISSING


def dec(value: Any, digits: int = 3) -> str:
    """0.81234 → '0.812'."""
    return f"{value:.{digits}f}" if is_number(value) else MISSING


def human(value: Any, unit: str = "") -> str:
    """1234567 → '1.23M' (the CLI's style); with a unit, 1234567 → '1.23 MB'."""
    if not is_number(value):
        return MISSING
    n = float(value)
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{' ' if unit else ''}{prefix}{unit}"
        n /= 1000
    return f"{n:.3g}{' ' if unit else ''}P{unit}"


def integer(value: Any) -> str:
    """60883 → '60,883'."""
    return f"{int(value):,}" if is_number(value) else MISSING


def ms(value: Any) -> str:
    """0.4 → '0.40 ms'."""
    return f"{value:.2f} ms" if is_number(value) else MISSING


def speed(speedup: float) -> str:
    """2.0 → '2.00× faster', 0.5 → '2.00× slower'."""
    return f"{speedup:.2f}× faster" if speedup >= 1 else f"{1 / speedup:.2f}× slower"


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "torchscript": "TorchScript", "exported_program": "ExportedProgram"}
"""The runtimes a latency label may start with (``onnxruntime_cpu_b1``), in words; torch itself has no prefix."""


def latency_label(key: str, batch_size: int | None = None) -> str:
    """A latency label of the compare result ('cpu_b1', 'onnxruntime_cpu_b1') as words: 'CPU, batch 1',
    'ONNX Runtime CPU, batch 1' (the batch size recorded with the measurement, else the one the label names)."""
    where, _, batch = str(key).rpartition("_b") if "_b" in str(key) else (str(key), "", "")
    runtime, _, device = where.rpartition("_")
    named = f"{RUNTIME_NAMES.get(runtime, runtime)} {device.upper()}" if runtime else where.upper()
    return f"{named}, batch {batch if batch_size is None else batch_size}"


def slug(label: str) -> str:
    """A status as a CSS class suffix: 'not run yet' → 'not-run-yet'."""
    return "".join(c if c.isalnum() else "-" for c in label.lower())


FILTERS: dict[str, Callable[..., str]] = {
    "pct": pct,
    "dec": dec,
    "human": human,
    "integer": integer,
    "ms": ms,
    "speed": speed,
    "slug": slug,
}
"""The template filters: ``{{ model.accuracy|pct }}``, ``{{ size|human("B") }}``."""
