"""torchvision's named datasets (CIFAR, MNIST and friends), read from ``<data root>/<name>/``.

The data root and whether a missing dataset may be downloaded are arguments: the stages read no settings
(the caller passes ``Settings().resolved_data_root`` and ``not Settings().no_download``). Downloads are
bounded by a socket timeout, and a dataset that cannot be had names the files to put in its folder.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tv_datasets

from layercut.contracts.errors import LayercutError, MissingResourceError
from layercut.contracts.sources import BUILTIN_DATASETS
from layercut.stages.data.arrays import assemble, select_classes
from layercut.stages.data.splitting import stratified_carve
from layercut.stages.data.types import STAGE, Dataset
from layercut.stages.progress import Reporter

DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to find one torchvision dataset and what a user must put in its folder."""

    class_name: str
    files_hint: str
    split_kwarg: str  # "train" (train=True/False) or "split" (split="train"/"test")


TORCHVISION_DATASETS: dict[str, TorchvisionSpec] = {
    "cifar10": TorchvisionSpec(
        "CIFAR10",
        "the archive cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
        "or its extracted folder cifar-10-batches-py/",
        "train",
    ),
    "cifar100": TorchvisionSpec(
        "CIFAR100",
        "the archive cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) "
        "or its extracted folder cifar-100-python/",
        "train",
    ),
    "mnist": TorchvisionSpec(
        "MNIST",
        "a folder MNIST/raw/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
        "train",
    ),
    "fashionmnist": TorchvisionSpec(
        "FashionMNIST",
        "a folder FashionMNIST/raw/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from github.com/zalandoresearch/fashion-mnist)",
        "train",
    ),
    "kmnist": TorchvisionSpec(
        "KMNIST",
        "a folder KMNIST/raw/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (from codh.rois.ac.jp/kmnist)",
        "train",
    ),
    "svhn": TorchvisionSpec(
        "SVHN",
        "train_32x32.mat and test_32x32.mat (from http://ufldl.stanford.edu/housenumbers/)",
        "split",
    ),
}


def open_torchvision(key: str, folder: Path, train: bool, allow_download: bool):
    """Open one split of a torchvision dataset from ``folder``, trying a (bounded) download only when it is
    missing and ``allow_download`` is true."""
    spec = TORCHVISION_DATASETS[key]
    cls = getattr(tv_datasets, spec.class_name)
    kwargs = {"train": train} if spec.split_kwarg == "train" else {"split": "train" if train else "test"}
    try:
        return cls(str(folder), download=False, **kwargs)
    except Exception:  # not there (RuntimeError) or not extracted yet: let torchvision fetch or extract it
        pass
    if not allow_download:
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


def load_torchvision(
    key: str,
    image_size: int,
    seed: int,
    val_fraction: float,
    classes: list[str] | None,
    data_root: str | Path | None,
    allow_download: bool,
    reporter: Reporter,
) -> Dataset:
    """A torchvision dataset from ``data_root/key``: its test set is the test split; val is carved (seeded,
    stratified) out of train."""
    if data_root is None:
        raise LayercutError(
            f"{key!r} is a torchvision dataset, read from a folder of datasets, and no data root was given: pass "
            f"data_root= (the folder that holds {key}/; on the command line --data-root, or set LAYERCUT_DATA_ROOT)"
        )
    folder = Path(data_root).expanduser() / key
    reporter.update(STAGE, 0.02, f"opening {key} in {folder}")
    train_ds = open_torchvision(key, folder, train=True, allow_download=allow_download)
    test_ds = open_torchvision(key, folder, train=False, allow_download=allow_download)
    train_images, train_labels = _torchvision_arrays(train_ds)
    test_images, test_labels = _torchvision_arrays(test_ds)
    all_classes = [str(c) for c in getattr(train_ds, "classes", [str(d) for d in range(int(train_labels.max()) + 1)])]
    arrays = {
        "train": (train_images, train_labels, [f"{key}:train:{i}" for i in range(len(train_labels))]),
        "test": (test_images, test_labels, [f"{key}:test:{i}" for i in range(len(test_labels))]),
    }
    names, arrays = select_classes(all_classes, classes, arrays, key)
    train_images, train_labels, train_sources = arrays["train"]
    test_images, test_labels, test_sources = arrays["test"]
    parts = stratified_carve(train_labels, {"val": val_fraction}, seed, names)
    # one index space: the train images first, then the test images, so assemble can pick each split
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
    return assemble(
        key, names, native, labels, train_sources + test_sources, parts, image_size, info, reporter.scaled(0.1, 0.99)
    )
