"""The explain stage: equality with captum, feature maps, edges, and base vs slim on a real tiny run."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import captum.attr as captum_attr  # the reference (dev extra), never skipped
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import layercut as lc
from layercut.contracts.configs import EXPLAIN_METHODS, ExplainConfig
from layercut.contracts.errors import Cancelled, LayercutError
from layercut.stages.cams import compute_cams
from layercut.stages.checkpoint import load_checkpoint
from layercut.stages.explain import (
    edge_masks,
    explain_stage,
    guided_backprop,
    guided_gradcam,
    pick_images,
    saliency,
    top_channels,
)
from layercut.stages.gbp import GBP_RULES
from layercut.stages.progress import Reporter
from layercut.stages.training import normalise
from layercut.testing.nets import random_images as _images
from layercut.testing.nets import seeded as _seeded


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to ``rel`` of the largest magnitude of each image's map."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (expected.dim() - 1)))
    worst = ((actual - expected).abs() / scale).max().item()
    assert worst <= rel, f"largest relative difference {worst:.3g} > {rel}"


def _relu_net() -> nn.Sequential:
    """A VGG-style ReLU net (out-of-place ReLUs, which captum's hooks need) with BN and max-pools."""
    return _seeded(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 4),
        ),
        seed=2,
    )


# --- equality with captum ---------------------------------------------------------------------------


def test_gradcam_equals_captum_layer_gradcam():
    model = _relu_net()
    images = _images(4, 3, 32)
    ours = compute_cams(model, images, ["gradcam"], layer="7", target="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in range(4):
            expected = captum_attr.LayerGradCam(model, model[7]).attribute(images, target=c, relu_attributions=True)
            _close(ours.maps["gradcam"][:, c], expected[:, 0])


def test_guided_backprop_guided_gradcam_and_saliency_equal_captum():
    model = _relu_net()
    images = _images(4, 3, 32)
    targets = torch.tensor([[0], [3], [1], [1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gbp_ref = captum_attr.GuidedBackprop(model).attribute(images, target=targets[:, 0])
        ggc_ref = captum_attr.GuidedGradCam(model, model[8]).attribute(
            images, target=targets[:, 0], interpolate_mode="bilinear"
        )
        sal_ref = captum_attr.Saliency(model).attribute(images, target=targets[:, 0], abs=True)
    for rule in GBP_RULES:  # on a ReLU net every rule is guided backprop
        guided, used = guided_backprop(model, images, targets, rule=rule, batch_size=3)
        assert used.tolist() == targets.tolist() and guided.shape == (4, 1, 3, 32, 32)
        _close(guided[:, 0], gbp_ref)
    cams = compute_cams(model, images, ["gradcam"], layer="8", target=targets)
    _close(guided_gradcam(guided, cams.maps["gradcam"])[:, 0], ggc_ref)
    maps, _ = saliency(model, images, targets, batch_size=3)
    assert maps.shape == (4, 1, 32, 32)
    _close(maps[:, 0], sal_ref.amax(dim=1))


def test_guided_backprop_on_silu_net():
    """captum only overrides nn.ReLU: the 'ungated' rule (SiLU's own derivative) equals it; 'relu' gates SiLU."""
    model = _seeded(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.SiLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
        ),
        seed=5,
    )
    images = _images(3, 3, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = captum_attr.GuidedBackprop(model).attribute(images, target=2)
    ungated, _ = guided_backprop(model, images, 2, rule="ungated")
    _close(ungated[:, 0], expected)
    gated, _ = guided_backprop(model, images, 2, rule="relu")
    assert torch.isfinite(gated).all() and not torch.allclose(gated, ungated)


def test_predicted_target_is_the_models_prediction():
    model = _relu_net()
    images = _images(5, 3, 32)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    for function in (guided_backprop, saliency):
        _, used = function(model, images)
        assert used[:, 0].tolist() == predicted.tolist()
    _, every = saliency(model, images, "all")
    assert every.tolist() == [[0, 1, 2, 3]] * 5


def test_input_gradients_restore_the_model_after_an_error():
    model = _relu_net().train()
    model[0].weight.requires_grad_(False)
    state = ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])
    counter = itertools.count()
    with pytest.raises(Cancelled):
        guided_backprop(
            model, _images(4, 3, 32), batch_size=1, reporter=Reporter(should_cancel=lambda: next(counter) >= 2)
        )
    with pytest.raises(RuntimeError):
        saliency(model, _images(2, 4, 32))
    for m in model.modules():
        assert "forward" not in m.__dict__ and not (m._forward_hooks or m._backward_hooks)
    assert ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]) == state
    assert all(p.grad is None for p in model.parameters())


