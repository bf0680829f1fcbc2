"""What a dataset folder looks like to layercut: image extensions, split folder names, hidden entries.

Torch-free, so the API's folder scanner (``layercut.api.dataset_scan``) and the pipeline's loader agree on one
definition.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
SPLIT_FOLDER_NAMES: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
IGNORED_NAMES: frozenset[str] = frozenset({"__MACOSX"})


def visible(name: str) -> bool:
    """False for dot files and folders and for archive clutter such as ``__MACOSX``."""
    return not name.startswith(".") and name not in IGNORED_NAMES


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and visible(p.name))
