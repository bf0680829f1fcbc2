"""The built-in offline sets: ``textures`` (patches of scikit-image's photographs), ``digits`` (scikit-learn's)
and ``scenes`` (drawn by ``scenes.py``).

All three come with installed packages or are drawn on the spot, so they load on a machine with no network and
no data folder.
"""

from __future__ import annotations

import numpy as np
import torch

from layercut.stages.data.arrays import assemble, select_classes
from layercut.stages.data.decoding import resize_batch
from layercut.stages.data.scenes import describe_scenes, make_scenes
from layercut.stages.data.splitting import stratified_carve
from layercut.stages.data.textures import make_textures
from layercut.stages.data.types import SPLITS, STAGE, Dataset, Split, finish_dataset
from layercut.stages.progress import Reporter


def load_textures(image_size: int, seed: int, classes: list[str] | None, reporter: Reporter) -> Dataset:
    """The ``textures`` set: patches from disjoint row bands of three photographs (see ``textures.py``)."""
    reporter.update(STAGE, 0.1, "cutting texture patches")
    made = make_textures(seed)
    arrays = {s: (made.patches[s], made.labels[s], made.sources[s]) for s in SPLITS}
    names, arrays = select_classes(made.classes, classes, arrays, "textures")
    splits = {}
    for s in SPLITS:
        images, labels, sources = arrays[s]
        splits[s] = Split(resize_batch(images[:, None], image_size), torch.from_numpy(labels), sources)
    info = {
        "source": "textures",
        "kind": "builtin",
        "split": {
            "method": "fixed-regions",
            "seed": seed,
            "note": "val_fraction/test_fraction do not apply: splits come from disjoint row bands",
        },
        "textures": made.info,
    }
    return finish_dataset("textures", names, splits, image_size, 1, info)


def load_digits(
    image_size: int, seed: int, val_fraction: float, test_fraction: float, classes: list[str] | None, reporter: Reporter
) -> Dataset:
    """scikit-learn's 8x8 digits (0..16 scaled to 0..255), upscaled bilinearly and split seeded-stratified."""
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: ~0.4 s to import, and only this set needs it

    reporter.update(STAGE, 0.1, "loading scikit-learn digits")
    bunch = sklearn_digits()
    values = bunch.images.astype(np.float32) * (255.0 / 16.0)
    labels = bunch.target.astype(np.int64)
    sources = [f"digits:{i}" for i in range(len(labels))]
    names, arrays = select_classes([str(d) for d in range(10)], classes, {"all": (values, labels, sources)}, "digits")
    values, labels, sources = arrays["all"]
    parts = stratified_carve(labels, {"val": val_fraction, "test": test_fraction}, seed, names)
    info = {
        "source": "digits",
        "kind": "builtin",
        "origin": "sklearn.datasets.load_digits: 8x8 grayscale, values 0..16 scaled to 0..255, bilinear upscale",
        "split": {
            "method": "seeded-stratified",
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        },
    }
    return assemble("digits", names, values[:, None], labels, sources, parts, image_size, info)


def load_scenes(image_size: int, seed: int, classes: list[str] | None, reporter: Reporter) -> Dataset:
    """The ``scenes`` set: a fence and three dots, classed by how many dots are inside (see ``scenes.py``).

    Its splits are its own (disjoint seeded streams), so the val/test fractions do not apply.
    """
    reporter.update(STAGE, 0.1, "drawing scenes")
    made = make_scenes(seed)
    arrays = {s: (made.images[s], made.labels[s], made.sources[s]) for s in SPLITS}
    names, arrays = select_classes(made.classes, classes, arrays, "scenes")
    splits = {}
    for s in SPLITS:
        images, labels, sources = arrays[s]
        splits[s] = Split(resize_batch(images, image_size), torch.from_numpy(labels), sources)
    info = {
        "source": "scenes",
        "kind": "builtin",
        "origin": describe_scenes(),
        "split": {
            "method": "given",
            "seed": seed,
            "given": list(SPLITS),
            "note": "val_fraction/test_fraction do not apply: each split and class is drawn from its own stream "
            "seeded by (seed, split, class)",
        },
    }
    return finish_dataset("scenes", names, splits, image_size, 3, info)
