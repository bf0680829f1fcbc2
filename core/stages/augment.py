"""Training-time augmentation: random flips and translations applied to a batch on the training device.

It moves pixels only (never changes their values), so it works on uint8 or normalised batches alike, and
draws from a caller's seeded generator so that a training run is reproducible.
"""

from __future__ import annotations

import torch


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flip and reflect-padded random translation (up to 1/8 of the size).

    Batched gathers on the images' device; the random draws come from ``generator`` (on its own device),
    so a seeded generator gives the same result every time. Values are only moved, never changed.
    """
    if images.dim() != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if batch == 0:
        return images.clone()
    gen_device = generator.device
    flip = torch.rand(batch, generator=generator, device=gen_device) < 0.5
    pad_h, pad_w = height // 8, width // 8
    shift_y = torch.randint(-pad_h, pad_h + 1, (batch,), generator=generator, device=gen_device)
    shift_x = torch.randint(-pad_w, pad_w + 1, (batch,), generator=generator, device=gen_device)
    device = images.device
    flip, shift_y, shift_x = flip.to(device), shift_y.to(device), shift_x.to(device)

    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    rows = _reflect(ys.unsqueeze(0) + shift_y.unsqueeze(1), height)  # (B, H)
    out_x = torch.where(flip.unsqueeze(1), (width - 1 - xs).unsqueeze(0), xs.unsqueeze(0))
    cols = _reflect(out_x + shift_x.unsqueeze(1), width)  # (B, W)
    picked = images.gather(2, rows.view(batch, 1, height, 1).expand(batch, channels, height, width))
    return picked.gather(3, cols.view(batch, 1, 1, width).expand(batch, channels, height, width))


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices just outside ``0..size-1`` back inside without repeating the edge ('reflect' padding)."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)
