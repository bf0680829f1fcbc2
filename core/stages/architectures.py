"""The supported architectures: torchvision's classifiers plus a small plain CNN for fast runs.

Every model is built with its last layer sized to the dataset's classes. Pretrained weights are
taken only from torchvision's local cache (``$TORCH_HOME/hub/checkpoints``), never downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from layercut.contracts.configs import ARCHITECTURE_NAMES
from layercut.contracts.errors import LayercutError, MissingResourceError

MIN_IMAGE_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """A plain four-block CNN (conv-BN-ReLU, max-pool between blocks) for fast runs and tests."""

    def __init__(self, num_classes: int, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        previous = in_channels
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(previous, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            previous = w
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], type]] = {
    "vgg11": (tvm.vgg11, tvm.VGG11_Weights),
    "vgg11_bn": (tvm.vgg11_bn, tvm.VGG11_BN_Weights),
    "vgg13": (tvm.vgg13, tvm.VGG13_Weights),
    "vgg13_bn": (tvm.vgg13_bn, tvm.VGG13_BN_Weights),
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights),
    "vgg16_bn": (tvm.vgg16_bn, tvm.VGG16_BN_Weights),
    "vgg19": (tvm.vgg19, tvm.VGG19_Weights),
    "vgg19_bn": (tvm.vgg19_bn, tvm.VGG19_BN_Weights),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights),
    "efficientnet_b0": (tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights),
    "efficientnet_b1": (tvm.efficientnet_b1, tvm.EfficientNet_B1_Weights),
    "efficientnet_b2": (tvm.efficientnet_b2, tvm.EfficientNet_B2_Weights),
    "efficientnet_b3": (tvm.efficientnet_b3, tvm.EfficientNet_B3_Weights),
    "mobilenet_v2": (tvm.mobilenet_v2, tvm.MobileNet_V2_Weights),
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights),
}

ARCHITECTURES: tuple[str, ...] = ARCHITECTURE_NAMES
assert set(ARCHITECTURES) == {"smallcnn", *_TORCHVISION}, "config.ARCHITECTURE_NAMES and the builders disagree"


def check_architecture(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise LayercutError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


def check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise LayercutError(f"image size {image_size} is too small: the smallest supported is {MIN_IMAGE_SIZE} px")


def pretrained_weights_path(arch: str) -> Path:
    """Where torchvision keeps the default pretrained weights of ``arch`` once downloaded."""
    _, weights_enum = _TORCHVISION[arch]
    url = weights_enum.DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    """Resize the final classification layer of a torchvision model to ``num_classes``."""
    if isinstance(model, tvm.ResNet):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return
    classifier = model.classifier
    last = classifier[-1]
    classifier[-1] = nn.Linear(last.in_features, num_classes)


def check_pretrained(arch: str) -> Path:
    """Where the cached ImageNet weights of ``arch`` are; an error saying where to put them when they are not
    (layercut never downloads weights)."""
    check_architecture(arch)
    if arch == "smallcnn":
        raise LayercutError("smallcnn has no pretrained weights; drop --pretrained")
    path = pretrained_weights_path(arch)
    if not path.is_file():
        raise MissingResourceError(
            f"pretrained weights for {arch} are not in the local cache: put {path.name} "
            f"(from {_TORCHVISION[arch][1].DEFAULT.url}) into {path.parent} (or set TORCH_HOME to a folder whose "
            f"hub/checkpoints holds it), or train from scratch without --pretrained"
        )
    return path


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Build ``arch`` for ``num_classes`` classes, loading cached ImageNet weights if ``pretrained``."""
    check_architecture(arch)
    if num_classes < 2:
        raise LayercutError(f"a classifier needs at least 2 classes, got {num_classes}")
    if pretrained:
        path = check_pretrained(arch)
    if arch == "smallcnn":
        return SmallCNN(num_classes)
    builder, _ = _TORCHVISION[arch]
    if not pretrained:
        return builder(weights=None, num_classes=num_classes)
    model = builder(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _replace_last_linear(model, num_classes)
    return model
