"""Folder sources: one sub-folder per class, a folder already split into train/val/test, or a flat folder of
``{label}_{id}.{ext}`` files plus a class list.

A folder is scanned first (layout, classes, every image file with its label), checked (one mode and one size
unless mixed sizes are allowed), split, and only then decoded, straight into each split's tensor.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layercut.contracts import layout
from layercut.contracts.errors import DataError
from layercut.contracts.layout import IMAGE_EXTENSIONS, SPLIT_FOLDER_NAMES
from layercut.contracts.sources import source_help
from layercut.stages.data.decoding import GRAYSCALE_MODES, decode_splits, read_headers, unreadable_message
from layercut.stages.data.splitting import assign_splits
from layercut.stages.data.types import SPLITS, STAGE, Dataset, Split, finish_dataset
from layercut.stages.progress import Reporter


@dataclass
class _Record:
    """One image file found in a folder source, before decoding."""

    path: Path
    label: int
    split: str | None  # the given split, or None when the folder is not split


@dataclass
class _Scan:
    """What a walk over a folder source found."""

    layout: str
    classes: list[str]
    records: list[_Record]
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    given_splits: list[str] = field(default_factory=list)


def _walk_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (recursively, in sorted order) and the non-image files that are ignored."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if layout.visible(d))
        for name in sorted(filenames):
            if not layout.visible(name):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def _loose_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image and non-image files directly inside ``folder`` (not in sub-folders)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and layout.visible(p.name))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    return images, [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]


def _scan_folder(root: Path, classes: list[str] | None) -> _Scan:
    """Find the layout of ``root`` (class folders, flat, or pre-split) and every image file with its label."""
    subdirs = layout.subdirs(root)
    split_dirs: dict[str, list[Path]] = {}
    for d in subdirs:
        if d.name.lower() in SPLIT_FOLDER_NAMES:
            split_dirs.setdefault(SPLIT_FOLDER_NAMES[d.name.lower()], []).append(d)
    if not split_dirs:
        return _scan_unsplit(root, classes)

    for split, dirs in split_dirs.items():
        if len(dirs) > 1:
            raise DataError(
                f"{root} has more than one {split} folder ({', '.join(d.name for d in dirs)}); keep only one"
            )
    if "train" not in split_dirs:
        found = ", ".join(d[0].name for d in split_dirs.values())
        raise DataError(
            f"{root} has {found} but no train folder; add root/train/<class>/<image> "
            "(val and test are carved from train when missing)"
        )
    scan = _Scan(layout="pre-split", classes=[], records=[])
    others = [d.name for d in subdirs if d.name.lower() not in SPLIT_FOLDER_NAMES]
    if others:
        scan.warnings.append(f"ignored folders next to the split folders: {', '.join(others)}")
    loose_images, loose_other = _loose_files(root)
    scan.ignored += [str(p) for p in loose_images + loose_other]

    train = _scan_unsplit(split_dirs["train"][0], classes, split="train")
    scan.classes = train.classes
    scan.records += train.records
    scan.ignored += train.ignored
    scan.warnings += train.warnings
    scan.given_splits = ["train"]
    scan.layout = f"pre-split ({train.layout})"
    for split in ("val", "test"):
        if split not in split_dirs:
            continue
        part = _scan_unsplit(split_dirs[split][0], classes, split=split, known=train.classes)
        scan.records += part.records
        scan.ignored += part.ignored
        scan.warnings += part.warnings
        scan.given_splits.append(split)
    return scan


def _scan_unsplit(
    folder: Path, classes: list[str] | None, split: str | None = None, known: list[str] | None = None
) -> _Scan:
    """Scan one folder holding either class sub-folders or flat ``{label}_{id}.{ext}`` files."""
    where = f"{split} folder {folder}" if split else str(folder)
    class_dirs = layout.subdirs(folder)
    loose_images, loose_other = _loose_files(folder)
    if not class_dirs and loose_images:
        return _scan_flat(folder, loose_images, loose_other, classes if classes is not None else known, split, where)
    if not class_dirs:
        raise DataError(
            f"no images found in {where}: expected one sub-folder per class (<class>/<image>) or "
            f"{{label}}_{{id}}.png files. {source_help()}"
        )

    scan = _Scan(layout="class-folders", classes=[], records=[])
    scan.ignored += [str(p) for p in loose_images + loose_other]
    if loose_images:
        scan.warnings.append(
            f"ignored {len(loose_images)} image file(s) lying directly in {where}, outside class folders"
        )
    found = {d.name: d for d in class_dirs}
    if known is not None:  # a given val/test folder: its classes must be among train's, in train's order
        extra = [name for name in found if name not in known and (classes is None or name in classes)]
        if extra:
            raise DataError(
                f"{where} has class folder(s) {', '.join(map(repr, extra))} that the train folder lacks; "
                "every class must have training images"
            )
        order = list(known)
    elif classes is not None:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(
                f"class(es) {', '.join(map(repr, missing))} not found in {where}; "
                f"its class folders are: {', '.join(found)}"
            )
        order = list(classes)
    else:
        order = list(found)
    left_out = [name for name in found if name not in order]
    if left_out:
        scan.warnings.append(f"class folders not in the class list were left out of {where}: {', '.join(left_out)}")
    wanted = [c for c in order if c in found]
    scan.classes = order
    for name in wanted:
        images, others = _walk_files(found[name])
        scan.ignored += [str(p) for p in others]
        if not images:
            raise DataError(
                f"class folder {name!r} in {where} has no images "
                f"(looked for {', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        label = order.index(name)
        scan.records += [_Record(p, label, split) for p in images]
    return scan


def _scan_flat(
    folder: Path, images: list[Path], others: list[Path], classes: list[str] | None, split: str | None, where: str
) -> _Scan:
    """Label each ``{label}_{id}.{ext}`` file by class name or by integer index into ``classes``."""
    if classes is None:
        raise DataError(
            f"{where} is a flat folder of image files, so the labels come from the file names "
            "({label}_{id}.png) and the class list must be given: pass classes=[...] "
            "(on the command line --classes a,b,c or --classes classes.txt with one name per line)"
        )
    scan = _Scan(layout="flat", classes=list(classes), records=[], ignored=[str(p) for p in others])
    bad: list[Path] = []
    for path in images:
        label = _flat_label(path.stem, classes)
        if label is None:
            bad.append(path)
        else:
            scan.records.append(_Record(path, label, split))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"cannot tell the class of {bad[0]}{more}: file names must be {{label}}_{{id}}.{{ext}} where label "
            f"is a class name or an index 0..{len(classes) - 1} into the classes: {', '.join(classes)}"
        )
    counts = Counter(r.label for r in scan.records)
    empty = [c for i, c in enumerate(classes) if counts[i] == 0]
    if empty and split in (None, "train"):
        raise DataError(
            f"class(es) {', '.join(map(repr, empty))} have no images in {where}; "
            f"name files {empty[0]}_<id>.png or {classes.index(empty[0])}_<id>.png, or drop the class from the list"
        )
    return scan


def _flat_label(stem: str, classes: list[str]) -> int | None:
    """The class index of a file stem ``{label}_{id}``: the longest class name prefix, else an integer index."""
    best: int | None = None
    for index, name in enumerate(classes):
        if stem.startswith(f"{name}_") and (best is None or len(name) > len(classes[best])):
            best = index
    if best is not None:
        return best
    head, sep, _ = stem.partition("_")
    if sep and head.isdigit() and int(head) < len(classes):
        return int(head)
    return None


def load_folder(
    root: Path,
    image_size: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    classes: list[str] | None,
    skip_unreadable: bool,
    allow_mixed_sizes: bool,
    reporter: Reporter,
) -> Dataset:
    """Scan, check, split and decode a folder source (decoding goes straight into each split's tensor)."""
    scan = _scan_folder(root, classes)
    if len(scan.classes) < 2:
        raise DataError(
            f"{root} has only one class ({', '.join(scan.classes) or 'none'}); a classifier needs at least two "
            "class folders (root/<class>/<image>)"
        )
    reporter.update(STAGE, 0.02, f"reading {len(scan.records)} image headers")
    headers, skipped = read_headers([r.path for r in scan.records], skip_unreadable)
    mode = "L" if headers and all(m in GRAYSCALE_MODES for m, _ in headers.values()) else "RGB"
    sizes = Counter(size for _, size in headers.values())
    if len(sizes) > 1 and not allow_mixed_sizes:
        common = sizes.most_common(1)[0][0]
        first = next(r.path for r in scan.records if r.path in headers and headers[r.path][1] != common)
        other = headers[first][1]
        raise DataError(
            f"{first} is {other[0]}x{other[1]} but most images are {common[0]}x{common[1]}; "
            f"if mixed sizes are expected, pass allow_mixed_sizes=True (--allow-mixed-sizes) to resize every image "
            f"to {image_size}x{image_size}"
        )
    records = [r for r in scan.records if r.path in headers]
    while True:  # runs twice only when a file with a valid header fails to decode and is skipped
        warnings = list(scan.warnings)
        labels = np.asarray([r.label for r in records], dtype=np.int64)
        given = np.asarray([SPLITS.index(r.split) if r.split else -1 for r in records], dtype=np.int64)
        _check_classes_present(labels[given <= 0], scan.classes, str(root), skipped)
        parts, split_info = assign_splits(
            labels, given, scan.given_splits, scan.classes, seed, val_fraction, test_fraction, warnings
        )
        reporter.update(STAGE, 0.05, f"decoding {len(records)} images")
        tensors, failed = decode_splits([r.path for r in records], parts, image_size, mode, reporter.scaled(0.05, 0.99))
        if not failed:
            break
        if not skip_unreadable:
            index, reason = next(iter(failed.items()))
            raise DataError(unreadable_message(records[index].path, reason))
        for index, reason in failed.items():
            skipped[records[index].path] = reason
        records = [r for i, r in enumerate(records) if i not in failed]

    splits = {
        s: Split(tensors[s], torch.from_numpy(labels[parts[s]]), [str(records[i].path) for i in parts[s].tolist()])
        for s in SPLITS
    }
    info = {
        "source": str(root),
        "kind": scan.layout,
        "split": split_info,
        "native_sizes": {f"{w}x{h}": n for (w, h), n in sorted(sizes.items(), key=lambda kv: -kv[1])},
        "modes": dict(Counter(m for m, _ in headers.values())),
        "decoded_as": mode,
        "skipped": _skipped_info(skipped),
        "ignored": {"count": len(scan.ignored), "files": scan.ignored[:50]},
        "warnings": warnings,
    }
    return finish_dataset(root.name, scan.classes, splits, image_size, 1 if mode == "L" else 3, info)


def _skipped_info(skipped: dict[Path, str]) -> dict:
    return {
        "count": len(skipped),
        "files": [str(p) for p in skipped],
        "reasons": {str(p): reason for p, reason in skipped.items()},
    }


def _check_classes_present(labels: np.ndarray, classes: list[str], where: str, skipped: dict[Path, str]) -> None:
    """After skipping unreadable files, every class must still have training images."""
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        why = f" after leaving out {len(skipped)} unreadable file(s)" if skipped else ""
        raise DataError(f"class(es) {', '.join(map(repr, empty))} have no readable images in {where}{why}")
