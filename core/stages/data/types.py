"""The decoded dataset every source ends as: three ``Split``s of uint8 images held in memory, in one ``Dataset``.

Sources build a ``Dataset`` through ``finish_dataset`` so that every dataset's ``info`` carries the same
fields (classes, sizes, images per class), whatever it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from layercut.contracts.errors import DataError, LayercutError

STAGE = "data"
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 3, S, S), int64 labels (N,), and where each image came from."""

    images: torch.Tensor
    labels: torch.Tensor
    sources: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """A decoded dataset: class names, three splits, the common image size and a json-able description."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    image_size: int
    source_channels: int
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        """The split called ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise LayercutError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)


def finish_dataset(
    name: str, classes: list[str], splits: dict[str, Split], image_size: int, source_channels: int, info: dict
) -> Dataset:
    """Fill in the info fields every dataset shares and return the Dataset."""
    info = dict(info)
    info.setdefault("skipped", {"count": 0, "files": [], "reasons": {}})
    info.setdefault("warnings", [])
    info.update(
        {
            "name": name,
            "classes": list(classes),
            "num_classes": len(classes),
            "image_size": image_size,
            "source_channels": source_channels,
            "sizes": {s: len(splits[s]) for s in SPLITS},
            "per_class": {s: _class_counts(splits[s].labels, classes) for s in SPLITS},
        }
    )
    return Dataset(
        name=name,
        classes=list(classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        image_size=image_size,
        source_channels=source_channels,
        info=info,
    )


def _class_counts(labels: torch.Tensor, classes: list[str]) -> dict[str, int]:
    """Images per class name (json-able)."""
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return {name: int(n) for name, n in zip(classes, counts)}


def dataset_statistics(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of the split's images scaled to [0, 1]."""
    if len(split) == 0:
        raise DataError("cannot compute image statistics of an empty split")
    images = split.images
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], 1024):
        block = images[start : start + 1024].to(torch.float64).div_(255.0)
        total += block.sum(dim=(0, 2, 3)).cpu()
        squares += block.square().sum(dim=(0, 2, 3)).cpu()
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0.0).sqrt()
    return [float(m) for m in mean], [float(s) for s in std]
