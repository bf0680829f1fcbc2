"""Parameters, MACs, latency bookkeeping and the comparison record, all checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from layercut.contracts.errors import Cancelled
from layercut.stages.profiling import (
    checkpoint_bytes,
    compare_models,
    count_macs,
    count_parameters,
    measure_latency,
)


def tiny_net() -> nn.Sequential:
    # conv 3→4, 3x3, padding 1 on 8x8 → 4x8x8; flatten 256 → linear 10
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_count_parameters_by_hand() -> None:
    conv = 4 * 3 * 3 * 3 + 4  # weights + bias = 112
    linear = 256 * 10 + 10  # = 2570
    assert count_parameters(tiny_net()) == conv + linear == 2682


def test_shared_parameters_counted_once() -> None:
    lin = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(lin, lin)) == 12


def test_count_macs_by_hand() -> None:
    conv = 4 * 3 * 9 * 64  # out channels * in channels * kernel area * output pixels = 6912
    linear = 256 * 10  # in * out = 2560
    net = tiny_net()
    assert count_macs(net, (1, 3, 8, 8)) == conv + linear == 9472
    assert count_macs(net, (2, 3, 8, 8)) == 2 * 9472


def test_count_macs_restores_mode_and_grad() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(256, 2)
    )
    net.train()
    net[1].eval()  # a mixed state must come back exactly
    stats = net[1].running_mean.clone()
    count_macs(net, (1, 3, 8, 8))
    assert net.training and not net[1].training and net[2].training
    assert torch.equal(net[1].running_mean, stats)
    assert all(p.grad is None for p in net.parameters())


def test_measure_latency_structure() -> None:
    net = tiny_net().train()
    threads_before = torch.get_num_threads()
    result = measure_latency(net, (4, 3, 8, 8), warmup=1, repeats=2, threads=1)
    assert result["device"] == "cpu" and result["device_type"] == "cpu"
    assert result["threads"] == 1 and torch.get_num_threads() == threads_before
    assert result["batch_size"] == 4 and result["input_shape"] == [4, 3, 8, 8]
    assert result["repeats"] == 2 and len(result["times_ms"]) == 2 and result["warmup"] == 1
    assert all(t > 0 for t in result["times_ms"])
    assert result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert min(result["times_ms"]) <= result["mean_ms"] <= max(result["times_ms"])
    assert net.training  # mode restored
    json.dumps(result)


def test_measure_latency_counts_forwards() -> None:
    calls = []
    net = tiny_net()
    net.register_forward_hook(lambda *_: calls.append(torch.is_inference_mode_enabled()))
    measure_latency(net, (1, 3, 8, 8), warmup=2, repeats=3)
    assert calls == [True] * 5


def test_measure_latency_stops_at_its_time_limit_and_on_cancel() -> None:
    """10**9 timed runs asked: the limit keeps the measurement to about its seconds (at least 3 runs), and the hook
    before every run (a job's cancellation point) stops it at once."""
    result = measure_latency(tiny_net(), (1, 3, 8, 8), warmup=10**9, repeats=10**9, max_seconds=0.2)
    assert 3 <= result["repeats"] == len(result["times_ms"]) < 10**9
    calls = []

    def cancel_after_five() -> None:
        calls.append(1)
        if len(calls) > 5:
            raise Cancelled("cancelled during compare")

    with pytest.raises(Cancelled):
        measure_latency(tiny_net(), (1, 3, 8, 8), warmup=2, repeats=10**9, before_each=cancel_after_five)
    assert len(calls) == 6


def test_measure_latency_rejects_no_repeats() -> None:
    with pytest.raises(ValueError):
        measure_latency(tiny_net(), (1, 3, 8, 8), repeats=0)


def test_checkpoint_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"x" * 1234)
    assert checkpoint_bytes(path) == 1234 and checkpoint_bytes(str(path)) == 1234


