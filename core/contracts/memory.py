"""Estimating a job's peak memory on a worker from its parameters, without torch: the API refuses at submit what
cannot fit a worker (``LAYERCUT_WORKER_MEMORY_MB``) instead of letting it fail, or take the machine down, later.

Training needs the process itself, the weights with their gradients and optimizer state, and per image what
autograd saves for the backward pass (``layercut.contracts.footprints``, measured per architecture). The analysis
needs, per probe image, about what training saves per image (the guided backward keeps the same graph); it lowers
its own batch to fit, so only one image that cannot fit is refused. Architectures outside the table (timm models)
are not estimated here: the worker's own checks see to them.
"""

from __future__ import annotations

from dataclasses import dataclass

from layercut.contracts.footprints import FOOTPRINTS

MIB = 2**20
PROCESS_BYTES = 900 * MIB
"""A worker process with torch, the stages and a dataset loaded, before any model (measured: 0.79–0.83 GiB)."""
OPTIMIZER_STATES = {"adam": 2, "sgd": 1}
"""Tensors of the parameters' size each optimizer keeps (AdamW: two moments; SGD: momentum)."""
WEIGHT_COPIES = 4
"""Besides the optimizer's: the weights, their gradients, the best epoch's copy kept for early stopping, and the
copy the checkpoint is written from."""
BACKWARD_HEADROOM = 2.0
"""Peak activation memory over what autograd saved: the backward holds the gradients of activations beside them.
Calibrated with ``python bench/memory.py`` (one epoch on textures, peak RSS measured → estimated): resnet18 64 px batch 64
AdamW 1.24 → 1.34 GiB, vgg11 64 px batch 32 AdamW 4.16 → 4.01 GiB, resnet50 128 px batch 16 SGD 2.33 → 2.15 GiB."""


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's estimated peak resident memory, part by part (bytes)."""

    total: int
    process: int
    weights: int
    per_image: int
    images: int

    def explain(self) -> str:
        """The parts in words, for a refusal."""
        return (
            f"about {self.total / 2**30:.1f} GiB: the process {self.process / 2**30:.1f} GiB, weights with gradients "
            f"and optimizer state {self.weights / 2**30:.1f} GiB, and {self.images} image(s) × "
            f"{self.per_image / MIB:.0f} MiB of activations"
        )


def per_image_bytes(arch: str, image_size: int) -> int | None:
    """Bytes autograd saves per training image of ``image_size`` px; None for an architecture not in the table."""
    row = FOOTPRINTS.get(arch)
    if row is None:
        return None
    _, fixed, per_pixel = row
    return int(fixed + per_pixel * image_size * image_size)


def training_memory(arch: str, image_size: int, batch_size: int, optimizer: str) -> MemoryEstimate | None:
    """The peak memory of training ``arch`` on batches of ``batch_size`` images; None when it cannot be estimated."""
    per_image = per_image_bytes(arch, image_size)
    if per_image is None:
        return None
    params = FOOTPRINTS[arch][0]
    weights = params * 4 * (WEIGHT_COPIES + OPTIMIZER_STATES.get(optimizer, 2))
    activations = int(batch_size * per_image * BACKWARD_HEADROOM)
    return MemoryEstimate(PROCESS_BYTES + weights + activations, PROCESS_BYTES, weights, per_image, batch_size)


def batch_that_fits(one: MemoryEstimate | None, limit_bytes: int) -> int:
    """The largest batch whose estimate (``one``: the estimate of a single image) fits ``limit_bytes`` (0: none)."""
    if one is None:
        return 0
    room = limit_bytes - one.process - one.weights
    return max(0, int(room // (one.per_image * BACKWARD_HEADROOM)))


def largest_batch(arch: str, image_size: int, optimizer: str, limit_bytes: int) -> int:
    """The largest training batch estimated to fit ``limit_bytes`` (0: not even one image)."""
    return batch_that_fits(training_memory(arch, image_size, 1, optimizer), limit_bytes)


def analysis_memory(arch: str, image_size: int) -> MemoryEstimate | None:
    """The least an analysis needs: one probe image's guided-backprop graph beside the model (the analysis lowers
    its batch to its budget, so this is what cannot be lowered)."""
    per_image = per_image_bytes(arch, image_size)
    if per_image is None:
        return None
    weights = FOOTPRINTS[arch][0] * 4
    return MemoryEstimate(PROCESS_BYTES + weights + per_image, PROCESS_BYTES, weights, per_image, 1)


def explanation_memory(arch: str, image_size: int, batch_size: int) -> MemoryEstimate | None:
    """The peak memory of explaining ``batch_size`` images at a time: the gradient methods (Grad-CAM, guided
    backprop, saliency) run a backward per batch, so each image costs about what training saves for it."""
    per_image = per_image_bytes(arch, image_size)
    if per_image is None:
        return None
    weights = FOOTPRINTS[arch][0] * 4 * 2  # the weights and the gradients the backward fills
    activations = int(batch_size * per_image * BACKWARD_HEADROOM)
    return MemoryEstimate(PROCESS_BYTES + weights + activations, PROCESS_BYTES, weights, per_image, batch_size)
