"""The names a data source (``DataConfig.source``) may take besides a folder, and the check that a source can
be read at all, free of torch so that the command line and the API can refuse a wrong source at once, before
anything heavy is imported or any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

BuiltinDataset = Literal["textures", "digits", "scenes"]
"""A built-in offline data set (made by layercut, never downloaded)."""

BUILTIN_DATASETS: tuple[str, ...] = get_args(BuiltinDataset)

TORCHVISION_DATASET_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashionmnist", "kmnist", "svhn")
"""The torchvision data sets layercut reads from a folder of data sets (``layercut.stages.data.torchvision_sets``)."""


def dataset_key(source: str) -> str:
    """The canonical name of a built-in or torchvision dataset, or '' when ``source`` is a path.

    A bare known name is always the dataset; write a folder with such a name as a path (``./digits``).
    """
    if any(sep in source for sep in ("/", "\\")) or source.startswith((".", "~")):
        return ""
    key = source.strip().lower().replace("-", "").replace("_", "")
    if key in BUILTIN_DATASETS or key in TORCHVISION_DATASET_NAMES:
        return key
    return ""


def source_help() -> str:
    """Every kind of source, for error messages about a source that cannot be read."""
    return (
        "source may be: a folder with one sub-folder per class (root/<class>/<image>); a folder already split "
        "as root/train|val|test/<class>/<image>; a flat folder of {label}_{id}.png files together with the "
        "class list (classes=, --classes a,b,c); the built-in offline sets "
        + ", ".join(BUILTIN_DATASETS)
        + "; or a torchvision dataset name ("
        + ", ".join(TORCHVISION_DATASET_NAMES)
        + ") stored under the data root"
    )


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be read (neither a known data set nor an existing folder), or None when it may be."""
    if dataset_key(source):
        return None
    root = Path(source).expanduser()
    if not root.exists():
        return f"dataset source {source!r} is neither an existing folder nor a known dataset. {source_help()}"
    if not root.is_dir():
        return f"dataset source {source!r} is a file, not a folder. {source_help()}"
    return None
