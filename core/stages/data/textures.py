"""The built-in offline dataset ``textures``: patches of scikit-image's brick, grass and gravel photographs.

Each 512x512 grayscale photograph is cut into horizontal bands (top 60 % train, next 20 % validation,
last 20 % test). Every patch lies wholly inside its split's band, so no pixel of a test patch was ever
seen in training. Patch positions are drawn from a generator seeded by ``(seed, class, split)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from layercut.contracts.errors import MissingResourceError
from layercut.stages.data.types import SPLITS

PHOTOGRAPHS: tuple[str, ...] = ("brick", "grass", "gravel")
PATCH_SIZE = 64
PATCHES_PER_CLASS: dict[str, int] = {"train": 160, "val": 40, "test": 40}
BAND_FRACTIONS: dict[str, tuple[float, float]] = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}


@dataclass
class TexturePatches:
    """Native-size patches per split (uint8, (N, P, P)), their labels and synthetic source ids, plus info."""

    classes: list[str]
    patches: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    sources: dict[str, list[str]]
    info: dict = field(default_factory=dict)


def load_photograph(name: str) -> np.ndarray:
    """One of scikit-image's bundled texture photographs as a 2-D uint8 array."""
    try:
        import skimage.data

        image = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # pragma: no cover - depends on the scikit-image install
        raise MissingResourceError(
            f"the built-in 'textures' dataset needs scikit-image's bundled photograph '{name}' "
            f"(skimage.data.{name}()), which could not be loaded: {exc}. Reinstall scikit-image."
        ) from exc
    if image.ndim == 3:  # defensive: a future release might ship colour versions
        image = image.mean(axis=2).round().astype(np.uint8)
    return image.astype(np.uint8, copy=False)


def split_bands(height: int) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of each split's band for a photograph ``height`` rows tall."""
    bands = {}
    for split, (lo, hi) in BAND_FRACTIONS.items():
        bands[split] = (int(round(lo * height)), int(round(hi * height)))
    return bands


def patch_size_for(height: int, width: int) -> int:
    """The native patch size: ``PATCH_SIZE`` unless a band (or the width) is shorter than that."""
    shortest = min(end - start for start, end in split_bands(height).values())
    return max(1, min(PATCH_SIZE, shortest, width))


def patch_boxes(seed: int, height: int, width: int) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """Seeded ``(top, left)`` corners of every patch, per class and split, each patch inside its band."""
    size = patch_size_for(height, width)
    bands = split_bands(height)
    boxes: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for class_index, name in enumerate(PHOTOGRAPHS):
        boxes[name] = {}
        for split_index, split in enumerate(SPLITS):
            start, end = bands[split]
            rng = np.random.default_rng([seed, class_index, split_index])
            count = PATCHES_PER_CLASS[split]
            tops = rng.integers(start, end - size + 1, size=count)
            lefts = rng.integers(0, width - size + 1, size=count)
            boxes[name][split] = [(int(top), int(left)) for top, left in zip(tops, lefts)]
    return boxes


def make_textures(seed: int = 0) -> TexturePatches:
    """Cut the seeded patches of every photograph and describe the regions they came from."""
    photos = {name: load_photograph(name) for name in PHOTOGRAPHS}
    shapes = {photo.shape for photo in photos.values()}
    if len(shapes) != 1:  # pragma: no cover - scikit-image ships them all at 512x512
        raise MissingResourceError(f"scikit-image's texture photographs have differing shapes {sorted(shapes)}")
    height, width = shapes.pop()
    size = patch_size_for(height, width)
    bands = split_bands(height)
    boxes = patch_boxes(seed, height, width)

    patches: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    for split in SPLITS:
        cut, split_labels, split_sources = [], [], []
        for class_index, name in enumerate(PHOTOGRAPHS):
            for i, (top, left) in enumerate(boxes[name][split]):
                start, end = bands[split]
                assert start <= top and top + size <= end, "a patch crossed its band"
                cut.append(photos[name][top : top + size, left : left + size])
                split_labels.append(class_index)
                split_sources.append(f"textures:{name}:{split}:{i}")
        patches[split] = np.stack(cut).astype(np.uint8)
        labels[split] = np.asarray(split_labels, dtype=np.int64)
        sources[split] = split_sources

    info = {
        "photographs": {name: f"skimage.data.{name}() {height}x{width} grayscale" for name in PHOTOGRAPHS},
        "patch_size": size,
        "patches_per_class": dict(PATCHES_PER_CLASS),
        "regions": {
            name: {split: {"rows": list(bands[split]), "cols": [0, width]} for split in SPLITS} for name in PHOTOGRAPHS
        },
        "box_format": "[top, left] of a patch_size x patch_size square in the photograph",
        "boxes": {name: {split: [list(b) for b in boxes[name][split]] for split in SPLITS} for name in PHOTOGRAPHS},
        "no_leak": "every patch lies inside its split's row band and the bands do not overlap",
    }
    return TexturePatches(classes=list(PHOTOGRAPHS), patches=patches, labels=labels, sources=sources, info=info)
