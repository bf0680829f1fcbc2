"""The entry point of the data stage: turn a ``source`` string (what ``DataConfig.source`` names) into a
decoded, resized, split ``Dataset``, dispatching to the built-in sets, torchvision's datasets or a folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from layercut.contracts.errors import DataError, LayercutError
from layercut.contracts.sources import dataset_key, source_problem
from layercut.stages.architectures import check_image_size
from layercut.stages.data.builtin import load_digits, load_scenes, load_textures
from layercut.stages.data.folders import load_folder
from layercut.stages.data.torchvision_sets import TORCHVISION_DATASETS, load_torchvision
from layercut.stages.data.types import SPLITS, STAGE, Dataset
from layercut.stages.progress import SILENT, Reporter


def load_dataset(
    source: str,
    *,
    image_size: int,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    classes: list[str] | None = None,
    skip_unreadable: bool = False,
    allow_mixed_sizes: bool = False,
    data_root: str | Path | None = None,
    allow_download: bool = True,
    reporter: Reporter | None = None,
) -> Dataset:
    """Load ``source`` (a folder, ``textures``, ``digits``, ``scenes`` or a torchvision name), split and resized.

    ``classes`` is the class list of a flat folder; for other sources it selects and orders classes.
    A torchvision dataset is read from ``data_root/<name>/`` (required for those) and fetched there only
    when ``allow_download`` is true: the caller decides both, the stages read no settings.
    """
    reporter = reporter or SILENT
    _check_arguments(image_size, val_fraction, test_fraction, classes)
    reporter.update(STAGE, 0.0, f"loading {source}")
    key = dataset_key(source)
    if key == "textures":
        dataset = load_textures(image_size, seed, classes, reporter)
    elif key == "digits":
        dataset = load_digits(image_size, seed, val_fraction, test_fraction, classes, reporter)
    elif key == "scenes":
        dataset = load_scenes(image_size, seed, classes, reporter)
    elif key in TORCHVISION_DATASETS:
        dataset = load_torchvision(key, image_size, seed, val_fraction, classes, data_root, allow_download, reporter)
    else:
        problem = source_problem(source)
        if problem is not None:
            raise DataError(problem)
        dataset = load_folder(
            Path(source).expanduser().resolve(),
            image_size,
            seed,
            val_fraction,
            test_fraction,
            classes,
            skip_unreadable,
            allow_mixed_sizes,
            reporter,
        )
    reporter.update(STAGE, 1.0, f"loaded {dataset.name}: " + ", ".join(f"{s} {len(dataset.split(s))}" for s in SPLITS))
    return dataset


def _check_arguments(image_size: int, val_fraction: float, test_fraction: float, classes: list[str] | None) -> None:
    """Reject arguments that can never work, before touching any file."""
    check_image_size(int(image_size))
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise LayercutError(f"{name} must be at least 0 and below 1, got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise LayercutError(
            f"val_fraction + test_fraction must leave images for training, got {val_fraction} + {test_fraction}"
        )
    if classes is not None:
        if len(classes) != len(set(classes)):
            duplicates = sorted(c for c, n in Counter(classes).items() if n > 1)
            raise LayercutError(f"the class list names {', '.join(map(repr, duplicates))} more than once")
        if any(not str(c).strip() for c in classes):
            raise LayercutError("the class list contains an empty name")
