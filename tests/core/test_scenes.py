"""Tests of the built-in ``scenes`` set: seeded and balanced, disjoint splits, offline, usable by every model,
and not readable from global image statistics (its class is where the dots lie, not what the image holds)."""

from __future__ import annotations

import hashlib
import json
import socket

import numpy as np
import pytest
import torch

from layercut.stages.architectures import build_model
from layercut.stages.data import BUILTIN_DATASETS, SPLITS, load_dataset, scenes
from layercut.stages.stages import data_info

SMALL = {"train": 12, "val": 4, "test": 4}
MEDIUM = {"train": 200, "val": 50, "test": 100}  # enough for statistics, a fraction of the whole set


@pytest.fixture
def small_scenes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``load_dataset("scenes", …)`` draw a few images per class, for the tests that need no more."""
    monkeypatch.setattr(scenes, "IMAGES_PER_CLASS", SMALL)


@pytest.fixture(scope="module")
def medium() -> scenes.SceneImages:
    """A few hundred scenes per class at the native size, drawn once for the tests that need statistics."""
    return scenes.make_scenes(seed=0, images_per_class=MEDIUM)


def _offline(*args, **kwargs):
    raise OSError("no network in this test")


def test_same_seed_same_bytes_other_seed_other_images() -> None:
    first = scenes.make_scenes(seed=3, images_per_class=SMALL)
    again = scenes.make_scenes(seed=3, images_per_class=SMALL)
    other = scenes.make_scenes(seed=4, images_per_class=SMALL)
    for split in SPLITS:
        assert first.images[split].tobytes() == again.images[split].tobytes()
        assert np.array_equal(first.labels[split], again.labels[split])
        assert first.sources[split] == again.sources[split]
        assert not np.array_equal(first.images[split], other.images[split])
    # a class's stream does not depend on how many images are drawn from it
    more = scenes.make_scenes(seed=3, images_per_class={s: n + 2 for s, n in SMALL.items()})
    assert np.array_equal(more.images["train"][: SMALL["train"]], first.images["train"][: SMALL["train"]])


def test_classes_are_balanced_and_splits_share_no_image(medium: scenes.SceneImages) -> None:
    assert medium.classes == list(scenes.SCENE_CLASSES)
    digests = {}
    for split in SPLITS:
        images = medium.images[split]
        assert images.dtype == np.uint8 and images.shape[1:] == (3, scenes.NATIVE_SIZE, scenes.NATIVE_SIZE)
        counts = np.bincount(medium.labels[split], minlength=len(medium.classes))
        assert counts.tolist() == [MEDIUM[split]] * len(medium.classes)
        digests[split] = {hashlib.sha1(image.tobytes()).hexdigest() for image in images}
        assert len(digests[split]) == len(images)  # no image twice within a split either
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not digests[a] & digests[b]


def test_class_is_not_readable_from_global_colour_statistics(medium: scenes.SceneImages) -> None:
    """A linear classifier on each image's per-channel mean, spread and edge strength is near chance (25 %)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def global_statistics(images: np.ndarray) -> np.ndarray:
        values = images.astype(np.float32)
        edges = np.abs(np.diff(values, axis=2)).mean(axis=(2, 3)) + np.abs(np.diff(values, axis=3)).mean(axis=(2, 3))
        return np.concatenate([values.mean(axis=(2, 3)), values.std(axis=(2, 3)), edges], axis=1)

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(global_statistics(medium.images["train"]), medium.labels["train"])
    accuracy = classifier.score(global_statistics(medium.images["test"]), medium.labels["test"])
    chance = 1 / len(medium.classes)
    assert accuracy < chance + 0.08, f"global statistics give {accuracy:.1%} (chance {chance:.0%})"


def test_only_the_arrangement_of_the_dots_depends_on_the_class() -> None:
    """From the same random state every class draws the same background, clutter, fence, dot size, colours and
    noise; only which dots lie inside the fence differs, so the scenes differ in a few small patches only."""
    scenes_by_class = [scenes.draw_scene(np.random.default_rng(7), inside=k) for k in range(scenes.DOTS + 1)]
    for scene in scenes_by_class[1:]:
        changed = np.any(scene != scenes_by_class[0], axis=2).mean()
        assert 0 < changed < 0.08


def test_dots_keep_clear_of_the_fence_and_of_each_other() -> None:
    rng = np.random.default_rng(11)
    size, radius = scenes.NATIVE_SIZE, 2.75
    for _ in range(50):
        fence = scenes.draw_fence(rng, size)
        places = scenes.dot_places(rng, fence, radius, size)
        if places is None:
            continue
        clearance = fence.half_width + radius + scenes.DOT_CLEARANCE
        for sign, dots in zip((-1, 1), places):
            assert len(dots) == scenes.DOTS
            points = np.asarray(dots)
            distance = fence.signed_distance(points[:, 0] - fence.centre[0], points[:, 1] - fence.centre[1])
            assert np.all(sign * distance > clearance)
            assert points.min() >= size * scenes.DOT_MARGIN and points.max() <= size * (1 - scenes.DOT_MARGIN)
            gaps = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
            assert gaps[~np.eye(len(points), dtype=bool)].min() >= scenes.DOT_SEPARATION


@pytest.mark.usefixtures("small_scenes")
@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_loads_offline_at_any_size(monkeypatch: pytest.MonkeyPatch, image_size: int) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _offline)
    monkeypatch.setattr(socket.socket, "connect", _offline)
    assert "scenes" in BUILTIN_DATASETS
    ds = load_dataset("scenes", image_size=image_size, seed=1)
    assert ds.classes == list(scenes.SCENE_CLASSES) and ds.source_channels == 3
    for split in SPLITS:
        part = ds.split(split)
        assert part.images.dtype == torch.uint8
        assert part.images.shape == (len(part), 3, image_size, image_size)
        assert ds.info["per_class"][split] == {name: SMALL[split] for name in ds.classes}
    assert ds.train.sources[5] == "scenes:none-inside:train:5"
    assert ds.info["kind"] == "builtin" and ds.info["source"] == "scenes"
    json.dumps(ds.info)
    data_info(ds)  # the info is what a training result records


@pytest.mark.usefixtures("small_scenes")
def test_classes_can_be_selected() -> None:
    wanted = ["three-inside", "none-inside"]
    ds = load_dataset("scenes", image_size=32, classes=wanted)
    assert ds.classes == wanted
    assert ds.info["per_class"]["test"] == {name: SMALL["test"] for name in wanted}


@pytest.mark.usefixtures("small_scenes")
@pytest.mark.parametrize("arch", ["smallcnn", "vgg11", "resnet18"])
def test_every_architecture_runs_a_batch(arch: str) -> None:
    ds = load_dataset("scenes", image_size=32)
    model = build_model(arch, ds.num_classes).eval()
    with torch.no_grad():
        logits = model(ds.val.images[:4].float() / 255.0)
    assert logits.shape == (4, ds.num_classes) and torch.isfinite(logits).all()


def test_the_api_lists_what_the_set_holds() -> None:
    """The API describes the built-in sets without torch; its copy must match what the generator draws."""
    from layercut.api.dataset_scan import BUILTINS

    listed = BUILTINS["scenes"]
    assert listed["classes"] == list(scenes.SCENE_CLASSES)
    assert listed["counts"] == {s: {c: n for c in scenes.SCENE_CLASSES} for s, n in scenes.IMAGES_PER_CLASS.items()}
