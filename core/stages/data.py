"""The data stage: turn a ``source`` string into decoded, resized, split images held in memory.

Sources are folders (one sub-folder per class, optionally already split into train/val/test, or a flat
folder of ``{label}_{id}.{ext}`` files plus a class list), the built-in offline sets ``textures`` and
``digits``, and torchvision's named datasets stored under a data root. Every image is decoded once,
converted to one mode for the whole dataset, resized to ``image_size`` and kept as a uint8 tensor.
Problems with the data raise ``DataError`` with a message that names the file or class to fix.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from layercut.contracts import layout
from layercut.contracts.errors import DataError, LayercutError, MissingResourceError
from layercut.contracts.layout import IMAGE_EXTENSIONS, SPLIT_FOLDER_NAMES
from layercut.stages.architectures import check_image_size
from layercut.stages.progress import SILENT, Reporter

STAGE = "data"
SPLITS: tuple[str, ...] = ("train", "val", "test")
GRAYSCALE_MODES: frozenset[str] = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
WIDE_GRAYSCALE_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
BUILTIN_DATASETS: tuple[str, ...] = ("textures", "digits")
DEFAULT_DATA_ROOT = "./layercut-data/datasets"
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _TorchvisionSpec:
    """How to find one torchvision dataset and what a user must put in its folder."""

    class_name: str
    files_hint: str
    split_kwarg: str  # "train" (train=True/False) or "split" (split="train"/"test")


TORCHVISION_DATASETS: dict[str, _TorchvisionSpec] = {
    "cifar10": _TorchvisionSpec(
        "CIFAR10",
        "the archive cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
        "or its extracted folder cifar-10-batches-py/",
        "train",
    ),
    "cifar100": _TorchvisionSpec(
        "CIFAR100",
        "the archive cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) "
        "or its extracted folder cifar-100-python/",
        "train",
    ),
    "mnist": _TorchvisionSpec(
        "MNIST",
        "a folder MNIST/raw/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
        "train",
    ),
    "fashionmnist": _TorchvisionSpec(
        "FashionMNIST",
        "a folder FashionMNIST/raw/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from github.com/zalandoresearch/fashion-mnist)",
        "train",
    ),
    "kmnist": _TorchvisionSpec(
        "KMNIST",
        "a folder KMNIST/raw/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from codh.rois.ac.jp/kmnist)",
        "train",
    ),
    "svhn": _TorchvisionSpec(
        "SVHN",
        "train_32x32.mat and test_32x32.mat (from http://ufldl.stanford.edu/housenumbers/)",
        "split",
    ),
}


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


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


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
    data_root: str | None = None,
    reporter: Reporter | None = None,
) -> Dataset:
    """Load ``source`` (a folder, ``textures``, ``digits`` or a torchvision name) into memory, split and resized.

    ``classes`` is the class list of a flat folder; for other sources it selects and orders classes.
    """
    reporter = reporter or SILENT
    _check_arguments(image_size, val_fraction, test_fraction, classes)
    reporter.update(STAGE, 0.0, f"loading {source}")
    key = _dataset_key(source)
    if key == "textures":
        dataset = _load_textures(image_size, seed, classes, reporter)
    elif key == "digits":
        dataset = _load_digits(image_size, seed, val_fraction, test_fraction, classes, reporter)
    elif key in TORCHVISION_DATASETS:
        dataset = _load_torchvision(key, image_size, seed, val_fraction, classes, data_root, reporter)
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise DataError(
                f"dataset source {source!r} is neither an existing folder nor a known dataset. {_source_help()}"
            )
        if not root.is_dir():
            raise DataError(f"dataset source {source!r} is a file, not a folder. {_source_help()}")
        dataset = _load_folder(
            root.resolve(),
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


def _dataset_key(source: str) -> str:
    """The canonical name of a built-in or torchvision dataset, or '' when ``source`` is a path.

    A bare known name is always the dataset; write a folder with such a name as a path (``./digits``).
    """
    if any(sep in source for sep in ("/", "\\")) or source.startswith((".", "~")):
        return ""
    key = source.strip().lower().replace("-", "").replace("_", "")
    if key in BUILTIN_DATASETS or key in TORCHVISION_DATASETS:
        return key
    return ""


def _source_help() -> str:
    return (
        "source may be: a folder with one sub-folder per class (root/<class>/<image>); a folder already split "
        "as root/train|val|test/<class>/<image>; a flat folder of {label}_{id}.png files together with the "
        "class list (classes=, --classes a,b,c); the built-in offline sets "
        + ", ".join(BUILTIN_DATASETS)
        + "; or a torchvision dataset name ("
        + ", ".join(TORCHVISION_DATASETS)
        + ") stored under the data root"
    )


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


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
            f"{{label}}_{{id}}.png files. {_source_help()}"
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


def _load_folder(
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
    headers, skipped = _read_headers([r.path for r in scan.records], skip_unreadable)
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
        parts, split_info = _assign_splits(
            labels, given, scan.given_splits, scan.classes, seed, val_fraction, test_fraction, warnings
        )
        reporter.update(STAGE, 0.05, f"decoding {len(records)} images")
        tensors, failed = _decode_splits(
            [r.path for r in records], parts, image_size, mode, reporter.scaled(0.05, 0.99)
        )
        if not failed:
            break
        if not skip_unreadable:
            index, reason = next(iter(failed.items()))
            raise DataError(_unreadable_message(records[index].path, reason))
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
    return _finish(root.name, scan.classes, splits, image_size, 1 if mode == "L" else 3, info)


def _unreadable_message(path: Path, reason: str) -> str:
    return (
        f"cannot read image {path}: {reason}. Replace or delete the file, or pass skip_unreadable=True "
        "(--skip-unreadable) to leave unreadable files out"
    )


def _skipped_info(skipped: dict[Path, str]) -> dict:
    return {
        "count": len(skipped),
        "files": [str(p) for p in skipped],
        "reasons": {str(p): reason for p, reason in skipped.items()},
    }


Header = tuple[str, tuple[int, int]]  # (PIL mode, (width, height))


def _read_headers(paths: list[Path], skip_unreadable: bool) -> tuple[dict[Path, Header], dict[Path, str]]:
    """Mode and size of every file from its header (no decoding); unreadable files raise or are collected."""
    headers: dict[Path, Header] = {}
    skipped: dict[Path, str] = {}

    def read(path: Path) -> Header | str:
        try:
            with Image.open(path) as img:
                return img.mode, (int(img.size[0]), int(img.size[1]))
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError …
            return f"{type(exc).__name__}: {exc}"

    chunk = 128  # ThreadPoolExecutor.map ignores chunksize, so submit chunks by hand
    with ThreadPoolExecutor(max_workers=_worker_count()) as pool:
        chunks = pool.map(lambda start: [read(p) for p in paths[start : start + chunk]], range(0, len(paths), chunk))
        results = [result for part in chunks for result in part]
    for path, result in zip(paths, results):
        if isinstance(result, str):
            if not skip_unreadable:
                raise DataError(_unreadable_message(path, result))
            skipped[path] = result
        else:
            headers[path] = result
    return headers, skipped


def _worker_count() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _decode_splits(
    paths: list[Path], parts: dict[str, np.ndarray], image_size: int, mode: str, reporter: Reporter
) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """Decode every file into its split's (n, 3, S, S) uint8 tensor with a thread pool; failures come back by index.

    PIL releases the GIL while decoding and resizing, so threads scale; writing in place avoids any copy.
    """
    tensors = {s: torch.empty((len(parts[s]), 3, image_size, image_size), dtype=torch.uint8) for s in SPLITS}
    jobs = [(int(i), tensors[s].numpy(), row) for s in SPLITS for row, i in enumerate(parts[s].tolist())]
    chunk = 32
    starts = list(range(0, len(jobs), chunk))

    def work(start: int) -> dict[int, str]:
        errors: dict[int, str] = {}
        for index, target, row in jobs[start : start + chunk]:
            try:
                pixels = _decode_one(paths[index], image_size, mode)
                target[row] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            except Exception as exc:
                errors[index] = f"{type(exc).__name__}: {exc}"
        return errors

    failed: dict[int, str] = {}
    pool = ThreadPoolExecutor(max_workers=_worker_count())
    try:
        pending: set[Future] = {pool.submit(work, start) for start in starts}
        finished = 0
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                failed.update(future.result())
                finished += 1
            decoded = min(len(jobs), finished * chunk)
            reporter.update(STAGE, finished / max(1, len(starts)), f"decoding {decoded}/{len(jobs)} images")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return tensors, dict(sorted(failed.items()))


def _decode_one(path: Path, size: int, mode: str) -> np.ndarray:
    """Decode one file, convert it to ``mode`` (L or RGB) and resize it to ``size`` x ``size`` with antialiasing."""
    with Image.open(path) as img:
        if img.format == "JPEG" and min(img.size) >= 2 * size:
            img.draft(None, (size, size))  # let libjpeg scale down by a power of two while decoding
        if img.mode in WIDE_GRAYSCALE_MODES:
            return _decode_wide_gray(img, size, mode)
        img.load()
        if mode == "L":
            converted = img.convert("L")
        elif img.mode == "P" and "transparency" in img.info:
            converted = img.convert("RGBA").convert("RGB")
        elif img.mode == "LA":
            converted = img.convert("L").convert("RGB")
        else:
            converted = img.convert("RGB")
        if converted.size != (size, size):
            converted = converted.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(converted, dtype=np.uint8)


def _decode_wide_gray(img: Image.Image, size: int, mode: str) -> np.ndarray:
    """16-bit and 32-bit grayscale: scale 0..65535 to 0..255 (float images are clipped to 0..255), then resize.

    PIL's own conversion to L clips 16-bit values instead of scaling them, which would turn most images white.
    """
    array = np.asarray(img).astype(np.float32)
    if img.mode != "F":
        array = array / 257.0
    resized = Image.fromarray(np.clip(array, 0.0, 255.0).astype(np.float32))  # a float32 array opens as mode F
    if resized.size != (size, size):
        resized = resized.resize((size, size), Image.Resampling.BILINEAR)
    gray = np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2) if mode == "RGB" else gray


def _check_classes_present(labels: np.ndarray, classes: list[str], where: str, skipped: dict[Path, str]) -> None:
    """After skipping unreadable files, every class must still have training images."""
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        why = f" after leaving out {len(skipped)} unreadable file(s)" if skipped else ""
        raise DataError(f"class(es) {', '.join(map(repr, empty))} have no readable images in {where}{why}")


# --------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------


def _assign_splits(
    labels: np.ndarray,
    given: np.ndarray,
    given_splits: list[str],
    classes: list[str],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    warnings: list[str],
) -> tuple[dict[str, np.ndarray], dict]:
    """Indices of each split: given splits are kept, missing ones are carved (seeded, stratified) out of train."""
    if not given_splits:
        parts = _stratified_carve(labels, {"val": val_fraction, "test": test_fraction}, seed, classes)
        info = {
            "method": "seeded-stratified",
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
        return parts, info
    pool = np.flatnonzero(given == 0)
    wanted = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in given_splits}
    carved = _stratified_carve(labels[pool], wanted, seed, classes) if wanted else {"train": np.arange(len(pool))}
    parts = {"train": pool[carved["train"]]}
    for split in ("val", "test"):
        if split in given_splits:
            parts[split] = np.flatnonzero(given == SPLITS.index(split))
        else:
            parts[split] = pool[carved[split]]
    for split in given_splits:
        if split == "train":
            continue
        present = set(labels[parts[split]].tolist())
        missing = [c for i, c in enumerate(classes) if i not in present]
        if missing:
            warnings.append(f"the given {split} split has no images of class(es) {', '.join(missing)}")
    info = {
        "method": "given" if not wanted else "given+carved",
        "given": list(given_splits),
        "seed": seed,
        "carved": {s: {"from": "train", "fraction_of_train": f} for s, f in wanted.items()},
    }
    return parts, info


def _stratified_carve(
    labels: np.ndarray, fractions: dict[str, float], seed: int, classes: list[str]
) -> dict[str, np.ndarray]:
    """Split indices of ``labels`` per class: each named split gets round(n·fraction) (at least one), train the rest.

    Every class lands in every split with a positive fraction; a class with too few images raises ``DataError``.
    """
    active = {s: f for s, f in fractions.items() if f > 0}
    parts: dict[str, list[np.ndarray]] = {s: [] for s in ("train", *fractions)}
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        n = len(members)
        needed = len(active) + 1
        if n == 0:
            raise DataError(f"class {name!r} has no images to split")
        if n < needed:
            wording = " and ".join(f"{s}_fraction={f}" for s, f in active.items())
            raise DataError(
                f"class {name!r} has only {n} image(s), but with {wording} each class needs at least {needed} "
                f"(one for train and one for each of {', '.join(active)}); add images to {name!r}, remove it, "
                "or set the fraction to 0"
            )
        counts = {s: max(1, math.floor(n * f + 0.5)) for s, f in active.items()}
        while sum(counts.values()) >= n:  # keep at least one training image
            largest = max(counts, key=lambda s: counts[s])
            counts[largest] -= 1
        rng = np.random.default_rng([seed, label])
        order = members[rng.permutation(n)]
        start = 0
        for split in fractions:
            k = counts.get(split, 0)
            parts[split].append(order[start : start + k])
            start += k
        parts["train"].append(order[start:])
    return {s: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, np.int64) for s, chunks in parts.items()}


def _assemble(
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
            images=_resize_batch(native[idx], image_size, sub),
            labels=torch.from_numpy(labels[idx].astype(np.int64)),
            sources=[sources[i] for i in idx.tolist()],
        )
    return _finish(name, classes, splits, image_size, 1 if native.shape[1] == 1 else 3, info)


def _class_counts(labels: torch.Tensor, classes: list[str]) -> dict[str, int]:
    """Images per class name (json-able)."""
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return {name: int(n) for name, n in zip(classes, counts)}


def _finish(
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


# --------------------------------------------------------------------------------------------------
# In-memory sources: textures, digits, torchvision
# --------------------------------------------------------------------------------------------------


def _resize_batch(array: np.ndarray, image_size: int, reporter: Reporter | None = None) -> torch.Tensor:
    """(N, C, h, w) uint8 or float (0..255) → (N, 3, S, S) uint8: bilinear, antialiased when shrinking, in chunks."""
    n, channels, height, width = array.shape
    out = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    chunk = 2048
    for start in range(0, n, chunk):
        block = torch.from_numpy(np.ascontiguousarray(array[start : start + chunk]))
        if block.dtype == torch.uint8 and (height, width) == (image_size, image_size):
            out[start : start + chunk] = block.expand(-1, 3, -1, -1) if channels == 1 else block
            continue
        block = block.to(torch.float32)
        if (height, width) != (image_size, image_size):
            shrinking = height > image_size or width > image_size
            block = F.interpolate(
                block, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrinking
            )
        block = block.round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + chunk] = block.expand(-1, 3, -1, -1) if channels == 1 else block
        if reporter is not None:
            done = min(n, start + chunk)
            reporter.update(STAGE, done / max(1, n), f"resizing {done}/{n} images")
    return out


_Arrays = tuple[np.ndarray, np.ndarray, list[str]]  # native images, labels, sources


def _select_classes(
    all_classes: list[str], wanted: list[str] | None, arrays: dict[str, _Arrays], source: str
) -> tuple[list[str], dict[str, _Arrays]]:
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


def _load_textures(image_size: int, seed: int, classes: list[str] | None, reporter: Reporter) -> Dataset:
    """The ``textures`` set: patches from disjoint row bands of three photographs (see ``textures.py``)."""
    from layercut.stages import textures

    reporter.update(STAGE, 0.1, "cutting texture patches")
    made = textures.make_textures(seed)
    arrays = {s: (made.patches[s], made.labels[s], made.sources[s]) for s in SPLITS}
    names, arrays = _select_classes(made.classes, classes, arrays, "textures")
    splits = {}
    for s in SPLITS:
        images, labels, sources = arrays[s]
        splits[s] = Split(_resize_batch(images[:, None], image_size), torch.from_numpy(labels), sources)
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
    return _finish("textures", names, splits, image_size, 1, info)


def _load_digits(
    image_size: int, seed: int, val_fraction: float, test_fraction: float, classes: list[str] | None, reporter: Reporter
) -> Dataset:
    """scikit-learn's 8x8 digits (0..16 scaled to 0..255), upscaled bilinearly and split seeded-stratified."""
    from sklearn.datasets import load_digits

    reporter.update(STAGE, 0.1, "loading scikit-learn digits")
    bunch = load_digits()
    values = bunch.images.astype(np.float32) * (255.0 / 16.0)
    labels = bunch.target.astype(np.int64)
    sources = [f"digits:{i}" for i in range(len(labels))]
    names, arrays = _select_classes([str(d) for d in range(10)], classes, {"all": (values, labels, sources)}, "digits")
    values, labels, sources = arrays["all"]
    parts = _stratified_carve(labels, {"val": val_fraction, "test": test_fraction}, seed, names)
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
    return _assemble("digits", names, values[:, None], labels, sources, parts, image_size, info)


