"""The names a ``DataConfig.source`` may take besides a folder, and the help that lists every kind of source.

Kept apart from the loaders so that the folder reader and the entry point can both quote the help.
"""

from __future__ import annotations

from layercut.stages.data.builtin import BUILTIN_DATASETS
from layercut.stages.data.torchvision_sets import TORCHVISION_DATASETS


def dataset_key(source: str) -> str:
    """The canonical name of a built-in or torchvision dataset, or '' when ``source`` is a path.

    A bare known name is always the dataset; write a folder with such a name as a path (``./digits``).
    """
    if any(sep in source for sep in ("/", "\\")) or source.startswith((".", "~")):
        return ""
    key = source.strip().lower().replace("-", "").replace("_", "")
    if key in BUILTIN_DATASETS or key in TORCHVISION_DATASETS:
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
        + ", ".join(TORCHVISION_DATASETS)
        + ") stored under the data root"
    )
