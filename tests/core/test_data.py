"""Tests of the data stage: folder layouts, built-in sets, error messages, the data root and probe sampling."""

from __future__ import annotations

import io
import json
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import layercut.stages
from layercut.contracts.configs import DataConfig
from layercut.contracts.errors import Cancelled, DataError, LayercutError, MissingResourceError
from layercut.stages.data import (
    SPLITS,
    Dataset,
    dataset_statistics,
    load_dataset,
    stratified_sample,
    textures,
)
from layercut.stages.progress import Reporter
from layercut.stages.stages import load_data

S = 32


def save_image(path: Path, size: int = S, seed: int = 0, mode: str = "RGB") -> Path:
    """Write a small random image with PIL (format from the extension)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)  # 2-D → L, 3-D → RGB
    return path


def make_class_folders(
    root: Path, classes=("cat", "dog", "fox"), per_class: int = 10, mode: str = "RGB", ext: str = "png"
) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save_image(root / name / f"{i:03d}.{ext}", seed=100 * c + i, mode=mode)
    return root


def all_sources(ds: Dataset) -> list[str]:
    return [s for split in SPLITS for s in ds.split(split).sources]


def check_shapes(ds: Dataset, size: int = S) -> None:
    for split in SPLITS:
        part = ds.split(split)
        assert part.images.dtype == torch.uint8
        assert part.images.shape == (len(part.sources), 3, size, size)
        assert part.labels.dtype == torch.int64
        assert part.labels.shape == (len(part.sources),)
    assert ds.info["sizes"] == {s: len(ds.split(s)) for s in SPLITS}
    json.dumps(ds.info)  # the info must be json-serialisable


# ------------------------------------------------------------------------------------------ sources


def test_class_folders_are_split_seeded_and_stratified(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "pets", per_class=10)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    progress: list[tuple[str, float, str]] = []
    ds = load_dataset(str(root), image_size=S, seed=3, reporter=Reporter(callback=lambda *a: progress.append(a)))
    check_shapes(ds)
    assert ds.classes == ["cat", "dog", "fox"] and ds.source_channels == 3
    assert ds.info["split"]["method"] == "seeded-stratified"
    for split in SPLITS:
        assert sorted(ds.info["per_class"][split]) == ds.classes
        assert all(n >= 1 for n in ds.info["per_class"][split].values())
    assert ds.info["per_class"]["val"] == {"cat": 2, "dog": 2, "fox": 2}  # round(10 * 0.15) = 2 each
    assert len(set(all_sources(ds))) == 30  # no image in two splits, none lost
    assert ds.info["ignored"]["count"] == 1  # notes.txt; the dot file is not even counted
    assert progress and progress[0][0] == "data" and progress[-1][1] == 1.0
    # the pixels are the file's pixels (same size, so no resampling)
    first = Path(ds.train.sources[0])
    expected = torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(ds.train.images[0], expected)
    assert ds.train.labels[0].item() == ds.classes.index(first.parent.name)

    again = load_dataset(str(root), image_size=S, seed=3)
    assert again.val.sources == ds.val.sources and torch.equal(again.val.images, ds.val.images)
    other = load_dataset(str(root), image_size=S, seed=4)
    assert other.val.sources != ds.val.sources


def test_pre_split_folders_are_kept(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        make_class_folders(tmp_path / split, classes=("a", "b"), per_class=n)
    ds = load_dataset(str(tmp_path), image_size=S)
    check_shapes(ds)
    assert ds.info["split"]["method"] == "given"
    assert ds.info["sizes"] == {"train": 12, "val": 4, "test": 6}
    assert all("/valid/" in s for s in ds.val.sources)
    assert all("/test/" in s for s in ds.test.sources)


def test_train_and_test_only_carves_val_from_train(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", classes=("a", "b"), per_class=20)
    make_class_folders(tmp_path / "test", classes=("a", "b"), per_class=4)
    ds = load_dataset(str(tmp_path), image_size=S, val_fraction=0.25)
    assert ds.info["split"]["method"] == "given+carved"
    assert ds.info["split"]["carved"] == {"val": {"from": "train", "fraction_of_train": 0.25}}
    assert ds.info["per_class"]["val"] == {"a": 5, "b": 5}
    assert ds.info["sizes"] == {"train": 30, "val": 10, "test": 8}
    assert all("/train/" in s for s in ds.val.sources + ds.train.sources)
    assert all("/test/" in s for s in ds.test.sources)


def test_train_only_carves_val_and_test(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train", classes=("a", "b"), per_class=10)
    ds = load_dataset(str(tmp_path), image_size=S)
    assert ds.info["sizes"] == {"train": 12, "val": 4, "test": 4}  # per class: round(10 * 0.15) = 2 each
    assert set(ds.info["split"]["carved"]) == {"val", "test"}
    assert all(len(ds.split(s)) > 0 for s in SPLITS)


def make_flat(root: Path, labels: list[str], per_label: int = 6) -> Path:
    for k, label in enumerate(labels):
        for i in range(per_label):
            save_image(root / f"{label}_{i}.jpg", seed=10 * k + i)
    return root


def test_flat_folder_with_class_names(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", ["cat", "hot_dog"])
    ds = load_dataset(str(root), image_size=S, classes=["cat", "hot_dog"])
    check_shapes(ds)
    assert ds.classes == ["cat", "hot_dog"]
    for split in SPLITS:
        for source, label in zip(ds.split(split).sources, ds.split(split).labels.tolist()):
            assert Path(source).name.startswith(ds.classes[label] + "_")


def test_flat_folder_with_integer_labels(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", ["0", "1", "2"])
    ds = load_dataset(str(root), image_size=S, classes=["red", "green", "blue"])
    assert ds.info["per_class"]["train"] == {"red": 4, "green": 4, "blue": 4}
    for source, label in zip(ds.train.sources, ds.train.labels.tolist()):
        assert Path(source).name.startswith(f"{label}_")


def test_grayscale_folder_gives_one_source_channel(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "gray", classes=("a", "b"), per_class=8, mode="L")
    ds = load_dataset(str(root), image_size=48)
    check_shapes(ds, 48)
    assert ds.source_channels == 1
    images = ds.train.images
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    mean, std = dataset_statistics(ds.train)
    assert mean[0] == pytest.approx(mean[2]) and 0.3 < mean[0] < 0.7 and std[0] > 0.1


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    for name in ("a", "b"):
        for i in range(5):
            path = tmp_path / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((S, S), 257 * 100, dtype=np.uint16)).save(path)
    ds = load_dataset(str(tmp_path), image_size=S)
    assert ds.source_channels == 1
    assert ds.info["decoded_as"] == "L"
    assert int(ds.train.images.float().mean().round()) == 100


def test_textures_are_deterministic_with_disjoint_regions() -> None:
    ds = load_dataset("textures", image_size=S, seed=1)
    check_shapes(ds)
    assert ds.classes == ["brick", "grass", "gravel"] and ds.source_channels == 1
    per = textures.PATCHES_PER_CLASS
    assert ds.info["per_class"] == {s: {c: per[s] for c in ds.classes} for s in SPLITS}
    assert ds.train.sources[17] == "textures:brick:train:17"
    assert torch.equal(load_dataset("textures", image_size=S, seed=1).test.images, ds.test.images)
    assert not torch.equal(load_dataset("textures", image_size=S, seed=2).test.images, ds.test.images)

    info = ds.info["textures"]
    size = info["patch_size"]
    for name in ds.classes:
        rows = [info["regions"][name][s]["rows"] for s in SPLITS]
        for (_, end), (start, _) in zip(rows, rows[1:]):
            assert end <= start  # bands do not overlap
        for split, (start, end) in zip(SPLITS, rows):
            for top, left in info["boxes"][name][split]:
                assert start <= top and top + size <= end and 0 <= left  # a patch never crosses its band


def test_texture_patches_are_crops_of_their_band() -> None:
    ds = load_dataset("textures", image_size=64, seed=0)  # native patch size: no resampling
    photo = textures.load_photograph("gravel")
    boxes = ds.info["textures"]["boxes"]["gravel"]["test"]
    index = ds.test.sources.index("textures:gravel:test:5")
    top, left = boxes[5]
    assert torch.equal(ds.test.images[index, 0], torch.from_numpy(photo[top : top + 64, left : left + 64].copy()))


def test_digits_are_stratified_by_the_fractions() -> None:
    ds = load_dataset("digits", image_size=S, seed=0, val_fraction=0.2, test_fraction=0.1)
    check_shapes(ds)
    assert ds.classes == [str(d) for d in range(10)] and ds.source_channels == 1
    assert sum(ds.info["sizes"].values()) == 1797
    totals = {c: sum(ds.info["per_class"][s][c] for s in SPLITS) for c in ds.classes}
    for c in ds.classes:
        assert abs(ds.info["per_class"]["val"][c] - 0.2 * totals[c]) <= 1
        assert abs(ds.info["per_class"]["test"][c] - 0.1 * totals[c]) <= 1
    assert ds.train.images.max() > 200  # 0..16 was scaled to 0..255


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an MNIST-style idx file (uint8, big-endian dimensions)."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_dataset_loads_from_the_data_root(tmp_path: Path) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_dataset("MNIST", image_size=S, data_root=str(tmp_path), val_fraction=0.25)
    check_shapes(ds)
    assert ds.source_channels == 1 and len(ds.classes) == 10
    assert ds.info["sizes"] == {"train": 30, "val": 10, "test": 10}


# ------------------------------------------------------------------------------------------ errors


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=5)
    (root / "empty_one").mkdir()
    (root / "empty_one" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="'empty_one'"):
        load_dataset(str(root), image_size=S)


def test_one_class_only(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("lonely",), per_class=5)
    with pytest.raises(DataError, match="only one class"):
        load_dataset(str(root), image_size=S)


def test_class_with_too_few_images_is_named(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=5)
    for path in sorted((root / "b").iterdir())[2:]:
        path.unlink()
    with pytest.raises(DataError, match="class 'b' has only 2 image"):
        load_dataset(str(root), image_size=S)


def test_corrupt_file_is_named_or_skipped(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=6)
    bad = root / "a" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="broken.png") as caught:
        load_dataset(str(root), image_size=S)
    assert "skip_unreadable" in str(caught.value)
    ds = load_dataset(str(root), image_size=S, skip_unreadable=True)
    assert ds.info["skipped"]["count"] == 1 and ds.info["skipped"]["files"] == [str(bad)]
    assert sum(ds.info["sizes"].values()) == 12


def test_truncated_file_fails_at_decode_and_can_be_skipped(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=6)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)).save(buffer, "PNG")
    cut = root / "b" / "cut.png"
    cut.write_bytes(buffer.getvalue()[:200])  # valid header, truncated pixel data
    with pytest.raises(DataError, match="cut.png"):
        load_dataset(str(root), image_size=S)
    ds = load_dataset(str(root), image_size=S, skip_unreadable=True)
    assert ds.info["skipped"]["files"] == [str(cut)]
    assert str(cut) not in all_sources(ds)


def test_mixed_sizes_are_named_unless_allowed(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=6)
    odd = save_image(root / "b" / "zz_big.png", size=40)
    with pytest.raises(DataError) as caught:
        load_dataset(str(root), image_size=S)
    message = str(caught.value)
    assert str(odd) in message and "40x40" in message and "32x32" in message and "allow_mixed_sizes" in message
    ds = load_dataset(str(root), image_size=S, allow_mixed_sizes=True)
    check_shapes(ds)
    assert ds.info["native_sizes"] == {"32x32": 12, "40x40": 1}


def test_unknown_source_lists_the_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="textures") as caught:
        load_dataset(str(tmp_path / "nowhere"), image_size=S)
    assert "cifar10" in str(caught.value) and "sub-folder per class" in str(caught.value)
    with pytest.raises(DataError, match="neither an existing folder"):
        load_dataset("imagenet-please", image_size=S)


def test_flat_folder_needs_the_class_list(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", ["cat", "dog"])
    with pytest.raises(DataError, match="--classes"):
        load_dataset(str(root), image_size=S)


def test_unknown_label_names_the_file_and_the_classes(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", ["cat", "dog"])
    save_image(root / "cow_1.jpg")
    with pytest.raises(DataError) as caught:
        load_dataset(str(root), image_size=S, classes=["cat", "dog"])
    assert "cow_1.jpg" in str(caught.value) and "cat, dog" in str(caught.value)
    with pytest.raises(DataError, match="5_0.jpg"):
        load_dataset(str(make_flat(tmp_path / "ints", ["0", "5"])), image_size=S, classes=["a", "b"])


def _offline(host, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, f"no network in this test (looked up {host})")


@pytest.mark.parametrize("downloads", ["off", "attempted"])
def test_missing_torchvision_dataset_names_the_folder(tmp_path: Path, monkeypatch, downloads: str) -> None:
    if downloads == "attempted":
        # the download is really attempted, on a network that cannot resolve names (as on these machines);
        # on a machine with internet this keeps the test from fetching CIFAR-10
        monkeypatch.setattr(socket, "getaddrinfo", _offline)
    with pytest.raises(MissingResourceError) as caught:
        load_dataset("cifar10", image_size=S, data_root=str(tmp_path), allow_download=downloads == "attempted")
    message = str(caught.value)
    assert "'cifar10'" in message and str(tmp_path / "cifar10") in message
    assert "cifar-10-python.tar.gz" in message


def test_too_small_image_size() -> None:
    with pytest.raises(LayercutError, match="too small"):
        load_dataset("digits", image_size=16)


def test_cancellation_stops_loading(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=5)
    with pytest.raises(Cancelled):
        load_dataset(str(root), image_size=S, reporter=Reporter(should_cancel=lambda: True))


# ------------------------------------------------------------------------------------------ helpers


def test_stratified_sample_counts_cap_and_determinism() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 8)
    picked = stratified_sample(labels, per_class=4, max_total=100, seed=0)
    assert torch.bincount(labels[picked], minlength=3).tolist() == [4, 3, 4]
    assert picked.dtype == torch.int64 and picked.tolist() == sorted(set(picked.tolist()))
    capped = stratified_sample(labels, per_class=4, max_total=7, seed=0)
    assert len(capped) == 7 and set(labels[capped].tolist()) == {0, 1, 2}
    assert torch.equal(capped, stratified_sample(labels, per_class=4, max_total=7, seed=0))
    assert not torch.equal(picked, stratified_sample(labels, per_class=4, max_total=100, seed=1))


# ------------------------------------------------------------------------------------------ data root


def make_mnist(root: Path, train: int = 40, test: int = 10) -> Path:
    """A tiny MNIST in torchvision's layout under ``root/mnist`` (``root`` is the data root)."""
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def test_a_torchvision_dataset_needs_a_data_root(monkeypatch, tmp_path: Path) -> None:
    make_mnist(tmp_path)
    monkeypatch.setenv("LAYERCUT_DATA_ROOT", str(tmp_path))  # the stages never read it: the caller passes it
    with pytest.raises(LayercutError, match="no data root was given: pass data_root=") as caught:
        load_dataset("mnist", image_size=S)
    assert "--data-root" in str(caught.value)


