"""The analysis streams its maps batch by batch under a memory plan: the same matrix, npz and grid as computing
everything at once, progress that only grows, cancellation between batches, and a budget that is honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layercut.contracts.errors import Cancelled, LayercutError
from layercut.stages.analysis_maps import stream_maps
from layercut.stages.analysis_memory import MIB, default_batch_size, plan_memory, resident_bytes
from layercut.stages.architectures import build_model
from layercut.stages.gbp import (
    gbp_graph_bytes,
    guided_activations,
    guided_backprop_batches,
    guided_backprop_maps,
    map_images,
)
from layercut.stages.progress import Reporter
from layercut.stages.ssim import similarity_matrix
from layercut.testing.nets import random_images, seeded


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return seeded(build_model("resnet18", 3))


def _stream(model: torch.nn.Module, probes: torch.Tensor, path: Path, batch_size: int, reporter: Reporter):
    return stream_maps(
        model,
        probes,
        path,
        {"labels": np.arange(len(probes))},
        rule="relu",
        batch_size=batch_size,
        grayscale=False,
        data_range=1.0,
        grid_rows=3,
        device=torch.device("cpu"),
        reporter=reporter,
    )


def test_streamed_maps_equal_the_maps_computed_at_once(model: torch.nn.Module, tmp_path: Path) -> None:
    probes = random_images(5, 3, 32)
    raw = guided_backprop_maps(model, probes, batch_size=2)
    images = map_images(raw)
    expected = similarity_matrix(images, data_range=1.0)
    updates: list[float] = []
    streamed = _stream(model, probes, tmp_path / "maps.npz", 2, Reporter(callback=lambda s, f, m: updates.append(f)))
    # Two runs of the same float32 backward may differ in their last bits (CPU kernels split their sums by thread),
    # and SSIM then by about 1e-9 (seen in CI): the stream is held to float32's precision here; that streamed SSIM
    # sums equal the whole to 1e-13 for the same images is tests/core/test_ssim.py's.
    scale = float(raw.abs().max())
    assert np.abs(streamed.matrix - expected).max() < 1e-7
    assert float((streamed.grid_images - images[:3]).abs().max()) < 1e-5
    with np.load(tmp_path / "maps.npz") as npz:
        assert np.abs(npz["maps"] - raw.numpy()).max() < 1e-5 * scale and np.array_equal(npz["labels"], np.arange(5))
    assert updates == sorted(updates) and updates[0] == 0.0 and updates[-1] == pytest.approx(1.0)
    assert streamed.channels == 3 and min(streamed.gbp_seconds, streamed.ssim_seconds) > 0


def test_batches_come_one_at_a_time_and_equal_the_whole(model: torch.nn.Module) -> None:
    probes = random_images(5, 3, 32, seed=4)
    whole = guided_backprop_maps(model, probes, batch_size=5)
    scale = float(whole.abs().max())
    starts = []
    for start, batch in guided_backprop_batches(model, probes, batch_size=2):
        starts.append(start)
        assert batch.shape == (min(2, 5 - start), 9, 3, 32, 32)
        assert float((batch - whole[start : start + batch.shape[0]]).abs().max()) < 1e-5 * scale
    assert starts == [0, 2, 4]


def test_cancelling_between_batches_stops_and_leaves_no_npz(model: torch.nn.Module, tmp_path: Path) -> None:
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 12

    with pytest.raises(Cancelled):
        _stream(model, random_images(4, 3, 32), tmp_path / "maps.npz", 1, Reporter(should_cancel=should_cancel))
    assert list(tmp_path.iterdir()) == []
    assert not [name for name, m in model.named_modules() if "forward" in m.__dict__]  # activations restored at once


def test_relu_gates_are_kept_as_bool(model: torch.nn.Module) -> None:
    """The graph holds one gate per activation; bool is a quarter of a float32 mask."""
    saved: list[torch.dtype] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.dtype)
        return tensor

    x = random_images(1, 3, 32).requires_grad_()
    with guided_activations(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    assert saved.count(torch.bool) == 17  # resnet18: the stem's ReLU and two per basic block, 8 blocks


def test_graph_bytes_grow_with_the_image_area(model: torch.nn.Module) -> None:
    small = gbp_graph_bytes(model, (3, 32, 32))
    large = gbp_graph_bytes(model, (3, 64, 64))
    assert 3.5 < large / small < 4.5


def test_the_plan_lowers_the_batch_to_fit_the_budget(model: torch.nn.Module) -> None:
    kwargs = dict(rule="relu", device=torch.device("cpu"))
    free = plan_memory(model, (3, 64, 64), 9, 40, batch_size=32, budget_mb=None, **kwargs)
    assert free.batch_size == 32 and free.budget is None
    assert plan_memory(model, (3, 64, 64), 9, 5, batch_size=32, budget_mb=None, **kwargs).batch_size == 5
    per_image = free.peak(1) - free.peak(0)
    budget_mb = int((free.peak(0) + 3.5 * per_image) / MIB) + 1
    tight = plan_memory(model, (3, 64, 64), 9, 40, batch_size=32, budget_mb=budget_mb, **kwargs)
    assert tight.batch_size in (3, 4) and tight.peak() <= budget_mb * MIB
    assert tight.resident >= 0.5 * resident_bytes()


def test_a_budget_that_cannot_hold_one_image_is_refused_with_the_numbers(model: torch.nn.Module) -> None:
    with pytest.raises(LayercutError) as refused:
        plan_memory(model, (3, 224, 224), 9, 8, batch_size=8, budget_mb=256, rule="relu", device=torch.device("cpu"))
    message = str(refused.value)
    assert "memory budget of 256 MiB" in message and "224x224 px" in message
    assert "already in use by the process" in message and "guided-backprop graph" in message
    assert "--memory-budget" in message


def test_the_backward_is_a_cancellation_point_at_every_guided_activation(model: torch.nn.Module) -> None:
    """A backward from a deep cut point can take seconds at 224 px: cancellation is checked inside it."""
    calls: list[int] = []
    x = random_images(1, 3, 32).requires_grad_()
    with guided_activations(model, checkpoint=lambda: calls.append(1)):
        torch.autograd.grad(model(x).sum(), x)
    assert len(calls) == 17  # every ReLU use of resnet18 passed once

    def cancel() -> None:
        raise Cancelled("cancelled during analyze")

    with guided_activations(model, checkpoint=cancel), pytest.raises(Cancelled):
        torch.autograd.grad(model(x).sum(), x)


def test_the_default_batch_is_sized_to_the_image_and_the_device(model: torch.nn.Module) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [default_batch_size(s, s, cpu) for s in (224, 64, 32)] == [2, 24, 64]
    assert [default_batch_size(s, s, gpu) for s in (224, 448)] == [32, 8]
    plan = plan_memory(model, (3, 64, 64), 9, 40, batch_size=None, budget_mb=None, rule="relu", device=cpu)
    assert plan.batch_size == 24


def test_the_analysis_turns_tf32_off_on_a_gpu_and_restores_it(
    model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuDNN convolutions may use TF32 by default, which moves GBP maps by ~1e-3: the analysis runs under full
    float32 on a GPU (so its maps equal the CPU's) and leaves torch's settings as they were. The flags are plain
    settings, so this runs without a GPU; on the CPU nothing changes."""
    import layercut.stages.analysis_maps as analysis_maps
    from layercut.stages.devices import ieee_float32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    with ieee_float32(torch.device("cuda")):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with ieee_float32(torch.device("cpu")):
        assert (conv.fp32_precision, matmul.fp32_precision) == before

    seen: list[tuple[str, str]] = []

    def recording(device: torch.device):
        seen.append(("enter", device.type))
        return ieee_float32(device)

    monkeypatch.setattr(analysis_maps, "ieee_float32", recording)
    _stream(model, random_images(2, 3, 32), tmp_path / "maps.npz", 2, Reporter())
    assert seen == [("enter", "cpu")]
