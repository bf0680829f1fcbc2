"""Cut points: the places where a network is a plain sequence and can be cut (DESIGN.md §1).

A model's *feature sequence* is a flat list of ``(name, module)`` whose composition is the model's
feature extractor; a cut point is an element of that list after which everything can be dropped.

- VGG and plain ``features`` CNNs: every activation in ``features``.
- ResNet: the stem's ReLU and the output of every residual block.
- EfficientNet / MobileNet: the stem and every block (the final 1x1 conv block included).
- A custom ``nn.Sequential``: every activation before the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models as tvm

from layercut.contracts.errors import LayercutError

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
    nn.Tanh,
)
_CLASSIFIER_START: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class CutPoint:
    index: int  # 0-based position among the model's cut points
    name: str  # module name in the base model, e.g. "features.4" or "layer2.1"
    position: int  # index into the feature sequence; the cut keeps elements 0..position


def _flatten_blocks(prefix: str, sequential: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """Children of ``sequential``, with plain ``nn.Sequential`` stages expanded into their blocks."""
    items: list[tuple[str, nn.Module]] = []
    for name, child in sequential.named_children():
        if type(child) is nn.Sequential:
            items += [(f"{prefix}.{name}.{n}", m) for n, m in child.named_children()]
        else:
            items.append((f"{prefix}.{name}", child))
    return items


def feature_sequence(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's feature extractor as a flat list of named modules applied one after another."""
    from layercut.stages.truncation import SlimNet  # local import: truncation builds on this module

    if isinstance(model, SlimNet):
        return list(zip(model.layer_names, model.body))
    if isinstance(model, tvm.ResNet):
        items = [("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu), ("maxpool", model.maxpool)]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            items += [(f"{stage}.{i}", block) for i, block in enumerate(getattr(model, stage))]
        return items
    if isinstance(model, (tvm.EfficientNet, tvm.MobileNetV2, tvm.MobileNetV3)):
        return _flatten_blocks("features", model.features)
    if isinstance(model, nn.Sequential):
        items = []
        for name, child in model.named_children():
            if isinstance(child, _CLASSIFIER_START):
                break
            items.append((name, child))
        return items
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [(f"features.{n}", m) for n, m in features.named_children()]
    raise LayercutError(
        f"cannot find cut points in {type(model).__name__}: supported are VGG, ResNet, EfficientNet, "
        "MobileNet, and CNNs with a `features` nn.Sequential or written as one nn.Sequential"
    )


def _is_cut_point(model: nn.Module, name: str, module: nn.Module) -> bool:
    from layercut.stages.truncation import SlimNet

    if isinstance(model, SlimNet):
        return name in model.cut_point_names
    if isinstance(model, tvm.ResNet):
        return name == "relu" or name.startswith("layer")
    if isinstance(model, (tvm.EfficientNet, tvm.MobileNetV2, tvm.MobileNetV3)):
        return True
    return isinstance(module, ACTIVATIONS)


def cut_points(model: nn.Module) -> list[CutPoint]:
    """The cut points of ``model`` in depth order."""
    points: list[CutPoint] = []
    for position, (name, module) in enumerate(feature_sequence(model)):
        if _is_cut_point(model, name, module):
            points.append(CutPoint(index=len(points), name=name, position=position))
    if not points:
        raise LayercutError(f"{type(model).__name__} has no cut points (no activation in its feature layers)")
    return points


def resolve_cut_point(model: nn.Module, which: int | str) -> CutPoint:
    """Find a cut point by index (negative counts from the end) or by module name."""
    points = cut_points(model)
    if isinstance(which, str) and not which.lstrip("-").isdigit():
        for point in points:
            if point.name == which:
                return point
        names = ", ".join(p.name for p in points)
        raise LayercutError(f"no cut point named {which!r}; the cut points are: {names}")
    index = int(which)
    if not -len(points) <= index < len(points):
        raise LayercutError(
            f"cut point index {index} is out of range: this model has {len(points)} (0..{len(points) - 1})"
        )
    return points[index]


def forward_features(model: nn.Module, x: torch.Tensor, keep: set[int] | None = None) -> dict[int, torch.Tensor]:
    """Run the feature sequence once and return the outputs at the cut points (by cut index).

    ``keep`` limits which cut points are returned; the run stops after the deepest one needed.
    """
    points = cut_points(model)
    wanted = {p.position: p.index for p in points if keep is None or p.index in keep}
    if not wanted:
        return {}
    last = max(wanted)
    outputs: dict[int, torch.Tensor] = {}
    for position, (_, module) in enumerate(feature_sequence(model)):
        x = module(x)
        if position in wanted:
            outputs[wanted[position]] = x
        if position == last:
            break
    return outputs


@dataclass(frozen=True)
class CutPointInfo:
    index: int
    name: str
    module: str  # the module's class name
    channels: int
    height: int
    width: int


def describe_cut_points(model: nn.Module, image_size: int, in_channels: int = 3) -> list[CutPointInfo]:
    """Cut points with their output shape for a square input of ``image_size`` pixels."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = forward_features(model, torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
    sequence = feature_sequence(model)
    infos = []
    for point in cut_points(model):
        _, c, h, w = outputs[point.index].shape
        infos.append(CutPointInfo(point.index, point.name, type(sequence[point.position][1]).__name__, c, h, w))
    return infos
