"""The analysis's memory plan: how many probe images one GBP batch may hold under a memory budget.

The analysis streams: one batch of probe images at a time goes through guided backprop, map images, the SSIM
sums and ``gbp_maps.npz``, and is dropped. Its peak is therefore the process's memory before it started, plus
the model, plus per image of the batch its GBP graph and maps, plus the SSIM's working memory, whatever the
number of probes. The graph of one image is measured (one forward of one image), the rest is counted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import sys

import torch
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.stages.gbp import gbp_graph_bytes
from layercut.stages.ssim import GPU_MAX_ELEMENTS

MIB = 1024**2
GRAPH_MARGIN = 1.25
"""Allowance over the measured graph for what the allocator keeps and the backward's temporaries."""
FIXED_MARGIN = 64 * MIB
"""Allowance for the pictures, the npz writer's buffers and Python objects."""
BATCH_PIXELS = {"cpu": 2 * 224 * 224, "cuda": 32 * 224 * 224}
"""Probe pixels per GBP batch when the user sets no batch size. On the CPU small batches are fastest: ResNet-50
at 224 px took 1.62 / 1.92 / 1.93 / 3.14 s per image in batches of 2 / 4 / 8 / 16 with one thread and
0.84 / 0.96 / 1.10 / 1.29 s with two (2-core AMD EPYC): the backward of a small batch stays in the cache.
On a GPU large batches keep it busy."""
MAX_DEFAULT_BATCH = 64


def default_batch_size(height: int, width: int, device: torch.device) -> int:
    """The GBP batch when the user sets none: ``BATCH_PIXELS`` of the device's kind in images of this size."""
    pixels = BATCH_PIXELS.get(device.type, BATCH_PIXELS["cuda"])
    return max(1, min(MAX_DEFAULT_BATCH, pixels // (height * width)))


def resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc``; elsewhere its peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_resident_bytes()


def peak_resident_bytes() -> int:
    """The process's peak resident memory so far (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The numbers the batch size was chosen from, all in bytes."""

    budget: int | None
    resident: int
    model: int
    graph_per_image: int
    maps_per_image: int
    ssim: int
    batch_size: int

    def peak(self, batch_size: int | None = None) -> int:
        """Estimated peak resident memory with ``batch_size`` images per batch (default: the planned one)."""
        batch = self.batch_size if batch_size is None else batch_size
        per_image = math.ceil(self.graph_per_image * GRAPH_MARGIN) + self.maps_per_image
        return self.resident + self.model + self.ssim + FIXED_MARGIN + batch * per_image


def ssim_working_bytes(layers: int, channels: int, height: int, width: int, win_size: int, device: torch.device) -> int:
    """Float64 memory of ``SimilarityAccumulator`` for one image: the maps, three per-map terms, and on a GPU the
    torch engine's work buffers (the CPU's fused kernels need a few rows per thread)."""
    per_map = channels * height * width
    per_term = channels * (height - win_size + 1) * (width - win_size + 1)
    work = 0 if device.type == "cpu" else 5 * max(GPU_MAX_ELEMENTS, per_map)
    return 8 * (layers * per_map + 3 * layers * per_term + work)


def plan_memory(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    layers: int,
    probes: int,
    *,
    batch_size: int | None,
    budget_mb: int | None,
    rule: str,
    device: torch.device,
    win_size: int = 7,
) -> MemoryPlan:
    """The largest GBP batch (at most ``batch_size``, or ``default_batch_size``, and ``probes``) whose estimated
    peak fits ``budget_mb``.

    Raises ``LayercutError`` with the numbers when even one image at a time would not fit. On a GPU the graph
    lives in GPU memory, which is checked against what the device has free instead of the budget.
    """
    channels, height, width = image_shape
    model_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    graph = gbp_graph_bytes(model, image_shape, rule)
    on_gpu = device.type == "cuda"
    plan = MemoryPlan(
        budget=None if budget_mb is None else budget_mb * MIB,
        resident=resident_bytes(),
        model=0 if on_gpu else model_bytes,
        graph_per_image=0 if on_gpu else graph,
        maps_per_image=2 * 4 * layers * channels * height * width,
        ssim=0 if on_gpu else ssim_working_bytes(layers, channels, height, width, win_size, device),
        batch_size=max(1, min(batch_size or default_batch_size(height, width, device), probes)),
    )
    batch = plan.batch_size
    if plan.budget is not None:
        per_image = plan.peak(1) - plan.peak(0)
        fits = (plan.budget - plan.peak(0)) // per_image
        if fits < 1:
            raise LayercutError(_too_big(plan, image_shape, layers))
        batch = min(batch, int(fits))
    if on_gpu:
        free, _ = torch.cuda.mem_get_info(device)
        gpu_fixed = model_bytes + ssim_working_bytes(layers, channels, height, width, win_size, device)
        gpu_fits = int((free * 0.9 - gpu_fixed) // max(1, math.ceil(graph * GRAPH_MARGIN)))
        if gpu_fits < 1:
            raise LayercutError(
                f"the analysis does not fit the GPU: one image's guided-backprop graph needs about "
                f"{graph * GRAPH_MARGIN / MIB:,.0f} MiB and the model and SSIM {gpu_fixed / MIB:,.0f} MiB, but "
                f"{free / MIB:,.0f} MiB are free; analyze on the CPU (--device cpu) or at a smaller image size."
            )
        batch = min(batch, gpu_fits)
    return dataclasses.replace(plan, batch_size=batch)


def _too_big(plan: MemoryPlan, image_shape: tuple[int, int, int], layers: int) -> str:
    """The refusal: what one image at a time would need, part by part, against the budget."""
    assert plan.budget is not None
    parts = [
        f"{plan.resident / MIB:,.0f} MiB already in use by the process",
        f"{plan.model / MIB:,.0f} MiB for the model",
        f"{plan.graph_per_image * GRAPH_MARGIN / MIB:,.0f} MiB for one image's guided-backprop graph",
        f"{plan.maps_per_image / MIB:,.0f} MiB for its maps of {layers} cut points",
        f"{plan.ssim / MIB:,.0f} MiB for the SSIM",
    ]
    size = "x".join(str(v) for v in image_shape[1:])
    return (
        f"the analysis at {size} px needs about {plan.peak(1) / MIB:,.0f} MiB even one probe image at a time "
        f"({', '.join(parts)}), more than the memory budget of {plan.budget / MIB:,.0f} MiB; raise the budget "
        "(--memory-budget, or analyze.memory_budget_mb up to the worker's LAYERCUT_ANALYZE_MEMORY_BUDGET_MB) or "
        "analyze at a smaller image size."
    )
