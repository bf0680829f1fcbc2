"""The train and retrain stages draw the per-class pictures: confused pairs (both) and class counts (train only)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from layercut.contracts.configs import DataConfig, TrainConfig, TruncateConfig
from layercut.stages import stages
from layercut.stages.data import Dataset, Split

CLASSES = ["dark", "mid", "light"]


def _split(per_class: int, seed: int) -> Split:
    """Three classes that differ only in brightness, 32 px."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    images = (torch.rand(len(labels), 3, 32, 32, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 90).to(torch.uint8)
    return Split(images=images, labels=labels, sources=[f"synthetic:{seed}:{i}" for i in range(len(labels))])


def _info() -> dict:
    """The description a loader would give of the synthetic data (what a training result records as ``data``)."""
    return {
        "name": "synthetic",
        "source": "synthetic",
        "kind": "builtin",
        "classes": list(CLASSES),
        "num_classes": len(CLASSES),
        "image_size": 32,
        "source_channels": 3,
        "sizes": {"train": 36, "val": 12, "test": 12},
        "per_class": {name: dict.fromkeys(CLASSES, n) for name, n in (("train", 12), ("val", 4), ("test", 4))},
        "split": {"method": "given", "seed": 0},
        "skipped": {"count": 0, "files": [], "reasons": {}},
        "warnings": [],
    }


def _dataset(with_counts: bool) -> Dataset:
    train, val, test = _split(12, 0), _split(4, 1), _split(4, 2)
    info = _info()
    return Dataset(
        name="synthetic",
        classes=list(CLASSES),
        train=train,
        val=val,
        test=test,
        image_size=32,
        source_channels=3,
        info=info if with_counts else {},
    )


TINY = TrainConfig(epochs=1, batch_size=12, device="cpu", patience=None)


def test_train_and_retrain_write_the_new_pictures(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_predict = stages.predict
    monkeypatch.setattr(
        stages, "predict", lambda model, split, *a, **k: calls.append(len(split)) or real_predict(model, split, *a, **k)
    )
    dataset = _dataset(with_counts=True)
    summary = stages.train_stage(
        dataset, DataConfig(source="synthetic", image_size=32), "smallcnn", TINY, tmp_path / "base"
    )
    assert calls == [len(dataset.val), len(dataset.test)]  # the pictures reuse the evaluation's logits
    for name in (
        "class_counts.png",
        "confused_pairs.png",
        "confusion_matrix.png",
        "roc_curves.png",
        "training_curves.png",
    ):
        path = tmp_path / "base" / name
        assert path.exists() and path.stat().st_size > 1000, name
    assert plt.get_fignums() == []
    assert json.loads((tmp_path / "base" / "metrics.json").read_text())["accuracy"] == summary.accuracy

    stages.truncate_stage(
        tmp_path / "base" / stages.CHECKPOINT_NAME, TruncateConfig(cut="1"), tmp_path / "slim" / "initial.safetensors"
    )
    stages.retrain_stage(tmp_path / "slim" / "initial.safetensors", dataset, TINY, tmp_path / "slim")
    assert (tmp_path / "slim" / "confused_pairs.png").exists()
    assert not (tmp_path / "slim" / "class_counts.png").exists()  # the data is the base model's: drawn once


def test_confused_pairs_picture_without_mistakes(tmp_path: Path) -> None:
    dataset = _dataset(True)
    probs = torch.nn.functional.one_hot(dataset.test.labels, len(CLASSES)).double()  # every prediction right
    path = stages._confused_pairs_picture(probs, dataset, tmp_path / "confused_pairs.png", "perfect")
    assert path.exists() and path.stat().st_size > 1000
    assert plt.get_fignums() == []


@pytest.mark.parametrize("with_counts", [True, False])
def test_class_counts_picture_from_info_or_labels(tmp_path: Path, monkeypatch, with_counts: bool) -> None:
    drawn = {}
    monkeypatch.setattr(
        stages.plots,
        "plot_class_counts",
        lambda per_split, path, title: drawn.update(per_split=per_split, title=title) or path,
    )
    stages._class_counts_picture(_dataset(with_counts), tmp_path / "class_counts.png")
    assert drawn["per_split"] == {
        "train": dict.fromkeys(CLASSES, 12),
        "val": dict.fromkeys(CLASSES, 4),
        "test": dict.fromkeys(CLASSES, 4),
    }
    assert drawn["title"] == "synthetic: images per class and split (train 36, val 12, test 12)"
