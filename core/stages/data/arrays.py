"""What the in-memory sources (the built-in sets, torchvision datasets) share: picking classes and turning
native arrays plus split indices into a resized ``Dataset``.
"""

from __future__ import annotations

import numpy as np
import torch

from layercut.contracts.errors import DataError
from layercut.stages.data.decoding import resize_batch
from layercut.stages.data.types import SPLITS, Dataset, Split, finish_dataset
from layercut.stages.progress import Reporter

ArraySet = tuple[np.ndarray, np.ndarray, list[str]]  # native images (N, C, h, w), labels (N,), source ids


def select_classes(
    all_classes: list[str], wanted: list[str] | None, arrays: dict[str, ArraySet], source: str
) -> tuple[list[str], dict[str, ArraySet]]:
    """Keep only the ``wanted`` classes (in that order) of an in-memory dataset and renumber the labels."""
    if wanted is None:
        return list(all_classes), arrays
    unknown = [c for c in wanted if c not in all_classes]
    if unknown:
        raise DataError(
            f"{source} has no class(es) {', '.join(map(repr, unknown))}; its classes are: {', '.join(all_classes)}"
        )
    if len(wanted) < 2:
        raise DataError(f"only one class selected from {source}; a classifier needs at least two")
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    for new, name in enumerate(wanted):
        remap[all_classes.index(name)] = new
    selected = {}
    for split, (images, labels, sources) in arrays.items():
        new_labels = remap[labels]
        keep = np.flatnonzero(new_labels >= 0)
        selected[split] = (images[keep], new_labels[keep], [sources[i] for i in keep.tolist()])
    return list(wanted), selected


def assemble(
    name: str,
    classes: list[str],
    native: np.ndarray,
    labels: np.ndarray,
    sources: list[str],
    parts: dict[str, np.ndarray],
    image_size: int,
    info: dict,
    reporter: Reporter | None = None,
) -> Dataset:
    """Build a Dataset from native (N, C, h, w) arrays and split indices, resizing each split separately."""
    splits: dict[str, Split] = {}
    for k, split in enumerate(SPLITS):
        idx = parts.get(split, np.zeros(0, dtype=np.int64))
        sub = reporter.scaled(k / 3, (k + 1) / 3) if reporter is not None else None
        splits[split] = Split(
            images=resize_batch(native[idx], image_size, sub),
            labels=torch.from_numpy(labels[idx].astype(np.int64)),
            sources=[sources[i] for i in idx.tolist()],
        )
    return finish_dataset(name, classes, splits, image_size, 1 if native.shape[1] == 1 else 3, info)
