"""Receptive fields from the geometry: hand-computed values, known values, and the support of d unit / d input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from layercut.contracts.errors import LayercutError
from layercut.stages.architectures import build_model
from layercut.stages.cutpoints import resolve_cut_point
from layercut.stages.receptive_field import AxisField, PixelBox, most_active_unit, receptive_field
from layercut.stages.truncation import truncate


class WindowSum(nn.Module):
    """The sum over each pooling window (zero padding): a max-pool's geometry with a dense gradient.

    A max-pool passes gradient to one element per window only, so the support of its gradient is not
    its receptive field; this stand-in has the same kernel, stride, padding and dilation.
    """

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.kernel, self.stride = pool.kernel_size, pool.stride
        self.padding, self.dilation = pool.padding, pool.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        cols = F.unfold(
            x.reshape(n * c, 1, h, w), self.kernel, dilation=self.dilation, padding=self.padding, stride=self.stride
        )
        k, d, p, s = self.kernel, self.dilation, self.padding, self.stride
        oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
        return cols.sum(1).reshape(n, c, oh, ow)


def _dense_twin(model: nn.Module) -> nn.Module:
    """A float64 copy with positive weights (scaled by fan-in), identity batch norms and window sums for max-pools:
    every path from an input pixel to a unit then carries a positive product, so the gradient's support is
    exactly the set of pixels the unit depends on."""
    twin = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
                m.weight.div_(m.weight[0].numel())
                if m.bias is not None:
                    m.bias.fill_(0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    for m in list(twin.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, WindowSum(child))
    return twin


def _support_boxes(
    model: nn.Module, module: nn.Module, units: list[tuple[int, int]], size: int
) -> list[tuple[PixelBox, torch.Tensor]]:
    """For each unit: the bounding box of the input pixels where d (unit summed over channels) / d input is
    non-zero, and that gradient (one forward pass for all units)."""
    captured = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    x.requires_grad_()
    try:
        model(x)
    finally:
        handle.remove()
    found = []
    for k, (y, x_) in enumerate(units):
        (grad,) = torch.autograd.grad(captured[0][0, :, y, x_].sum(), x, retain_graph=k < len(units) - 1)
        rows = torch.nonzero(grad.abs().sum(dim=(0, 1, 3))).flatten()
        cols = torch.nonzero(grad.abs().sum(dim=(0, 1, 2))).flatten()
        found.append((PixelBox(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1), grad))
    return found


def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # k3 s1 p1
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=0, dilation=2),  # k_eff 5, s2, p0
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),  # k3 s2 p1
        nn.Conv2d(4, 6, 5, padding=2, bias=False),  # k5 s1 p2
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()


def test_hand_computed_fields_of_a_tiny_net():
    model = _tiny_net()
    # (start, jump, size): input (0, 1, 1)
    # conv k3 s1 p1:         (0 − 1, 1, 1 + 2)             = (−1, 1, 3)
    # conv k3 d2 s2 p0:      (−1 − 0, 2, 3 + 2·2·1)        = (−1, 2, 7)
    # max-pool k3 s2 p1:     (−1 − 1·2, 4, 7 + 2·2)        = (−3, 4, 11)
    # conv k5 s1 p2:         (−3 − 2·4, 4, 11 + 4·4)       = (−11, 4, 27)
    expected = {
        "0": (-1, 1, 3),
        "1": (-1, 1, 3),
        "2": (-1, 2, 7),
        "4": (-3, 4, 11),
        "5": (-11, 4, 27),
        "7": (-11, 4, 27),
    }
    for layer, (start, jump, size) in expected.items():
        field = receptive_field(model, layer, 29)
        assert field.y == field.x == AxisField(start, jump, size), layer
    field = receptive_field(model, "5", 29)
    assert field.layer_size == (7, 7) and field.size == (27, 27) and field.stride == (4, 4)
    assert field.box(0, 0) == PixelBox(0, 0, 16, 16)  # −11 … 15, clipped
    assert field.box(3, 6) == PixelBox(1, 13, 28, 29)  # rows −11 + 12 = 1 … 27; cols 13 … 39 → 28
    with pytest.raises(LayercutError, match="outside"):
        field.box(7, 0)
    assert field.to_dict()["size"] == [27, 27]


@pytest.mark.parametrize("size", [29, 32])
def test_tiny_net_boxes_equal_the_gradient_support(size):
    model = _tiny_net()
    twin = _dense_twin(model)
    twin_layers = dict(twin.named_modules())
    for layer in ("0", "2", "4", "5", "7"):
        field = receptive_field(model, layer, size)
        h, w = field.layer_size
        units = sorted({(0, 0), (h - 1, w - 1), (h // 2, w // 3), (0, w - 1)})
        for unit, (support, grad) in zip(units, _support_boxes(twin, twin_layers[layer], units, size)):
            assert field.box(*unit) == support, (layer, unit)
            # the 3-wide first conv fills the dilated conv's gaps: the support is the whole box
            inside = grad.abs().sum(dim=(0, 1))[support.top : support.bottom, support.left : support.right]
            assert bool((inside > 0).all()), (layer, unit)


def test_max_pool_gradient_stays_inside_the_box():
    model = _tiny_net()
    real = copy.deepcopy(model).double()  # the real max-pool: its gradient's support is a subset of the box
    layers = dict(real.named_modules())
    field = receptive_field(model, "7", 32)
    units = [(0, 0), (4, 5)]
    for unit, (support, _) in zip(units, _support_boxes(real, layers["7"], units, 32)):
        box = field.box(*unit)
        assert box.top <= support.top and box.left <= support.left
        assert support.bottom <= box.bottom and support.right <= box.right


def test_resnet18_boxes_equal_the_gradient_support():
    model = tvm.resnet18(num_classes=3).eval()
    twin = _dense_twin(model)
    twin_layers = dict(twin.named_modules())
    size = 64
    for layer in ("relu", "layer1.0", "layer2.0", "layer2.1", "layer3.0.conv1", "layer3.0"):
        field = receptive_field(model, layer, size)
        h, w = field.layer_size
        units = sorted({(0, 0), (h - 1, w - 1), (h // 2, w // 2)})
        for unit, (support, _) in zip(units, _support_boxes(twin, twin_layers[layer], units, size)):
            assert field.box(*unit) == support, (layer, unit, field.size)


def test_known_receptive_fields():
    resnet = tvm.resnet18(num_classes=3)
    field = receptive_field(resnet, "layer4", 224)
    assert field.size == (435, 435) and field.stride == (32, 32) and field.layer_size == (7, 7)
    assert receptive_field(resnet, None, 224).size == (435, 435)  # default layer: layer4.1
    field = receptive_field(build_model("smallcnn", 3), None, 32)  # three 2x2 max-pools, four 3x3 convs
    assert field.layer == "features.14" and field.stride == (8, 8) and field.size == (38, 38)


def test_slim_models_and_squeeze_excitation():
    base = build_model("smallcnn", 3)
    slim = truncate(base, resolve_cut_point(base, "features.6"), 3)
    assert receptive_field(slim, None, 32) == receptive_field(base, "features.6", 32)
    # EfficientNet's squeeze-excitation gates multiply in a global factor: the local field is reported.
    field = receptive_field(tvm.efficientnet_b0(num_classes=3), "features.2", 64)
    assert field.stride == (4, 4) and field.layer_size == (16, 16)
    assert receptive_field(tvm.mobilenet_v3_small(num_classes=3), None, 64).stride == (32, 32)


class _Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.after = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(F.interpolate(self.conv(x), scale_factor=2.0))


def test_unsupported_operations_and_bad_layers():
    model = _Upsampling()
    assert receptive_field(model, "conv", 16).size == (3, 3)
    with pytest.raises(LayercutError, match="unsupported operation 'interpolate'"):
        receptive_field(model, "after", 16)
    resnet = tvm.resnet18(num_classes=3)
    with pytest.raises(LayercutError, match="runs 2 times"):
        receptive_field(resnet, "layer1.0.relu", 64)
    with pytest.raises(LayercutError, match="no layer named"):
        receptive_field(resnet, "layer7", 64)
    with pytest.raises(LayercutError, match=r"\(N, C, H, W\)"):
        receptive_field(resnet, "fc", 64)


def test_most_active_unit():
    acts = torch.zeros(3, 4, 5)
    acts[2, 1, 3] = 5.0
    acts[0, 3, 4] = 4.0
    assert most_active_unit(acts) == (2, 1, 3)
    with pytest.raises(LayercutError):
        most_active_unit(torch.zeros(1, 3, 4, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_on_cuda():
    model = build_model("smallcnn", 3)
    assert receptive_field(model.cuda(), None, 32) == receptive_field(model.cpu(), None, 32)
