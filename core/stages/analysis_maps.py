"""The analysis's maps, streamed: guided backprop, map images, SSIM sums and ``gbp_maps.npz``, one batch at a time.

Nothing here holds the maps of every probe image: each GBP batch is turned into map images, added to the SSIM
sums (the mean over images is a sum), written to the npz and dropped, so memory is bounded by the batch the
memory plan chose, not by the number of probes (docs/design.md defines every step; this only orders them).
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layercut.stages.devices import ieee_float32
from layercut.stages.gbp import guided_backprop_batches, map_images
from layercut.stages.npz_stream import NpzWriter
from layercut.stages.progress import Reporter, interleaved
from layercut.stages.ssim import SimilarityAccumulator

GBP_SHARE = 0.8
"""The part of the maps' progress given to guided backprop (the SSIM and the writing take the rest)."""


@dataclass(frozen=True)
class StreamedMaps:
    """What the analysis keeps of its maps: the SSIM matrix, the first map images for the grid, the timings."""

    matrix: np.ndarray
    grid_images: torch.Tensor
    gbp_seconds: float
    ssim_seconds: float
    maps_seconds: float
    ssim_engine: str
    """``numba`` (the CPU's fused kernels) or ``torch`` (a GPU's passes): see ``SimilarityAccumulator``."""

    @property
    def channels(self) -> int:
        """Channels of the compared map images (1 when grayscale)."""
        return int(self.grid_images.shape[2])


def stream_maps(
    model: nn.Module,
    probes: torch.Tensor,
    npz_path: Path,
    extra_arrays: dict[str, np.ndarray],
    *,
    rule: str,
    batch_size: int,
    grayscale: bool,
    data_range: float,
    grid_rows: int,
    device: torch.device,
    reporter: Reporter,
) -> StreamedMaps:
    """GBP maps of ``probes`` (normalised, (N, C, H, W)) at every cut point, their SSIM matrix and
    ``gbp_maps.npz`` (raw maps as ``maps`` (N, L, C, H, W) float32, beside ``extra_arrays``)."""
    gbp_reporter, ssim_reporter = interleaved(reporter, (GBP_SHARE, 1 - GBP_SHARE))
    n = probes.shape[0]
    batches = guided_backprop_batches(model, probes, rule=rule, batch_size=batch_size, reporter=gbp_reporter)
    accumulator: SimilarityAccumulator | None = None
    grid: list[torch.Tensor] = []
    seconds = {"gbp": 0.0, "ssim": 0.0, "maps": 0.0}
    # closing: a cancel or an error between batches restores the model's activations at once, not when the
    # suspended generator is collected
    with ieee_float32(device), NpzWriter(npz_path) as npz, closing(batches):
        for name, array in extra_arrays.items():
            npz.add(name, array)
        stream = None
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            seconds["gbp"] += time.perf_counter() - t0
            if batch is None:
                break
            start, raw = batch
            t0 = time.perf_counter()
            if stream is None:
                stream = npz.stream("maps", (n, *raw.shape[1:]), np.float32)
            stream.write(raw.numpy())
            images = map_images(raw, grayscale=grayscale)
            del raw
            if start < grid_rows:
                grid.append(images[: grid_rows - start].clone())
            seconds["maps"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if accumulator is None:
                accumulator = SimilarityAccumulator(
                    images.shape[1], data_range=data_range, reporter=ssim_reporter, total_images=n, device=device
                )
            accumulator.add(images)
            seconds["ssim"] += time.perf_counter() - t0
            del images
    assert accumulator is not None, "at least one probe image"
    grid_images = torch.cat(grid)
    return StreamedMaps(
        matrix=accumulator.matrix(),
        grid_images=grid_images,
        gbp_seconds=seconds["gbp"],
        ssim_seconds=seconds["ssim"],
        maps_seconds=seconds["maps"],
        ssim_engine=accumulator.engine,
    )
