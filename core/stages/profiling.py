"""Cost of a model: parameters, MACs, checkpoint size and latency, and the base-vs-slim comparison.

These are the numbers the compare stage reports next to accuracy, so they say how they were measured
(device, threads, batch size, repeats) and never assert more than was measured.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

Shape4 = tuple[int, int, int, int]
COMPARED_METRICS = ("accuracy", "macro_f1", "params", "macs", "checkpoint_bytes")
REDUCED_METRICS = ("params", "macs", "checkpoint_bytes")


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model (trainable or not), counting shared tensors once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model and all submodules in eval mode and restore each one's mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def count_macs(model: nn.Module, input_shape: Shape4) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape`` (FLOPs / 2 from torch's flop counter).

    Counts convolutions and matrix products (what dominates a CNN); element-wise ops and biases are not counted.
    """
    x = torch.zeros(input_shape, device=_model_device(model))
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def _device_name(device: torch.device) -> str:
    """A human-readable device name: "cpu" or the GPU's marketing name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


MAX_TIMING_SECONDS = 30.0
"""A latency measurement stops after this many seconds of timed runs (keeping at least ``MIN_TIMED_RUNS``)."""
MIN_TIMED_RUNS = 3


def _timed_runs(repeats: int, max_seconds: float | None, before_each: Callable[[], None] | None) -> Iterator[int]:
    """Run indices: ``repeats`` of them, fewer once ``max_seconds`` have passed, ``before_each`` called first."""
    started = time.perf_counter()
    for index in range(repeats):
        if max_seconds is not None and index >= MIN_TIMED_RUNS and time.perf_counter() - started > max_seconds:
            return
        if before_each is not None:
            before_each()
        yield index


def _time_cpu(run, repeats: int, max_seconds: float | None = None, before_each=None) -> list[float]:
    times = []
    for _ in _timed_runs(repeats, max_seconds, before_each):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _time_cuda(
    run, repeats: int, device: torch.device, max_seconds: float | None = None, before_each=None
) -> list[float]:
    times = []
    for _ in _timed_runs(repeats, max_seconds, before_each):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize(device)
        times.append(float(start.elapsed_time(end)))
    return times


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default rule) of already sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(
    times: list[float],
    input_shape: Shape4,
    *,
    device: str,
    device_type: str,
    threads: int,
    warmup: int,
    **extra: Any,
) -> dict[str, Any]:
    """The record of timed runs (milliseconds each), shaped as ``measure_latency``'s, for a runtime that is timed
    elsewhere (ONNX Runtime: ``extra`` carries ``runtime``): median, 10th/90th percentile, mean and every time."""
    if not times:
        raise ValueError("no timed runs to summarise")
    ordered = sorted(times)
    return {
        "device": device,
        "device_type": device_type,
        "threads": threads,
        "batch_size": int(input_shape[0]),
        "input_shape": [int(v) for v in input_shape],
        "warmup": warmup,
        "repeats": len(times),
        "median_ms": float(statistics.median(times)),
        "p10_ms": float(_percentile(ordered, 0.10)),
        "p90_ms": float(_percentile(ordered, 0.90)),
        "mean_ms": float(statistics.fmean(times)),
        "times_ms": [float(t) for t in times],
        **extra,
    }


def measure_latency(
    model: nn.Module,
    input_shape: Shape4,
    *,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    max_seconds: float | None = MAX_TIMING_SECONDS,
    before_each: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Milliseconds per forward pass at ``input_shape`` after warm-up, under inference mode, on ``device``.

    The model is moved to ``device`` for the measurement and moved back, its train/eval mode and the torch
    thread count are restored afterwards. The result records how it was measured (``repeats`` says how many runs
    were timed: fewer than asked once ``max_seconds`` have passed). ``before_each`` runs before every run, warm-up
    included: a cancellation point.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    original_device = _model_device(model)
    original_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model.to(dev)
        x = torch.randn(input_shape, device=dev)
        with _eval_mode(model), torch.inference_mode():

            def run() -> None:
                model(x)

            for _ in _timed_runs(warmup, max_seconds, before_each):
                run()
            times = (
                _time_cuda(run, repeats, dev, max_seconds, before_each)
                if dev.type == "cuda"
                else _time_cpu(run, repeats, max_seconds, before_each)
            )
        threads_used = torch.get_num_threads()
    finally:
        model.to(original_device)
        torch.set_num_threads(original_threads)
    return latency_summary(
        times, input_shape, device=_device_name(dev), device_type=dev.type, threads=threads_used, warmup=warmup
    )


def checkpoint_bytes(path: str | os.PathLike[str]) -> int:
    """Size of a checkpoint file on disk, in bytes."""
    return Path(path).stat().st_size


def _ratio(slim: float, base: float) -> float | None:
    return float(slim) / float(base) if base else None


def _batch_size(key: str, entry: dict[str, Any]) -> int | None:
    """The batch size of a latency entry: its own ``batch_size``, else the digits at the end of its key."""
    if "batch_size" in entry:
        return int(entry["batch_size"])
    match = re.search(r"(\d+)$", key)
    return int(match.group(1)) if match else None


def _latency_order(key: str, entry: dict[str, Any]) -> tuple[int, int, str]:
    """CPU entries first, then by batch size, so tables and charts read the same way every time."""
    device_type = entry.get("device_type", entry.get("device", ""))
    return (0 if device_type == "cpu" else 1, _batch_size(key, entry) or 0, key)


def compare_models(base: dict[str, Any], slim: dict[str, Any]) -> dict[str, Any]:
    """The base-vs-slim record: each metric with delta (slim − base) and ratio (slim / base), reductions, speed-ups.

    Each summary has accuracy, macro_f1, params, macs, checkpoint_bytes and latency ({key: measure_latency dict},
    keyed by batch size or by any label such as "cpu_b32"); keys present in only one summary are left out.
    Ratios with a zero base are null.
    """
    metrics = {}
    for key in COMPARED_METRICS:
        b, s = base[key], slim[key]
        metrics[key] = {"base": b, "slim": s, "delta": s - b, "ratio": _ratio(s, b)}
    reduction = {
        key: (100.0 * (1.0 - metrics[key]["ratio"]) if metrics[key]["ratio"] is not None else None)
        for key in REDUCED_METRICS
    }
    base_lat = {str(k): v for k, v in (base.get("latency") or {}).items()}
    slim_lat = {str(k): v for k, v in (slim.get("latency") or {}).items()}
    latency = {}
    for key in sorted(set(base_lat) & set(slim_lat), key=lambda k: _latency_order(k, base_lat[k])):
        b, s = base_lat[key], slim_lat[key]
        latency[key] = {
            "batch_size": _batch_size(key, b),
            "device": b.get("device"),
            "device_type": b.get("device_type", b.get("device")),
            "base_ms": b["median_ms"],
            "slim_ms": s["median_ms"],
            "delta_ms": s["median_ms"] - b["median_ms"],
            "ratio": _ratio(s["median_ms"], b["median_ms"]),
            "speedup": _ratio(b["median_ms"], s["median_ms"]),
        }
    return {
        "metrics": metrics,
        "reduction_percent": reduction,
        "latency": latency,
        "latency_statistic": "median milliseconds per forward pass",
    }
