"""A torch-free scan of a dataset folder: its layout, classes and image counts per split.

It accepts the folder layouts the pipeline's data stage reads (``layercut.stages.data``):
class sub-folders (``root/<class>/<image>``), optionally already split under ``train/`` and
``val/`` (or ``valid/``, ``validation/``) and ``test/``. Dot files and ``__MACOSX`` are ignored,
as the pipeline ignores them. The flat ``{label}_{id}.png`` layout needs a class list, which a
registered dataset does not carry, so it is refused with a message saying how to lay it out.

The service uses this to answer "what is in this dataset" when one is registered or uploaded,
without decoding a single image (only names are read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from layercut.contracts.layout import IMAGE_EXTENSIONS, SPLIT_FOLDER_NAMES
from layercut.contracts.layout import subdirs as _subdirs
from layercut.contracts.layout import visible as _visible

# What the built-in offline sets hold (kept here so the API needs neither torch nor the data files).
BUILTINS: dict[str, dict] = {
    "textures": {
        "classes": ["brick", "grass", "gravel"],
        "counts": {
            split: {c: n for c in ("brick", "grass", "gravel")}
            for split, n in (("train", 160), ("val", 40), ("test", 40))
        },
        "layout": "builtin (patches of scikit-image's texture photographs, split by row bands)",
    },
    "digits": {
        "classes": [str(d) for d in range(10)],
        "counts": {
            "all": {"0": 178, "1": 182, "2": 177, "3": 183, "4": 181, "5": 182, "6": 181, "7": 179, "8": 174, "9": 180}
        },
        "layout": "builtin (scikit-learn's 8x8 digits; split seeded and stratified by the job's fractions)",
    },
    "scenes": {
        "classes": ["none-inside", "one-inside", "two-inside", "three-inside"],
        "counts": {
            split: {c: n for c in ("none-inside", "one-inside", "two-inside", "three-inside")}
            for split, n in (("train", 1000), ("val", 150), ("test", 150))
        },
        "layout": "builtin (drawn scenes: a closed fence and three dots, classed by how many dots are inside)",
    },
}


class DatasetScanError(ValueError):
    """The folder cannot be used as a dataset; the message says why and what to change."""


@dataclass
class ScanResult:
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split ("all" when the folder is not split) → class → images
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def _count_images(folder: Path, root: Path) -> int:
    """Image files under ``folder`` (recursively, not following linked folders); a linked file must stay in ``root``."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        for name in filenames:
            if not _visible(name) or not _is_image(name):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() and not _inside(path, root):
                raise DatasetScanError(f"{path} is a link to a file outside the dataset folder")
            count += 1
    return count


def _scan_classes(
    folder: Path, root: Path, where: str, known: list[str] | None = None
) -> tuple[list[str], dict[str, int], list[str]]:
    warnings: list[str] = []
    class_dirs = _subdirs(folder)
    for d in class_dirs:
        if d.is_symlink() and not _inside(d, root):
            raise DatasetScanError(f"class folder {d.name!r} in {where} is a link to a folder outside the dataset")
    loose = [p.name for p in folder.iterdir() if _visible(p.name) and p.is_file() and _is_image(p.name)]
    if not class_dirs:
        if loose:
            raise DatasetScanError(
                f"{where} holds image files directly (a flat layout), which needs a class list; "
                "put each class's images in its own sub-folder (<class>/<image>)"
            )
        raise DatasetScanError(
            f"no class folders found in {where}: expected one sub-folder per class (<class>/<image>)"
        )
    if loose:
        warnings.append(f"ignored {len(loose)} image file(s) lying directly in {where}, outside class folders")
    names = [d.name for d in class_dirs]
    if known is not None:
        extra = [n for n in names if n not in known]
        if extra:
            raise DatasetScanError(
                f"{where} has class folder(s) {', '.join(map(repr, extra))} that the train folder "
                "lacks; every class must have training images"
            )
    counts: dict[str, int] = {}
    for d in class_dirs:
        n = _count_images(d, root)
        if n == 0:
            raise DatasetScanError(
                f"class folder {d.name!r} in {where} has no images (looked for "
                f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        counts[d.name] = n
    return names, counts, warnings


def scan_dataset(root: str | Path) -> ScanResult:
    """Scan ``root`` (an existing folder); raises DatasetScanError when the pipeline could not use it."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetScanError(f"{root} is not a folder")
    subdirs = _subdirs(root)
    split_dirs: dict[str, list[Path]] = {}
    for d in subdirs:
        if d.name.lower() in SPLIT_FOLDER_NAMES:
            split_dirs.setdefault(SPLIT_FOLDER_NAMES[d.name.lower()], []).append(d)

    if not split_dirs:
        classes, counts, warnings = _scan_classes(root, root, "the dataset folder")
        result = ScanResult("class-folders", classes, {"all": counts}, warnings)
    else:
        for split, dirs in split_dirs.items():
            if len(dirs) > 1:
                raise DatasetScanError(
                    f"the dataset has more than one {split} folder ({', '.join(d.name for d in dirs)}); keep only one"
                )
        if "train" not in split_dirs:
            found = ", ".join(d[0].name for d in split_dirs.values())
            raise DatasetScanError(
                f"the dataset has {found} but no train folder; add train/<class>/<image> "
                "(val and test are carved from train when missing)"
            )
        warnings = []
        others = [d.name for d in subdirs if d.name.lower() not in SPLIT_FOLDER_NAMES]
        if others:
            warnings.append(f"ignored folders next to the split folders: {', '.join(others)}")
        classes, train_counts, w = _scan_classes(split_dirs["train"][0], root, "the train folder")
        warnings += w
        counts = {"train": train_counts}
        for split in ("val", "test"):
            if split in split_dirs:
                _, part, w = _scan_classes(split_dirs[split][0], root, f"the {split} folder", known=classes)
                warnings += w
                counts[split] = {c: part.get(c, 0) for c in classes}
        result = ScanResult("pre-split (" + ", ".join(counts) + ")", classes, counts, warnings)

    if len(result.classes) < 2:
        only = result.classes[0] if result.classes else "none"
        raise DatasetScanError(f"a dataset needs at least two classes; found only one: {only!r}")
    return result


def builtin_scan(name: str) -> ScanResult:
    info = BUILTINS[name]
    return ScanResult(info["layout"], list(info["classes"]), {s: dict(c) for s, c in info["counts"].items()})
