"""Training-time augmentation moves pixels (flips, reflect-padded shifts) deterministically per seed."""

import torch

from layercut.stages.augment import augment_batch

S = 32


def test_augment_batch_flips_and_shifts_deterministically() -> None:
    images = torch.zeros(64, 3, S, S)
    images[..., S // 2 :] = 1.0  # left half 0, right half 1: a flip puts the ones on the left
    images[:, 1] *= 0.5
    out = augment_batch(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= images.min() and out.max() <= images.max()
    flipped = out[:, 0, :, 0] == 1.0
    assert 10 < int(flipped.all(dim=1).sum()) < 54 and bool((flipped.all(1) | (~flipped).all(1)).all())
    assert torch.equal(out, augment_batch(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment_batch(images, torch.Generator().manual_seed(1)))

    ramp = torch.arange(S, dtype=torch.float32).expand(8, 3, S, S).contiguous()
    shifted = augment_batch(ramp, torch.Generator().manual_seed(2))
    assert not torch.equal(shifted, ramp)  # some translation happened
    assert torch.equal(augment_batch(torch.zeros(0, 3, S, S), torch.Generator()), torch.zeros(0, 3, S, S))