# --- feature maps, edges, image choice ------------------------------------------------------------------


def test_top_channels_by_mean_activation():
    acts = torch.zeros(2, 4, 2, 2)
    acts[0, 1] = 3.0  # mean 3
    acts[0, 3, 0, 0] = 8.0  # mean 2
    acts[0, 2] = -1.0
    acts[1, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5
    maps, channels, means = top_channels(acts, 2)
    assert channels[0].tolist() == [1, 3] and channels[1, 0] == 0
    torch.testing.assert_close(means[0], torch.tensor([3.0, 2.0]))
    assert torch.equal(maps[0, 1], acts[0, 3]) and torch.equal(maps[1, 0], acts[1, 0])
    assert top_channels(acts, 10)[1].shape == (2, 4)


def test_edges_outline_a_square():
    image = torch.zeros(1, 3, 32, 32)
    image[:, :, 8:24, 8:24] = 1.0
    edges = edge_masks(image)
    assert edges.shape == (1, 32, 32) and edges.dtype == bool
    rows, cols = np.nonzero(edges[0])
    assert rows.min() >= 6 and rows.max() <= 25 and cols.min() >= 6 and cols.max() <= 25
    assert not edges[0, 12:20, 12:20].any() and edges[0, 7:10, 16].any()


def test_pick_images_is_seeded_and_spread_over_classes():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    chosen = pick_images(labels, 7, seed=4)
    assert len(chosen) == 7 and torch.equal(chosen, pick_images(labels, 7, seed=4))
    assert labels[chosen].tolist() == [0, 0, 0, 1, 1, 2, 2]  # classes in turn: two rounds, then the first class
    assert chosen.tolist() == sorted(chosen.tolist())
    assert not torch.equal(chosen, pick_images(labels, 7, seed=5))
    assert len(pick_images(labels, 100, seed=0)) == 23
    with pytest.raises(LayercutError):
        pick_images(labels[:0], 4, seed=0)


# --- the stage on a real tiny run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path, object]:
    """A smallcnn trained for one epoch on textures at 32 px, and a slim copy cut at features.6 and retrained."""
    out = tmp_path_factory.mktemp("explain_run")
    data = lc.load_data("textures", image_size=32)
    lc.train(data, "smallcnn", out / "base", epochs=1)
    lc.truncate(out / "base" / "model.safetensors", out / "slim" / "initial.safetensors", cut="features.6")
    lc.retrain(out / "slim" / "initial.safetensors", data, out / "slim", epochs=1)
    return out / "base" / "model.safetensors", out / "slim" / "model.safetensors", data


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    image = plt.imread(path)
    assert min(image.shape[:2]) >= 300 and image.std() > 0.01, path


def test_base_vs_slim_on_a_tiny_run(tiny_models, tmp_path):
    base, slim, data = tiny_models
    updates = []
    out = tmp_path / "explain"
    result = explain_stage(
        base,
        data,
        ExplainConfig(images=4, edges=True, feature_maps=4, methods=list(EXPLAIN_METHODS)),
        out,
        reporter=Reporter(callback=lambda *a: updates.append(a)),
        compare_checkpoint=slim,
    )
    on_disk = json.loads((out / "explain.json").read_text())
    assert on_disk["figures"] == result.figures
    for key in (
        "stage",
        "methods",
        "target",
        "classes",
        "split",
        "images",
        "models",
        "agreement",
        "figures",
        "maps",
        "device",
        "seconds",
        "config",
    ):
        assert key in on_disk, key
    assert on_disk["methods"] == list(EXPLAIN_METHODS) and on_disk["target"] == "predicted"
    assert len(on_disk["images"]) == 4 and {i["true_class"] for i in on_disk["images"]} == set(data.classes)
    assert set(on_disk["models"]) == {"base", "slim"}
    base_entry, slim_entry = on_disk["models"]["base"], on_disk["models"]["slim"]
    assert base_entry["layer"] == "features.14" and slim_entry["layer"] == "features.6"
    assert not base_entry["slim"] and slim_entry["slim"] and slim_entry["cut_point"]["name"] == "features.6"
    assert base_entry["layer_shape"] == [64, 4, 4] and slim_entry["layer_shape"] == [32, 16, 16]

    # each model's prediction and probability are those of the model itself, on the same images
    indices = [i["index"] for i in on_disk["images"]]
    for entry, path in ((base_entry, base), (slim_entry, slim)):
        model, spec = load_checkpoint(path)
        inputs = normalise(
            data.test.images[indices],
            torch.tensor(spec.mean).view(1, -1, 1, 1),
            torch.tensor(spec.std).view(1, -1, 1, 1),
        )
        with torch.no_grad():
            probs = torch.softmax(model(inputs), dim=1)
        assert [p["class"] for p in entry["predictions"]] == probs.argmax(1).tolist()
        for p, row in zip(entry["predictions"], probs):
            assert abs(p["probability"] - float(row.max())) < 1e-5
        assert entry["targets"] == [[p["class"]] for p in entry["predictions"]]
        field = entry["receptive_field"]
        assert field["layer"] == entry["layer"] and len(field["units"]) == 4
        assert len(entry["feature_maps"]["channels"]) == 4 and len(entry["feature_maps"]["channels"][0]) == 4
    assert on_disk["agreement"] == np.mean(
        [b["class"] == s["class"] for b, s in zip(base_entry["predictions"], slim_entry["predictions"])]
    )

    expected = {
        f"{kind}_{key}" for kind in ("cams", "gradients", "feature_maps", "receptive_field") for key in ("base", "slim")
    } | {"base_vs_slim"}
    assert set(on_disk["figures"]) == expected
    for name, file in on_disk["figures"].items():
        assert file == f"{name}.png"
        _check_png(out / file)
    assert plt.get_fignums() == []

    with np.load(out / on_disk["maps"]) as maps:
        assert maps["indices"].tolist() == indices and maps["images"].shape == (4, 3, 32, 32)
        assert maps["base.gradcam"].shape == (4, 1, 4, 4) and maps["slim.scorecam"].shape == (4, 1, 16, 16)
        assert maps["base.guided_backprop"].shape == (4, 1, 3, 32, 32) and maps["slim.saliency"].shape == (4, 1, 32, 32)
        assert maps["base.feature_maps"].shape == (4, 4, 4, 4) and maps["base.probabilities"].shape == (4, 3)

    fractions = [fraction for stage, fraction, _ in updates if stage == "explain"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_every_class_and_a_chosen_layer(tiny_models, tmp_path):
    base, _, data = tiny_models
    config = ExplainConfig(
        images=3,
        methods=["gradcam", "eigencam"],
        target="all",
        layer="features.10",
        feature_layer="features.6",
        feature_maps=0,
    )
    result = lc.explain(base, data, tmp_path, **config.model_dump())
    entry = result.models["base"]
    assert entry.layer == "features.10" and entry.feature_maps.model_dump() == {
        "layer": "features.6",
        "channels": [],
        "means": [],
    }
    assert entry.targets == [[0, 1, 2]] * 3 and entry.receptive_field.layer == "features.6"
    assert set(result.figures) == {"cams_base", "class_cams_base", "receptive_field_base"}
    for file in result.figures.values():
        _check_png(tmp_path / file)
    assert result.agreement is None


def test_stage_errors_and_cancellation(tiny_models, tmp_path):
    base, slim, data = tiny_models
    with pytest.raises(LayercutError, match="not a class index"):
        explain_stage(base, data, ExplainConfig(target=5), tmp_path)
    with pytest.raises(LayercutError, match="no layer named 'layer4'"):
        explain_stage(base, data, ExplainConfig(layer="layer4", images=2), tmp_path)
    with pytest.raises(LayercutError, match="no layer named 'features.14'"):  # the slim model ends at features.6
        explain_stage(
            base,
            data,
            ExplainConfig(layer="features.14", images=2, methods=["gradcam"]),
            tmp_path,
            compare_checkpoint=slim,
        )
    other = lc.load_data("digits", image_size=32)
    with pytest.raises(LayercutError, match="trained on classes"):
        explain_stage(base, other, ExplainConfig(images=2), tmp_path)
    counter = itertools.count()
    with pytest.raises(Cancelled):
        explain_stage(
            base,
            data,
            ExplainConfig(images=4),
            tmp_path / "cancelled",
            reporter=Reporter(should_cancel=lambda: next(counter) >= 3),
            compare_checkpoint=slim,
        )


def test_the_default_methods_leave_out_only_the_costly_score_cam():
    assert set(ExplainConfig().methods) == set(EXPLAIN_METHODS) - {"scorecam"}
