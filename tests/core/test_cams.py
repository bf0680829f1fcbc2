"""CAMs: hand-computed maps, equality with pytorch-grad-cam, batching, targets, layers, in-place ReLUs, restoration."""

from __future__ import annotations

import copy
import itertools
import warnings

import numpy as np
import pytest
import pytorch_grad_cam as pgc  # the reference (dev extra), never skipped
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection,
    get_2d_projection_with_sign_correction,
)
from torch import nn
from torchvision import models as tvm

from layercut.contracts.errors import Cancelled, LayercutError
from layercut.stages.architectures import build_model
from layercut.stages.cams import (
    CAM_METHODS,
    compute_cams,
    default_layer,
    eigencam,
    normalise_maps,
    resolve_layer,
    resolve_targets,
    to_input_size,
    upsample,
)
from layercut.stages.cutpoints import resolve_cut_point
from layercut.stages.progress import Reporter
from layercut.stages.truncation import truncate
from layercut.testing.nets import module_state as _state
from layercut.testing.nets import odd_state_model as _odd_state_model
from layercut.testing.nets import random_images as _images
from layercut.testing.nets import seeded as _seeded

REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "scorecam": pgc.ScoreCAM,
}


def _close(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray, rel: float = 1e-5) -> None:
    """Equal up to ``rel`` of the largest magnitude of each image's map (the last two dimensions)."""
    actual, expected = torch.as_tensor(np.asarray(actual)), torch.as_tensor(np.asarray(expected))
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.flatten(-2).abs().amax(dim=-1).clamp_min(1e-12)[..., None, None]
    worst = ((actual.double() - expected.double()).abs() / scale).max().item()
    assert worst <= rel, f"largest relative difference {worst:.3g} > {rel}"


# --- hand-computed maps -------------------------------------------------------------------------


