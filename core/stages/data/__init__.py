"""The data stage: turn a ``source`` string into decoded, resized, split images held in memory.

Sources are folders (one sub-folder per class, optionally already split into train/val/test, or a flat
folder of ``{label}_{id}.{ext}`` files plus a class list), the built-in offline sets ``textures``, ``digits``
and ``scenes``, and torchvision's named datasets stored under a data root the caller passes. Every image is
decoded once, converted to one mode for the whole dataset, resized to ``image_size`` and kept as a uint8
tensor. Problems with the data raise ``DataError`` with a message that names the file or class to fix.

One job per module: ``sources`` (the entry point, ``load_dataset``), ``builtin``, ``torchvision_sets`` and
``folders`` (the kinds of source), ``catalog`` (the names a source may take), ``decoding`` (reading and
resizing images), ``splitting`` (seeded, stratified splits and samples), ``types`` (``Dataset``, ``Split``).
"""

from __future__ import annotations

from layercut.contracts.sources import BUILTIN_DATASETS
from layercut.stages.data.sources import load_dataset
from layercut.stages.data.splitting import stratified_sample
from layercut.stages.data.torchvision_sets import TORCHVISION_DATASETS
from layercut.stages.data.types import SPLITS, Dataset, Split, dataset_statistics

__all__ = [
    "BUILTIN_DATASETS",
    "SPLITS",
    "TORCHVISION_DATASETS",
    "Dataset",
    "Split",
    "dataset_statistics",
    "load_dataset",
    "stratified_sample",
]
