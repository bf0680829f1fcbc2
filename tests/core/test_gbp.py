"""Guided-backprop maps: hand-computed maps, equivalence with captum, batching, rules, restoration."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import captum.attr as captum_attr  # the reference (dev extra), never skipped
import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

from layercut.contracts.errors import Cancelled, LayercutError
from layercut.stages.architectures import build_model
from layercut.stages.cutpoints import ACTIVATIONS, cut_points, feature_sequence, forward_features, resolve_cut_point
from layercut.stages.gbp import GBP_RULES, guided_activations, guided_backprop_maps, map_images
from layercut.stages.progress import Reporter
from layercut.stages.truncation import truncate
from layercut.testing.nets import module_state as _state
from layercut.testing.nets import odd_state_model as _odd_state_model
from layercut.testing.nets import random_images as _images
from layercut.testing.nets import seeded as _seeded


def _captum_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """captum's NeuronGuidedBackprop of the per-example sum of every cut point, as (N, L, C, H, W)."""
    sequence = feature_sequence(model)
    maps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for point in cut_points(model):
            layer = sequence[point.position][1]
            gbp = captum_attr.NeuronGuidedBackprop(model, layer)
            maps.append(gbp.attribute(images, neuron_selector=lambda out: out.flatten(1).sum(1)))
    return torch.stack(maps, dim=1)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to ``rel`` of the largest magnitude of each (image, cut point) map."""
    assert actual.shape == expected.shape
    scale = expected.flatten(2).abs().amax(dim=2).clamp_min(1e-12)[..., None, None, None]
    worst = ((actual - expected).abs() / scale).max().item()
    assert worst <= rel, f"largest relative difference {worst:.3g} > {rel}"


def _mixed_net() -> nn.Sequential:
    """A small plain CNN with SiLU, ReLU (in place), Hardswish (in place) and GELU activations."""
    return _seeded(
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.Hardswish(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.SiLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
        ),
        seed=3,
    )


# --- hand-computed maps -------------------------------------------------------------------------


def _hand_net() -> nn.Sequential:
    """conv 2x2 (1→2 channels, no bias) → ReLU → conv 1x1 (2→1, weights [2, -1], bias -1) → ReLU."""
    conv1 = nn.Conv2d(1, 2, 2, bias=False)
    conv2 = nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 1.0], [-1.0, 0.0]]]]))
        conv2.weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
        conv2.bias.copy_(torch.tensor([-1.0]))
    return nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU()).eval()


HAND_X = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [2.0, -1.0, 1.0]]).view(1, 1, 3, 3)


def test_hand_computed_maps_with_input_and_gradient_gates():
    # Forward. conv1 channel 0 (diagonal [[1,0],[0,1]]): pre = x[i,j] + x[i+1,j+1]
    #   pre1_c0 = [[1+1, 2-1], [0-1, 1+1]] = [[2, 1], [-1, 2]]        input gate [[1, 1], [0, 1]]
    # conv1 channel 1 ([[0,1],[-1,0]]): pre = x[i,j+1] - x[i+1,j]
    #   pre1_c1 = [[2-0, 0-1], [1-2, -1+1]] = [[2, -1], [-1, 0]]       input gate [[1, 0], [0, 0]] (0 is not > 0)
    # relu1 = c0 [[2, 1], [0, 2]], c1 [[2, 0], [0, 0]]
    # pre2 = 2*relu1_c0 - relu1_c1 - 1 = [[4-2-1, 2-0-1], [0-0-1, 4-0-1]] = [[1, 1], [-1, 3]]  gate [[1, 1], [0, 1]]
    #
    # Cut point 0 (first ReLU): the gradient at its output is 1 everywhere, so only the input gate acts:
    #   channel 0 passes windows (0,0), (0,1), (1,1): +1 at (i,j) and (i+1,j+1) for each
    #   channel 1 passes window (0,0): +1 at (0,1), -1 at (1,0)
    map0 = [[1, 1 + 1, 0], [-1, 1 + 1, 1], [0, 0, 1]]
    # Cut point 1 (second ReLU): relu2 passes 1 where pre2 > 0 → [[1, 1], [0, 1]];
    #   back through conv2: g_c0 = 2*[[1,1],[0,1]] = [[2,2],[0,2]], g_c1 = -1*[[1,1],[0,1]] = [[-1,-1],[0,-1]]
    #   guided relu1: g_c0 · 1[pre1_c0>0] · 1[g>0] = [[2,2],[0,2]];  g_c1 < 0 everywhere → the gradient gate
    #   zeroes channel 1 (the plain gradient would keep -1 at window (0,0), where pre1_c1 = 2 > 0).
    #   back through conv1 channel 0: window (0,0) → +2 at (0,0),(1,1); (0,1) → +2 at (0,1),(1,2);
    #   (1,1) → +2 at (1,1),(2,2)
    map1 = [[2, 2, 0], [0, 2 + 2, 2], [0, 0, 2]]
    # The plain gradient adds channel 1's -1 at window (0,0): -1 at (0,1), +1 at (1,0).
    plain1 = [[2, 2 - 1, 0], [0 + 1, 4, 2], [0, 0, 2]]

    model = _hand_net()
    expected = torch.tensor([map0, map1], dtype=torch.float32).view(1, 2, 1, 3, 3)
    for rule in GBP_RULES:
        maps = guided_backprop_maps(model, HAND_X, rule=rule)
        assert maps.dtype == torch.float32 and maps.shape == (1, 2, 1, 3, 3)
        assert torch.equal(maps, expected), rule

    # The example really exercises the gradient gate: the plain gradient differs from the GBP map.
    x = HAND_X.clone().requires_grad_()
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.equal(plain, torch.tensor(plain1, dtype=torch.float32).view(1, 1, 3, 3))


def _silu_prime(z: torch.Tensor) -> torch.Tensor:
    """d/dz z·σ(z) = σ(z)·(1 + z·(1 − σ(z)))."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def test_hand_computed_rules_on_silu_chain():
    # x → SiLU → ·(−1) → SiLU, every op 1x1 so each pixel is a scalar chain.
    neg = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        neg.weight.fill_(-1.0)
    model = nn.Sequential(nn.SiLU(), neg, nn.SiLU()).eval()
    x = torch.tensor([1.0, -0.5, 2.0, 3.0]).view(1, 1, 2, 2)
    z2 = -x * torch.sigmoid(x)  # input of the second SiLU
    one = torch.ones_like(x)
    zero = torch.zeros_like(x)
    expected = {
        # cut 0: gradient 1 at the first SiLU's output.
        # cut 1: gradient 1 at the second SiLU; g1 is what arrives at the first SiLU's output.
        "relu": [
            (x > 0).float(),  # 1 · 1[x>0] · 1[1>0]
            zero,  # g1 = -1 · 1[z2>0] ≤ 0 → gate 1[g1>0] closes everywhere
        ],
        "derivative": [
            _silu_prime(x),  # 1 · f'(x), gradient positive
            torch.where(-_silu_prime(z2) > 0, -_silu_prime(z2) * _silu_prime(x), zero),  # g1 = -f'(z2)
        ],
        "ungated": [
            _silu_prime(x) * one,
            -_silu_prime(z2) * _silu_prime(x),  # the plain chain rule
        ],
    }
    # f'(z2) < 0 for z2 < -1.28, i.e. for x = 2 and 3 (z2 = -1.76, -2.86): g1 > 0 passes there.
    assert (-_silu_prime(z2) > 0).tolist() == [[[[False, False], [True, True]]]]
    for rule, (cut0, cut1) in expected.items():
        maps = guided_backprop_maps(model, x, rule=rule)
        torch.testing.assert_close(maps[:, 0], cut0, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(maps[:, 1], cut1, rtol=1e-6, atol=1e-7)


# --- equivalence with captum ---------------------------------------------------------------------


def test_equals_captum_on_vgg_style_net_with_inplace_relus():
    model = _seeded(build_model("smallcnn", 3))
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    images = _images(3, 3, 16)
    expected = _captum_maps(model, images)
    for rule in GBP_RULES:
        _assert_close(guided_backprop_maps(model, images, rule=rule), expected)


def test_equals_captum_on_resnet_with_reused_relu():
    model = _seeded(tvm.resnet18(num_classes=3))
    # torchvision's BasicBlock applies its one ReLU module twice: count the calls to prove it.
    block = model.layer1[0]
    calls = []
    handle = block.relu.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        block(torch.zeros(1, 64, 4, 4))
    handle.remove()
    assert len(calls) == 2

    images = _images(2, 3, 32)
    maps = guided_backprop_maps(model, images)
    assert maps.shape == (2, 9, 3, 32, 32)
    _assert_close(maps, _captum_maps(model, images))


def test_ungated_equals_captum_on_silu_net_and_rules_differ():
    model = _mixed_net()
    images = _images(3, 3, 16)
    maps = {rule: guided_backprop_maps(model, images, rule=rule) for rule in GBP_RULES}
    for rule_maps in maps.values():
        assert torch.isfinite(rule_maps).all()
    _assert_close(maps["ungated"], _captum_maps(model, images))
    deepest = len(cut_points(model)) - 1
    for a, b in itertools.combinations(GBP_RULES, 2):
        difference = (maps[a][:, deepest] - maps[b][:, deepest]).abs().max()
        assert difference > 1e-3 * maps[a][:, deepest].abs().max(), (a, b)


def test_every_activation_is_a_cancellation_point_under_every_rule():
    """Under ``ungated`` the SiLU, Hardswish and GELU keep their own backward, behind a pass-through that checks
    for cancellation: a deep backward stops inside, whatever the rule (guided_backprop_maps, which the captum
    test above runs, always passes a checkpoint)."""
    model = _mixed_net()
    x = _images(1, 3, 16).requires_grad_()
    for rule in GBP_RULES:
        calls: list[int] = []
        with guided_activations(model, rule, checkpoint=lambda calls=calls: calls.append(1)):
            (with_checks,) = torch.autograd.grad(model(x).sum(), x)
        assert len(calls) == 5, rule  # SiLU, ReLU, Hardswish, SiLU, GELU: each passed once
        with guided_activations(model, rule):
            (without,) = torch.autograd.grad(model(x).sum(), x)
        assert torch.equal(with_checks, without), rule

        def cancel() -> None:
            raise Cancelled("cancelled during analyze")

        with guided_activations(model, rule, checkpoint=cancel), pytest.raises(Cancelled):
            torch.autograd.grad(model(x).sum(), x)


def test_efficientnet_rules_on_a_few_cut_points():
    model = _seeded(tvm.efficientnet_b0(num_classes=3))
    images = _images(2, 3, 32)
    chosen = [0, 4, 9]
    maps = {rule: guided_backprop_maps(model, images, rule=rule, cut_indices=chosen) for rule in GBP_RULES}
    # EfficientNet has no nn.ReLU: "ungated" is the plain gradient of each cut point's sum.
    x = images.clone().requires_grad_()
    for j, index in enumerate(chosen):
        with torch.enable_grad():
            out = forward_features(model, x, keep={index})[index]
            (plain,) = torch.autograd.grad(out.sum(), x)
        _assert_close(maps["ungated"][:, j : j + 1], plain.unsqueeze(1))
    for rule_maps in maps.values():
        assert rule_maps.shape == (2, 3, 3, 32, 32) and torch.isfinite(rule_maps).all()
    assert not torch.allclose(maps["relu"], maps["derivative"])
    assert not torch.allclose(maps["derivative"], maps["ungated"])


# --- rules, batching, cut-point selection --------------------------------------------------------


def test_all_rules_identical_on_relu_net():
    model = _seeded(build_model("smallcnn", 3))
    images = _images(2, 3, 16)
    maps = [guided_backprop_maps(model, images, rule=rule) for rule in GBP_RULES]
    assert all(torch.equal(maps[0], other) for other in maps[1:])


def test_batches_equal_one_image_at_a_time():
    model = _mixed_net()
    images = _images(5, 3, 16)
    whole = guided_backprop_maps(model, images, batch_size=5)
    assert whole.shape == (5, 5, 3, 16, 16)
    for batch_size in (1, 2, 3):
        _assert_close(guided_backprop_maps(model, images, rule="relu", batch_size=batch_size), whole)
    for i in range(5):
        _assert_close(guided_backprop_maps(model, images[i : i + 1]), whole[i : i + 1])


def test_cut_indices_select_and_sort():
    model = _seeded(build_model("smallcnn", 3))
    images = _images(2, 3, 16)
    full = guided_backprop_maps(model, images)
    assert torch.equal(guided_backprop_maps(model, images, cut_indices=[3, 1, 1]), full[:, [1, 3]])
    with pytest.raises(LayercutError, match="out of range"):
        guided_backprop_maps(model, images, cut_indices=[4])


def test_bad_arguments():
    model = _hand_net()
    with pytest.raises(LayercutError, match="unknown guided-backprop rule"):
        guided_backprop_maps(model, HAND_X, rule="guided")
    with pytest.raises(LayercutError, match="unknown guided-backprop rule"):
        with guided_activations(model, "deconv"):
            pass
    with pytest.raises(LayercutError, match=r"\(N, C, H, W\)"):
        guided_backprop_maps(model, HAND_X[0])
    with pytest.raises(LayercutError, match="batch_size"):
        guided_backprop_maps(model, HAND_X, batch_size=0)


def test_works_on_slim_net():
    base = _seeded(build_model("smallcnn", 3))
    slim = truncate(base, resolve_cut_point(base, 2), num_classes=3).eval()
    images = _images(2, 3, 16)
    maps = guided_backprop_maps(slim, images)
    assert maps.shape == (2, 3, 3, 16, 16)
    _assert_close(maps, guided_backprop_maps(base, images)[:, :3])
    _assert_close(maps, _captum_maps(slim, images))


# --- patching and restoration --------------------------------------------------------------------


def _assert_restored(model: nn.Module, state: tuple[list[bool], list[bool]]) -> None:
    for m in model.modules():
        assert "forward" not in m.__dict__, m
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert _state(model) == state


def test_restores_model_after_success():
    model = _odd_state_model()
    before = _state(model)
    images = _images(2, 3, 16)
    copy_of_images = images.clone()
    updates = []
    guided_backprop_maps(model, images, batch_size=1, reporter=Reporter(callback=lambda *a: updates.append(a)))
    _assert_restored(model, before)
    assert torch.equal(images, copy_of_images) and not images.requires_grad
    fractions = [fraction for _, fraction, _ in updates]
    assert {stage for stage, _, _ in updates} == {"analyze"}
    assert len(updates) == 1 + 2 * 4 and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_restores_model_after_cancel_and_error():
    model = _odd_state_model()
    before = _state(model)
    counter = itertools.count()
    cancel_on_third = Reporter(should_cancel=lambda: next(counter) >= 2)
    with pytest.raises(Cancelled):
        guided_backprop_maps(model, _images(2, 3, 16), reporter=cancel_on_third)
    _assert_restored(model, before)
    with pytest.raises(RuntimeError):  # 4 input channels into a 3-channel conv, inside the patched run
        guided_backprop_maps(model, _images(2, 4, 16))
    _assert_restored(model, before)


def test_guided_activations_patches_and_restores_forward():
    model = _mixed_net()
    images = _images(2, 3, 16)
    with torch.no_grad():
        reference = model(images)
    activations = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    first = activations[0]

    def custom(x: torch.Tensor) -> torch.Tensor:
        return type(first).forward(first, x)

    first.forward = custom  # a forward already set on the instance is kept
    for rule in GBP_RULES:
        with guided_activations(model, rule):
            assert all("forward" in m.__dict__ for m in activations)
            assert (first.forward is custom) == (rule == "ungated")  # "ungated" keeps a SiLU's own forward
            with torch.no_grad():
                torch.testing.assert_close(model(images), reference)  # values unchanged, in-place safe
        assert activations[0].forward is custom
        assert all("forward" not in m.__dict__ for m in activations[1:])
    with pytest.raises(ValueError):
        with guided_activations(model, "relu"):
            raise ValueError("boom")
    assert activations[0].forward is custom
    assert all("forward" not in m.__dict__ for m in activations[1:])


# --- map images ----------------------------------------------------------------------------------


def test_map_images_hand_computed_with_clipping():
    a = [0.0] * 7 + [10.0]  # mean 1.25, population variance (7·1.25² + 8.75²)/8 = 10.9375, std 3.307189
    b = [10.0] * 7 + [0.0]  # mean 8.75, the same std
    raw = torch.tensor([a, b, [4.0] * 8]).view(1, 3, 1, 2, 4)
    out = map_images(raw)
    assert out.dtype == torch.float32 and out.shape == raw.shape
    std = math.sqrt(10.9375)
    low, high = 0.5 - 0.25 * 1.25 / std, 0.5 + 0.25 * 1.25 / std  # 0.405509, 0.594491
    # 10 in map a: 0.5 + 0.25·8.75/std = 1.161 → clipped to 1; 0 in map b: 0.5 − 0.661 → clipped to 0.
    expected = torch.tensor([[low] * 7 + [1.0], [high] * 7 + [0.0], [0.5] * 8]).view(1, 3, 1, 2, 4)
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-6)