def test_the_data_stage_reads_no_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAYERCUT_DATA_ROOT", str(tmp_path / "bogus"))
    monkeypatch.setenv("LAYERCUT_NO_DOWNLOAD", "1")
    root = make_mnist(tmp_path / "given")
    ds = load_dataset("mnist", image_size=S, data_root=root, val_fraction=0.25)
    assert ds.info["folder"] == str(root / "mnist") and ds.info["sizes"] == {"train": 30, "val": 10, "test": 10}
    assert not (tmp_path / "bogus").exists()

    # LAYERCUT_NO_DOWNLOAD=1 is ignored: only allow_download decides whether a download is tried
    monkeypatch.setattr(socket, "getaddrinfo", _offline)
    with pytest.raises(MissingResourceError, match="could not be downloaded"):
        load_dataset("cifar10", image_size=S, data_root=tmp_path / "empty", allow_download=True)
    with pytest.raises(MissingResourceError, match="downloads are turned off"):
        load_dataset("cifar10", image_size=S, data_root=tmp_path / "empty", allow_download=False)


def test_load_data_passes_the_data_root_and_the_configs_own_wins(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAYERCUT_DATA_ROOT", str(tmp_path / "bogus"))
    default, own = make_mnist(tmp_path / "default"), make_mnist(tmp_path / "own", train=50)
    config = DataConfig(source="mnist", image_size=S, val_fraction=0.2)
    ds = load_data(config, data_root=default, allow_download=False)
    assert ds.info["folder"] == str(default / "mnist") and len(ds.train) + len(ds.val) == 40
    ds = load_data(config.model_copy(update={"data_root": str(own)}), data_root=default, allow_download=False)
    assert ds.info["folder"] == str(own / "mnist") and len(ds.train) + len(ds.val) == 50
    with pytest.raises(LayercutError, match="pass data_root="):
        load_data(config)


def test_no_stage_reads_the_environment() -> None:
    """Settings are read in one place (layercut.settings); the stages take folders and switches as arguments."""
    stages_dir = Path(layercut.stages.__file__).parent
    readers = [
        str(path.relative_to(stages_dir))
        for path in sorted(stages_dir.rglob("*.py"))
        if "os.environ" in path.read_text() or "getenv" in path.read_text()
    ]
    assert readers == []


def test_the_torch_free_catalog_names_every_dataset_the_loaders_read() -> None:
    """The command line and the API check a source against ``layercut.contracts.sources`` without importing torch:
    its names are exactly the ones the loaders read."""
    from layercut.contracts.sources import BUILTIN_DATASETS, TORCHVISION_DATASET_NAMES, dataset_key
    from layercut.stages.data import BUILTIN_DATASETS as LOADED_BUILTINS
    from layercut.stages.data import TORCHVISION_DATASETS

    assert tuple(TORCHVISION_DATASETS) == TORCHVISION_DATASET_NAMES
    assert LOADED_BUILTINS == BUILTIN_DATASETS == ("textures", "digits", "scenes")
    assert dataset_key("Fashion-MNIST") == "fashionmnist" and dataset_key("./digits") == ""