def _hand_net() -> nn.Sequential:
    """conv 1x1 (1→2 channels, weights [1, −1], no bias) → ReLU → flatten → linear (8 → 2, no bias)."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        # flatten order: channel 0 at (0,0) (0,1) (1,0) (1,1), then channel 1
        head.weight.copy_(torch.tensor([[1.0, 2.0, 0.0, -1.0, 1.0, 1.0, -2.0, 0.5], [0.0] * 8]))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head).eval()


HAND_X = torch.tensor([[1.0, -2.0], [3.0, -4.0]]).view(1, 1, 2, 2)


def test_hand_computed_gradcam_and_layercam():
    # A (after the ReLU): channel 0 = relu(x) = [[1, 0], [3, 0]], channel 1 = relu(-x) = [[0, 2], [0, 4]].
    # logit 0 = Σ W0·A = (1·1) + (1·2 + 0.5·4) = 5, logit 1 = 0 → the predicted class is 0.
    # G = dlogit0/dA = W0 reshaped: channel 0 [[1, 2], [0, −1]], channel 1 [[1, 1], [−2, 0.5]].
    # Grad-CAM: weights = spatial means of G = [0.5, 0.125];
    #   0.5·[[1, 0], [3, 0]] + 0.125·[[0, 2], [0, 4]] = [[0.5, 0.25], [1.5, 0.5]] (all ≥ 0, the ReLU keeps it).
    # Layer-CAM: Σ relu(G)·A = [[1·1, 2·0], [0·3, 0·0]] + [[1·0, 1·2], [0·0, 0.5·4]] = [[1, 2], [0, 2]].
    model = _hand_net()
    result = compute_cams(model, HAND_X, ["gradcam", "layercam"], layer="1")
    assert result.layer == "1" and result.targets.tolist() == [[0]]
    torch.testing.assert_close(result.logits, torch.tensor([[5.0, 0.0]]))
    torch.testing.assert_close(result.maps["gradcam"], torch.tensor([[[[0.5, 0.25], [1.5, 0.5]]]]))
    torch.testing.assert_close(result.maps["layercam"], torch.tensor([[[[1.0, 2.0], [0.0, 2.0]]]]))
    # Class 1 has zero weights: zero gradient, zero maps.
    zero = compute_cams(model, HAND_X, ["gradcam", "layercam"], layer="1", target=1)
    assert zero.targets.tolist() == [[1]] and all(not m.any() for m in zero.maps.values())


def test_hand_computed_display_scaling():
    # (m − min) / (max − min): [[0.5, 0.25], [1.5, 0.5]] → [[0.2, 0], [1, 0.2]]; bilinear 2→4 (align_corners=False)
    # samples at −0.25, 0.25, 0.75, 1.25 in input coordinates, clamped at the borders.
    raw = torch.tensor([[[0.5, 0.25], [1.5, 0.5]]])
    torch.testing.assert_close(normalise_maps(raw), torch.tensor([[[0.2, 0.0], [1.0, 0.2]]]), rtol=0, atol=1e-6)
    row0 = [0.5, 0.5 * 0.75 + 0.25 * 0.25, 0.5 * 0.25 + 0.25 * 0.75, 0.25]
    torch.testing.assert_close(upsample(raw, 4)[0, 0], torch.tensor(row0))
    shown = to_input_size(raw, 4)
    assert shown.shape == (1, 4, 4) and shown.min() == 0 and abs(float(shown.max()) - 1) < 1e-6
    # a map of tiny values is scaled like a large one (the ε never matters)
    torch.testing.assert_close(to_input_size(raw * 1e-6, 4), shown, rtol=0, atol=1e-6)


def test_eigencam_sign_is_fixed():
    acts = torch.rand(3, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = eigencam(acts)
    expected = np.maximum(get_2d_projection_with_sign_correction(acts.numpy()), 0)
    _close(maps, expected)
    # the uncorrected projection equals ours up to a per-image sign
    raw = get_2d_projection(acts.numpy())
    for i in range(3):
        assert np.allclose(np.abs(raw[i]), np.abs(get_2d_projection_with_sign_correction(acts.numpy())[i]), atol=1e-5)


# --- equality with pytorch-grad-cam ---------------------------------------------------------------


def _reference(method: str, model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: list[int] | None):
    """pytorch-grad-cam's raw map at layer resolution (before its ReLU) and its final normalised map."""
    targets = None if classes is None else [ClassifierOutputTarget(c) for c in classes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = REFERENCE[method](model, [layer])
        if method == "scorecam":
            cam.batch_size = 64
        final = cam(images, targets=targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients else None
        if targets is None:
            targets = [ClassifierOutputTarget(int(c)) for c in cam.outputs.argmax(1)]
        raw = cam.get_cam_image(images, layer, targets, acts, grads, False)
        cam.activations_and_grads.release()
    return np.maximum(raw, 0), final


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_equals_pytorch_grad_cam_on_small_cnn(method):
    model = _seeded(build_model("smallcnn", 3))
    images = _images(4, 3, 32)
    for layer in ("features.10", "features.12"):  # an in-place ReLU, and a conv whose output a BN follows
        ours = compute_cams(model, images, [method], layer=layer)
        raw, final = _reference(method, model, resolve_layer(model, layer)[1], images, None)
        _close(ours.maps[method][:, 0], raw)
        _close(to_input_size(ours.maps[method][:, 0], 32), final)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_equals_pytorch_grad_cam_on_resnet_for_named_classes(method):
    model = _seeded(tvm.resnet18(num_classes=4))
    images = _images(3, 3, 64)
    ours = compute_cams(model, images, [method], layer="layer3", target="all")  # layer3's output, 4x4
    assert ours.layer == "layer3" and ours.targets.tolist() == [[0, 1, 2, 3]] * 3
    for c in (0, 3):
        raw, final = _reference(method, model, model.layer3, images, [c] * 3)
        _close(ours.maps[method][:, c], raw)
        _close(to_input_size(ours.maps[method][:, c], 64), final)
    single = compute_cams(model, images, [method], layer="layer3", target=3)
    torch.testing.assert_close(single.maps[method][:, 0], ours.maps[method][:, 3])


def test_eigencam_equals_pytorch_grad_cam_where_its_svd_sign_agrees():
    model = _seeded(build_model("smallcnn", 3))
    images = _images(8, 3, 32)
    ours = compute_cams(model, images, ["eigencam"], layer="features.10", keep_activations=True)
    _close(ours.maps["eigencam"][:, 0], np.maximum(get_2d_projection_with_sign_correction(ours.activations.numpy()), 0))
    raw, final = _reference("eigencam", model, model.features[10], images, None)
    corrected = get_2d_projection_with_sign_correction(ours.activations.numpy())
    agrees = [
        i for i in range(8) if np.allclose(get_2d_projection(ours.activations.numpy())[i], corrected[i], atol=1e-5)
    ]
    assert 0 < len(agrees) < 8  # numpy's SVD picks either sign: the reason for the sign correction
    _close(ours.maps["eigencam"][agrees, 0], raw[agrees])
    _close(to_input_size(ours.maps["eigencam"][agrees, 0], 32), final[agrees])


# --- batching, targets, layers ----------------------------------------------------------------


def test_batches_equal_one_image_at_a_time():
    model = _seeded(build_model("smallcnn", 3))
    images = _images(5, 3, 32)
    whole = compute_cams(model, images, CAM_METHODS, batch_size=5, score_batch_size=1000)
    for batch_size, score_batch_size in ((1, 7), (2, 64), (3, 100)):
        parts = compute_cams(model, images, CAM_METHODS, batch_size=batch_size, score_batch_size=score_batch_size)
        for method in CAM_METHODS:
            _close(parts.maps[method], whole.maps[method])
    for i in range(5):
        one = compute_cams(model, images[i : i + 1], CAM_METHODS)
        for method in CAM_METHODS:
            _close(one.maps[method], whole.maps[method][i : i + 1])


def test_targets_all_has_one_map_per_class():
    model = _seeded(build_model("smallcnn", 3))
    images = _images(2, 3, 32)
    every = compute_cams(model, images, CAM_METHODS, target="all")
    for method in CAM_METHODS:
        assert every.maps[method].shape == (2, 3, 4, 4)
    predicted = compute_cams(model, images, CAM_METHODS)
    column = every.logits.argmax(1)
    for method in CAM_METHODS:
        _close(every.maps[method][torch.arange(2), column], predicted.maps[method][:, 0])
    # Eigen-CAM does not depend on the class; the gradient CAMs do.
    assert torch.equal(every.maps["eigencam"][:, 0], every.maps["eigencam"][:, 2])
    assert not torch.allclose(every.maps["gradcam"][:, 0], every.maps["gradcam"][:, 2])


def test_resolve_targets_and_errors():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert resolve_targets(logits, "predicted").tolist() == [[1], [0]]
    assert resolve_targets(logits, 2).tolist() == [[2], [2]]
    assert resolve_targets(logits, "all").tolist() == [[0, 1, 2]] * 2
    assert resolve_targets(logits, torch.tensor([2, 1])).tolist() == [[2], [1]]
    with pytest.raises(LayercutError, match="out of range"):
        resolve_targets(logits, 3)
    with pytest.raises(LayercutError, match="'predicted', 'all' or a class index"):
        resolve_targets(logits, "best")


def test_default_layers():
    assert default_layer(build_model("smallcnn", 3)) == "features.14"  # the last ReLU
    assert default_layer(tvm.vgg11(num_classes=3)) == "features.19"  # the last ReLU, before the last max-pool
    assert default_layer(tvm.resnet18(num_classes=3)) == "layer4.1"
    assert default_layer(tvm.efficientnet_b0(num_classes=3)) == "features.8"
    assert default_layer(tvm.mobilenet_v3_small(num_classes=3)) == "features.12"
    base = build_model("smallcnn", 3)
    slim = truncate(base, resolve_cut_point(base, "features.6"), 3)
    assert default_layer(slim) == "features.6"
    assert resolve_layer(slim, "features.6")[1] is slim.body[6]
    assert resolve_layer(slim, "body.features_2")[1] is slim.body[2]
    # a model the cut-point rules do not know: the activation after the last conv
    odd = nn.Sequential()
    odd.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    odd.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    assert default_layer(odd) == "stem.1"


def test_layer_errors_name_the_choices():
    model = _seeded(tvm.resnet18(num_classes=3))
    assert resolve_layer(model, "layer4") == ("layer4", model.layer4)
    assert resolve_layer(model, "layer2.0.conv1")[1] is model.layer2[0].conv1
    slim = truncate(model, resolve_cut_point(model, "layer3.0"), 3)  # in a slim ResNet, a stage is a group …
    assert resolve_layer(slim, "layer2") == ("layer2.1", slim.body[-2])  # … and means its last block
    with pytest.raises(LayercutError, match=r"no layer named 'layer9'.*layer4\.1"):
        resolve_layer(model, "layer9")
    images = _images(1, 3, 32)
    with pytest.raises(LayercutError, match=r"not a \(N, C, H, W\) feature map"):
        compute_cams(model, images, ["gradcam"], layer="fc")
    with pytest.raises(LayercutError, match="runs 2 times"):
        compute_cams(model, images, ["gradcam"], layer="layer1.0.relu")
    with pytest.raises(LayercutError, match="unknown CAM method"):
        compute_cams(model, images, ["gradcam", "fullgrad"])
    _assert_restored(model, ([False] * len(list(model.modules())), [True] * len(list(model.parameters()))))


# --- in-place ReLUs -------------------------------------------------------------------------------


def _not_inplace(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return twin


def test_inplace_relus_capture_the_right_tensor():
    """A VGG-style net (conv → ReLU(inplace=True)) against its twin with out-of-place ReLUs."""
    model = _seeded(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
    )
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    twin = _not_inplace(model)
    images = _images(3, 3, 32)
    for layer in ("6", "7"):  # a conv whose output the next ReLU(inplace=True) overwrites, and that ReLU
        ours = compute_cams(model, images, CAM_METHODS, layer=layer, keep_activations=True)
        plain = compute_cams(twin, images, CAM_METHODS, layer=layer, keep_activations=True)
        torch.testing.assert_close(ours.activations, plain.activations)
        for method in CAM_METHODS:
            torch.testing.assert_close(ours.maps[method], plain.maps[method])
        assert bool((ours.activations < 0).any()) == (layer == "6")  # the conv's own output, before the ReLU
        raw, _ = _reference("gradcam", twin, twin[int(layer)], images, None)
        _close(ours.maps["gradcam"][:, 0], raw)
    # pytorch-grad-cam on the in-place net reads the conv's output after the ReLU overwrote it: a different map
    wrong, _ = _reference("gradcam", model, model[6], images, None)
    assert np.abs(wrong - _reference("gradcam", twin, twin[6], images, None)[0]).max() > 1e-3 * np.abs(wrong).max()


# --- restoration ----------------------------------------------------------------------------------


def _assert_restored(model: nn.Module, state: tuple[list[bool], list[bool]]) -> None:
    for m in model.modules():
        assert "forward" not in m.__dict__, m
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks), m
    assert _state(model) == state
    assert all(p.grad is None for p in model.parameters())


class _Explode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("boom in backward")


class _ExplodingBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Explode.apply(x)


def test_restores_model_after_success_and_runs_in_eval_mode():
    model = _odd_state_model()
    before = _state(model)
    modes = []
    model.features[6].register_forward_pre_hook(lambda m, a: modes.append(m.training))
    images = _images(2, 3, 32)
    copy_of_images = images.clone()
    updates = []
    eval_result = compute_cams(model.eval(), images, CAM_METHODS)
    model.train()
    model.features[1].eval()
    result = compute_cams(
        model, images, CAM_METHODS, batch_size=1, reporter=Reporter(callback=lambda *a: updates.append(a))
    )
    model.features[6]._forward_pre_hooks.clear()
    _assert_restored(model, before)
    assert set(modes) == {False}  # BN and dropout ran in eval mode
    assert torch.equal(images, copy_of_images) and not images.requires_grad
    for method in CAM_METHODS:
        torch.testing.assert_close(result.maps[method], eval_result.maps[method])
    fractions = [fraction for _, fraction, _ in updates]
    assert {stage for stage, _, _ in updates} == {"explain"} and fractions[-1] == 1.0


def test_restores_model_after_cancel_and_errors():
    model = _odd_state_model()
    before = _state(model)
    counter = itertools.count()
    with pytest.raises(Cancelled):  # cancelled inside Score-CAM's chunks
        compute_cams(
            model,
            _images(2, 3, 32),
            CAM_METHODS,
            score_batch_size=8,
            reporter=Reporter(should_cancel=lambda: next(counter) >= 3),
        )
    _assert_restored(model, before)
    with pytest.raises(RuntimeError):  # error in the forward: 4 channels into a 3-channel conv
        compute_cams(model, _images(2, 4, 32), CAM_METHODS)
    _assert_restored(model, before)
    model.features.append(_ExplodingBackward())  # error in the backward, after the captured layer
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom in backward"):
        compute_cams(model, _images(2, 3, 32), ["gradcam"], layer="features.10")
    _assert_restored(model, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    model = _seeded(build_model("smallcnn", 3))
    images = _images(3, 3, 32)
    on_cpu = compute_cams(model, images, CAM_METHODS, target="all")
    on_gpu = compute_cams(copy.deepcopy(model).cuda(), images.cuda(), CAM_METHODS, target="all")
    for method in CAM_METHODS:
        assert on_gpu.maps[method].device.type == "cpu"
        _close(on_gpu.maps[method], on_cpu.maps[method], rel=1e-4)