def test_map_images_grayscale():
    raw = torch.zeros(1, 1, 3, 1, 2)
    raw[0, 0, :, 0, 0] = torch.tensor([1.0, 2.0, 6.0])  # channel mean 3
    raw[0, 0, :, 0, 1] = torch.tensor([-1.0, 0.0, -2.0])  # channel mean -1
    out = map_images(raw, grayscale=True)
    assert out.shape == (1, 1, 1, 1, 2)
    # mean 1, std 2: (3 − 1)/2·0.25 + 0.5 = 0.75, (−1 − 1)/2·0.25 + 0.5 = 0.25
    torch.testing.assert_close(out.flatten(), torch.tensor([0.75, 0.25]), rtol=0, atol=1e-6)
    images = map_images(_images(2, 3, 8).view(2, 1, 3, 8, 8).repeat(1, 4, 1, 1, 1), grayscale=True)
    assert images.shape == (2, 4, 1, 8, 8)


def _authors_deprocess(x: np.ndarray) -> np.ndarray:
    """The authors' Keras ``deprocess_image`` without the final uint8 conversion (K.epsilon() = 1e-7)."""
    x = x.copy()
    x -= x.mean()
    x /= x.std() + 1e-7
    x *= 0.25
    x += 0.5
    return np.clip(x, 0, 1)