def _summary(accuracy: float, f1: float, params: int, macs: int, size: int, lat1: float, lat32: float) -> dict:
    return {
        "accuracy": accuracy,
        "macro_f1": f1,
        "params": params,
        "macs": macs,
        "checkpoint_bytes": size,
        "latency": {1: {"median_ms": lat1, "device": "cpu"}, "32": {"median_ms": lat32, "device": "cpu"}},
    }


def test_compare_models_by_hand() -> None:
    base = _summary(0.90, 0.88, 1_000_000, 400_000_000, 4_000_000, 10.0, 200.0)
    slim = _summary(0.85, 0.80, 250_000, 100_000_000, 1_000_000, 4.0, 50.0)
    cmp = compare_models(base, slim)
    acc = cmp["metrics"]["accuracy"]
    assert acc["base"] == 0.90 and acc["slim"] == 0.85
    assert acc["delta"] == pytest.approx(-0.05) and acc["ratio"] == pytest.approx(0.85 / 0.90)
    assert cmp["metrics"]["macro_f1"]["delta"] == pytest.approx(-0.08)
    assert cmp["metrics"]["params"] == {"base": 1_000_000, "slim": 250_000, "delta": -750_000, "ratio": 0.25}
    assert cmp["reduction_percent"] == pytest.approx({"params": 75.0, "macs": 75.0, "checkpoint_bytes": 75.0})
    assert set(cmp["latency"]) == {"1", "32"}  # int and str batch keys both accepted
    assert cmp["latency"]["1"]["speedup"] == pytest.approx(2.5)
    assert cmp["latency"]["1"]["delta_ms"] == pytest.approx(-6.0)
    assert cmp["latency"]["32"]["speedup"] == pytest.approx(4.0)
    assert cmp["latency"]["32"]["ratio"] == pytest.approx(0.25)
    assert cmp["latency"]["32"]["device"] == "cpu" and cmp["latency"]["32"]["batch_size"] == 32
    json.dumps(cmp)


def test_compare_models_zero_base_and_missing_batches() -> None:
    base = _summary(0.0, 0.0, 10, 0, 5, 1.0, 2.0)
    slim = _summary(0.5, 0.5, 5, 0, 5, 1.0, 2.0)
    del slim["latency"]["32"]
    cmp = compare_models(base, slim)
    assert cmp["metrics"]["accuracy"]["ratio"] is None and cmp["reduction_percent"]["macs"] is None
    assert cmp["reduction_percent"]["checkpoint_bytes"] == 0.0
    assert list(cmp["latency"]) == ["1"]


def test_compare_models_with_device_labelled_keys_as_stages_use() -> None:
    def lat(ms: float, batch: int, device: str, device_type: str) -> dict:
        return {"median_ms": ms, "batch_size": batch, "device": device, "device_type": device_type}

    base = _summary(0.9, 0.9, 100, 1000, 50, 1.0, 1.0)
    slim = _summary(0.9, 0.9, 50, 500, 25, 1.0, 1.0)
    base["latency"] = {
        "gpu_b1": lat(2.0, 1, "NVIDIA H100", "cuda"),
        "cpu_b32": lat(90.0, 32, "cpu", "cpu"),
        "cpu_b1": lat(6.0, 1, "cpu", "cpu"),
    }
    slim["latency"] = {
        "gpu_b1": lat(1.0, 1, "NVIDIA H100", "cuda"),
        "cpu_b32": lat(30.0, 32, "cpu", "cpu"),
        "cpu_b1": lat(3.0, 1, "cpu", "cpu"),
    }
    cmp = compare_models(base, slim)
    assert list(cmp["latency"]) == ["cpu_b1", "cpu_b32", "gpu_b1"]  # CPU first, then by batch
    assert [cmp["latency"][k]["speedup"] for k in cmp["latency"]] == pytest.approx([2.0, 3.0, 2.0])
    assert cmp["latency"]["gpu_b1"]["device"] == "NVIDIA H100" and cmp["latency"]["cpu_b32"]["batch_size"] == 32
