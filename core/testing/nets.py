"""Test helpers shared by the explanation and GBP tests: seeded weights and random images."""

from __future__ import annotations

import math

import torch
from torch import nn


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every parameter and BN statistic from ``seed`` (non-trivial BN stats), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(max(p[0].numel(), 1))))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def random_images(n: int, c: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def module_state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    """Every module's train flag and every parameter's requires_grad: what explaining must leave as it was."""
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def odd_state_model() -> nn.Module:
    """smallcnn in train mode with one BN in eval mode and some frozen parameters."""
    from layercut.stages.architectures import build_model

    model = seeded(build_model("smallcnn", 3)).train()
    model.features[1].eval()
    model.features[0].weight.requires_grad_(False)
    model.classifier.bias.requires_grad_(False)
    return model


XOR_MARGIN = 1.3
"""The second layer's threshold: two agreeing inputs of size ≥ 0.8 sum to ≥ 1.6, one alone gives ≤ 1.0."""


def xor_depth_net() -> nn.Sequential:
    """A two-layer net (hand-set weights) whose classes are linearly readable at its second cut point only.

    Input: two channels, each constant over the image, ``a`` and ``b`` in ±[0.8, 1]; the class is 1 when their signs
    differ. Cut point 0 holds (a⁺, a⁻, b⁺, b⁻) — sign XOR, which no linear classifier reads; cut point 1 holds
    relu(a⁺ + b⁻ − 1.3) and relu(a⁻ + b⁺ − 1.3), positive exactly for the two "differ" cases.
    """
    first, second = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]).view(4, 2, 1, 1))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]]).view(2, 4, 1, 1))
        second.bias.fill_(-XOR_MARGIN)
    head = nn.Linear(2, 2)
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def xor_sign_images(n: int, seed: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images for ``xor_depth_net`` (normalise with mean 0.5, std 0.5 to get ``a`` and ``b``) and their
    labels (1: the signs of a and b differ), both classes equally often."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    first = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    signs = torch.stack([first, torch.where(labels == 1, -first, first)], dim=1)
    values = signs * (0.8 + 0.2 * torch.rand(n, 2, generator=gen))
    pixels = ((values * 0.5 + 0.5) * 255).round().to(torch.uint8)
    images = pixels.view(n, 2, 1, 1).expand(n, 2, size, size).contiguous()
    return images, labels


class FunctionalConv(nn.Module):
    """GoogLeNet's ``BasicConv2d``: convolution, BatchNorm and a ReLU called as a function (``relu_module`` False) or
    as a module (True: the twin captum's guided backprop can see)."""

    def __init__(self, cin: int, cout: int, relu_module: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True) if relu_module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else torch.nn.functional.relu(x, inplace=True)


class TwoBranches(nn.Module):
    """An Inception-style block: two branches of ``FunctionalConv`` concatenated (no cut point inside)."""

    def __init__(self, cin: int, cout: int, relu_module: bool = False) -> None:
        super().__init__()
        self.left = FunctionalConv(cin, cout, relu_module)
        self.right = nn.Sequential(FunctionalConv(cin, cout, relu_module), FunctionalConv(cout, cout, relu_module))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), self.right(x)], 1)


class FunctionalReluNet(nn.Module):
    """A family no rule is written for, whose ReLUs are functions: its cut points come from its graph
    (``conv1``, ``block1``, ``conv2``, ``block2``), and guided backprop must still guide every ReLU."""

    def __init__(self, num_classes: int = 3, relu_module: bool = False) -> None:
        super().__init__()
        self.conv1 = FunctionalConv(3, 4, relu_module)
        self.block1 = TwoBranches(4, 3, relu_module)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = FunctionalConv(6, 5, relu_module)
        self.block2 = TwoBranches(5, 4, relu_module)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.conv2(self.pool(self.block1(self.conv1(x)))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def functional_relu_twins(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``FunctionalReluNet`` with seeded weights, and its twin with the same weights and ReLU modules."""
    functional = seeded(FunctionalReluNet(), seed)
    twin = FunctionalReluNet(relu_module=True).eval()
    twin.load_state_dict(functional.state_dict())
    return functional, twin