def test_map_images_equal_authors_deprocess():
    raw = _images(3, 3, 8).view(3, 1, 3, 8, 8).repeat(1, 2, 1, 1, 1) * torch.tensor([1.0, 40.0]).view(1, 2, 1, 1, 1)
    raw[0, 1, 0, 0, 0] = 1e3  # an outlier, so that clipping matters
    out = map_images(raw).numpy()
    for n, layer in itertools.product(range(3), range(2)):
        in64 = raw[n, layer].numpy().astype(np.float64)
        np.testing.assert_allclose(out[n, layer], _authors_deprocess(in64), rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[n, layer], _authors_deprocess(raw[n, layer].numpy()), rtol=0, atol=1e-5)
    gray = map_images(raw, grayscale=True).numpy()
    np.testing.assert_allclose(
        gray[1, 1, 0], _authors_deprocess(raw[1, 1].numpy().astype(np.float64).mean(0)), atol=1e-6
    )


# --- GPU (runs only where CUDA is available) -----------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_equal_cpu_maps():
    model = _mixed_net()
    images = _images(3, 3, 16)
    cpu = guided_backprop_maps(model, images, rule="derivative")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = guided_backprop_maps(copy.deepcopy(model).cuda(), images, rule="derivative")
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    _assert_close(gpu, cpu, rel=1e-4)