def default_data_root() -> Path:
    """Where torchvision datasets are stored: ``$LAYERCUT_DATA_ROOT`` or ``./layercut-data/datasets``."""
    return Path(os.environ.get("LAYERCUT_DATA_ROOT") or DEFAULT_DATA_ROOT).expanduser()


def _open_torchvision(key: str, folder: Path, train: bool):
    """Open one split of a torchvision dataset from ``folder``, trying a (bounded) download only when it is missing.

    Set ``LAYERCUT_NO_DOWNLOAD=1`` to never try a download.
    """
    from torchvision import datasets as tvd

    spec = TORCHVISION_DATASETS[key]
    cls = getattr(tvd, spec.class_name)
    kwargs = {"train": train} if spec.split_kwarg == "train" else {"split": "train" if train else "test"}
    try:
        return cls(str(folder), download=False, **kwargs)
    except Exception:  # not there (RuntimeError) or not extracted yet: let torchvision fetch or extract it
        pass
    if os.environ.get("LAYERCUT_NO_DOWNLOAD", "").strip().lower() in ("1", "true", "yes"):
        raise MissingResourceError(
            f"dataset {key!r} is not in {folder} and downloads are turned off (LAYERCUT_NO_DOWNLOAD). "
            f"Put {spec.files_hint} in {folder} (or set LAYERCUT_DATA_ROOT / --data-root to the folder that "
            f"holds {key}/)"
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib gets no timeout from torchvision; bound every socket op
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(str(folder), download=True, **kwargs)
    except Exception as exc:
        raise MissingResourceError(
            f"dataset {key!r} is not in {folder} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Put {spec.files_hint} in {folder} (or set LAYERCUT_DATA_ROOT / --data-root to the folder that "
            f"holds {key}/), or use a built-in offline set ({', '.join(BUILTIN_DATASETS)}) or an image folder"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """Images as (N, C, H, W) uint8 and labels as int64 from a torchvision dataset object."""
    data = ds.data
    data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if data.ndim == 3:
        data = data[:, None]
    elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
        data = data.transpose(0, 3, 1, 2)
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = ds.labels
    targets = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return data.astype(np.uint8, copy=False), targets.astype(np.int64)


def _load_torchvision(
    key: str,
    image_size: int,
    seed: int,
    val_fraction: float,
    classes: list[str] | None,
    data_root: str | None,
    reporter: Reporter,
) -> Dataset:
    """A torchvision dataset: its test set is the test split; val is carved (seeded, stratified) out of train."""
    folder = (Path(data_root).expanduser() if data_root else default_data_root()) / key
    reporter.update(STAGE, 0.02, f"opening {key} in {folder}")
    train_ds = _open_torchvision(key, folder, train=True)
    test_ds = _open_torchvision(key, folder, train=False)
    train_images, train_labels = _torchvision_arrays(train_ds)
    test_images, test_labels = _torchvision_arrays(test_ds)
    all_classes = [str(c) for c in getattr(train_ds, "classes", [str(d) for d in range(int(train_labels.max()) + 1)])]
    arrays = {
        "train": (train_images, train_labels, [f"{key}:train:{i}" for i in range(len(train_labels))]),
        "test": (test_images, test_labels, [f"{key}:test:{i}" for i in range(len(test_labels))]),
    }
    names, arrays = _select_classes(all_classes, classes, arrays, key)
    train_images, train_labels, train_sources = arrays["train"]
    test_images, test_labels, test_sources = arrays["test"]
    parts = _stratified_carve(train_labels, {"val": val_fraction}, seed, names)
    # one index space: the train images first, then the test images, so _assemble can pick each split
    native = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    offset = len(train_labels)
    parts["test"] = np.arange(offset, offset + len(test_labels))
    info = {
        "source": key,
        "kind": "torchvision",
        "folder": str(folder),
        "native_sizes": {f"{train_images.shape[3]}x{train_images.shape[2]}": len(train_labels) + len(test_labels)},
        "split": {
            "method": "given+carved",
            "given": ["train", "test"],
            "seed": seed,
            "carved": {"val": {"from": "train", "fraction_of_train": val_fraction}},
            "note": "test_fraction does not apply: the dataset's own test set is the test split",
        },
    }
    reporter.update(STAGE, 0.1, f"resizing {len(labels)} images")
    return _assemble(
        key, names, native, labels, train_sources + test_sources, parts, image_size, info, reporter.scaled(0.1, 0.99)
    )


# --------------------------------------------------------------------------------------------------
# Helpers other stages use
# --------------------------------------------------------------------------------------------------


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


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flip and reflect-padded random translation (up to 1/8 of the size).

    Batched gathers on the images' device; the random draws come from ``generator`` (on its own device),
    so a seeded generator gives the same result every time. Values are only moved, never changed.
    """
    if images.dim() != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    if batch == 0:
        return images.clone()
    gen_device = generator.device
    flip = torch.rand(batch, generator=generator, device=gen_device) < 0.5
    pad_h, pad_w = height // 8, width // 8
    shift_y = torch.randint(-pad_h, pad_h + 1, (batch,), generator=generator, device=gen_device)
    shift_x = torch.randint(-pad_w, pad_w + 1, (batch,), generator=generator, device=gen_device)
    device = images.device
    flip, shift_y, shift_x = flip.to(device), shift_y.to(device), shift_x.to(device)

    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    rows = _reflect(ys.unsqueeze(0) + shift_y.unsqueeze(1), height)  # (B, H)
    out_x = torch.where(flip.unsqueeze(1), (width - 1 - xs).unsqueeze(0), xs.unsqueeze(0))
    cols = _reflect(out_x + shift_x.unsqueeze(1), width)  # (B, W)
    picked = images.gather(2, rows.view(batch, 1, height, 1).expand(batch, channels, height, width))
    return picked.gather(3, cols.view(batch, 1, 1, width).expand(batch, channels, height, width))


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices just outside ``0..size-1`` back inside without repeating the edge ('reflect' padding)."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def stratified_sample(labels: torch.Tensor, per_class: int, max_total: int, seed: int) -> torch.Tensor:
    """Seeded indices of up to ``per_class`` images of every class, at most ``max_total`` in all, sorted.

    When the cap bites, classes are taken round-robin so every class stays represented as far as possible.
    """
    if per_class < 1 or max_total < 1:
        raise LayercutError(f"per_class and max_total must be at least 1, got {per_class} and {max_total}")
    values = labels.detach().cpu().numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(values == c))[:per_class] for c in np.unique(values)]
    chosen: list[int] = []
    for rank in range(per_class):
        for pick in picks:
            if rank < len(pick) and len(chosen) < max_total:
                chosen.append(int(pick[rank]))
    return torch.tensor(sorted(chosen), dtype=torch.int64)
