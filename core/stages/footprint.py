"""Measuring what an architecture needs in memory, to write the table the API estimates jobs from without torch
(``layercut.contracts.footprints``): its parameters, and the bytes autograd saves per image for the backward pass
as a function of the image's pixels (two sizes measured, a line through them; two batch sizes, so that what does
not grow with the batch — the weights a layer saves — drops out).

    python -m layercut.stages.footprint            # rewrites core/contracts/footprints.py

Measured on the meta device (shapes only: no memory or arithmetic, any size of model); a model whose initialisation
reads values (RegNet) is built on the CPU first, then moved there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from layercut.contracts.configs import ARCHITECTURE_NAMES
from layercut.stages.architectures import build_model

SIZES = (96, 160)
"""Image sizes measured (inception_v3 needs at least 75 px)."""
CLASSES = 10


@dataclass(frozen=True)
class Footprint:
    """One architecture: parameters, and saved bytes per image ≈ ``fixed + per_pixel · size²``."""

    params: int
    fixed: int
    per_pixel: float


def saved_bytes(model: nn.Module, batch: int, size: int, device: torch.device) -> int:
    """Bytes of the tensors autograd saves in one training forward of ``batch`` images (each tensor once)."""
    seen: dict[int, torch.Tensor] = {}  # by id, each tensor held so that no id is reused within the forward

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[id(tensor)] = tensor
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(batch, 3, size, size, device=device))
    return sum(t.numel() * t.element_size() for t in seen.values())


def per_image(model: nn.Module, size: int, device: torch.device) -> float:
    """Saved bytes that one more image adds at ``size`` px (batches of 2 and 4: batch norm needs two values per
    channel in training)."""
    return (saved_bytes(model, 4, size, device) - saved_bytes(model, 2, size, device)) / 2


def measure(arch: str) -> Footprint:
    """The footprint of ``arch`` (for a 10-class head; the head's share is small beside the body's)."""
    meta = torch.device("meta")
    try:
        with meta:
            model = build_model(arch, CLASSES)
    except (NotImplementedError, RuntimeError):  # an initialisation that reads values: built for real, then moved
        model = build_model(arch, CLASSES).to(meta)
    points = [per_image(model.train(), size, meta) for size in SIZES]
    params = sum(p.numel() for p in model.parameters())
    (s0, b0), (s1, b1) = zip(SIZES, points)
    per_pixel = (b1 - b0) / (s1 * s1 - s0 * s0)
    return Footprint(params, max(0, round(b0 - per_pixel * s0 * s0)), per_pixel)


def table_source(footprints: dict[str, Footprint]) -> str:
    """The contracts module holding the table (generated: edit this function, not its output)."""
    rows = "\n".join(
        f'    "{arch}": ({f.params}, {f.fixed}, {f.per_pixel:.4f}),' for arch, f in sorted(footprints.items())
    )
    return f'''"""What each built-in architecture needs in memory: (parameters, saved bytes per training image at 0 px,
saved bytes per training image per pixel), as measured by ``python -m layercut.stages.footprint`` (generated; do
not edit). The API estimates a job's memory from it without torch (``layercut.contracts.memory``)."""

FOOTPRINTS: dict[str, tuple[int, int, float]] = {{
{rows}
}}
'''


def main() -> None:
    target = Path(__file__).resolve().parents[1] / "contracts" / "footprints.py"
    footprints = {}
    for arch in ARCHITECTURE_NAMES:
        footprints[arch] = measure(arch)
        print(f"{arch:22s} {footprints[arch]}", file=sys.stderr)
    target.write_text(table_source(footprints), encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
