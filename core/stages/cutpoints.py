"""Cut points: the places where a network is a plain sequence and can be cut (docs/design.md §1).

A model's *feature sequence* is a flat list of ``(name, module)`` whose composition is the model's
feature extractor; a cut point is an element of that list after which everything can be dropped.

- VGG and plain ``features`` CNNs: every activation in ``features``.
- ResNet: the stem's ReLU and the output of every residual block.
- EfficientNet / MobileNet: the stem and every block (the final 1x1 conv block included).
- A custom ``nn.Sequential``: every activation before the classifier.

Each family's rule is one entry of ``CUT_POINT_RULES``, looked up along the model type's MRO; a family
defined elsewhere registers itself (``truncation.py`` registers the slim model) with ``register_cut_point_rule``.
Any other model (DenseNet, ConvNeXt, RegNet, timm models …) gets the graph rule of ``graph_cuts``: the blocks and
activations its ``torch.fx`` graph passes through, which on the families above gives the same cut points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from layercut.contracts.errors import LayercutError
from layercut.stages.architectures import SmallCNN
from layercut.stages.graph_cuts import graph_sequence

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


NamedModule = tuple[str, nn.Module]


@dataclass(frozen=True)
class CutPointRule:
    """How one architecture family lists its feature sequence and which elements of it are cut points.

    ``sequence(model)`` returns the flat ``(name, module)`` list whose composition is the feature extractor;
    ``is_cut_point(model, name, module)`` says whether the network may be cut right after that element.
    Both are called with a model of the class the rule is registered for (or a subclass).
    """

    sequence: Callable[[Any], list[NamedModule]]
    is_cut_point: Callable[[Any, str, nn.Module], bool]


def _resnet_sequence(model: tvm.ResNet) -> list[NamedModule]:
    """The stem's four layers, then every residual block of the four stages."""
    items: list[NamedModule] = [
        ("conv1", model.conv1),
        ("bn1", model.bn1),
        ("relu", model.relu),
        ("maxpool", model.maxpool),
    ]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        items += [(f"{stage}.{i}", block) for i, block in enumerate(getattr(model, stage))]
    return items


def _is_resnet_cut_point(model: tvm.ResNet, name: str, module: nn.Module) -> bool:
    """The stem's ReLU and the output of every residual block."""
    return name == "relu" or name.startswith("layer")


def _block_sequence(model: nn.Module) -> list[NamedModule]:
    """Children of ``features``, with plain ``nn.Sequential`` stages expanded into their blocks."""
    items: list[NamedModule] = []
    for name, child in model.features.named_children():
        if type(child) is nn.Sequential:
            items += [(f"features.{name}.{n}", m) for n, m in child.named_children()]
        else:
            items.append((f"features.{name}", child))
    return items


def _every_block(model: nn.Module, name: str, module: nn.Module) -> bool:
    """EfficientNet / MobileNet: the stem and every block is a cut point."""
    return True


def _features_sequence(model: nn.Module) -> list[NamedModule]:
    """The children of the model's ``features`` nn.Sequential."""
    return [(f"features.{n}", m) for n, m in model.features.named_children()]


def _sequential_sequence(model: nn.Sequential) -> list[NamedModule]:
    """The children of a plain nn.Sequential up to its classifier (the first flatten, linear or global pool)."""
    items: list[NamedModule] = []
    for name, child in model.named_children():
        if isinstance(child, _CLASSIFIER_START):
            break
        items.append((name, child))
    return items


def is_activation(model: nn.Module, name: str, module: nn.Module) -> bool:
    """Plain CNNs (VGG, a ``features`` stack, an nn.Sequential): every activation is a cut point."""
    return isinstance(module, ACTIVATIONS)


def _every_segment(model: nn.Module, name: str, module: nn.Module) -> bool:
    """The graph rule's sequence has one segment per cut point."""
    return True


GRAPH_RULE = CutPointRule(graph_sequence, _every_segment)
"""Any model of no registered family: cut points from its ``torch.fx`` graph (``graph_cuts``)."""

FEATURES_RULE = CutPointRule(_features_sequence, is_activation)
"""Models whose feature extractor is a ``features`` nn.Sequential of layers: every activation is a cut point."""

BLOCKS_RULE = CutPointRule(_block_sequence, _every_block)

CUT_POINT_RULES: dict[type[nn.Module], CutPointRule] = {
    tvm.ResNet: CutPointRule(_resnet_sequence, _is_resnet_cut_point),
    tvm.EfficientNet: BLOCKS_RULE,
    tvm.MobileNetV2: BLOCKS_RULE,
    tvm.MobileNetV3: BLOCKS_RULE,
    tvm.VGG: FEATURES_RULE,
    SmallCNN: FEATURES_RULE,
    nn.Sequential: CutPointRule(_sequential_sequence, is_activation),
}
"""The cut-point rule of each architecture family, looked up along the model type's MRO (so a subclass of
a family gets the family's rule). A new family is one entry, added with ``register_cut_point_rule``."""


def register_cut_point_rule(model_class: type[nn.Module], rule: CutPointRule) -> None:
    """Make ``rule`` the cut-point rule of ``model_class`` and its subclasses (unless they have their own)."""
    CUT_POINT_RULES[model_class] = rule


def cut_point_rule(model: nn.Module) -> CutPointRule:
    """The rule of the nearest class in ``type(model).__mro__`` that has one; for a model of no registered
    family, the graph rule (``graph_cuts``): the blocks and activations its ``torch.fx`` graph passes through."""
    for cls in type(model).__mro__:
        rule = CUT_POINT_RULES.get(cls)
        if rule is not None:
            return rule
    return GRAPH_RULE


def modules_in_use(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model``, and those its feature sequence adds: the graph rule's segments call functional
    activations as modules of their own (which guided backpropagation must guide too)."""
    found = {id(m): m for m in model.modules()}
    if cut_point_rule(model) is GRAPH_RULE:
        try:
            sequence = feature_sequence(model)
        except LayercutError:  # not traceable: no cut points, and nothing added
            sequence = []
        for _, segment in sequence:
            for module in segment.modules():
                found.setdefault(id(module), module)
    return list(found.values())


def feature_sequence(model: nn.Module) -> list[NamedModule]:
    """The model's feature extractor as a flat list of named modules applied one after another."""
    return cut_point_rule(model).sequence(model)


def cut_points(model: nn.Module) -> list[CutPoint]:
    """The cut points of ``model`` in depth order."""
    rule = cut_point_rule(model)
    points: list[CutPoint] = []
    for position, (name, module) in enumerate(rule.sequence(model)):
        if rule.is_cut_point(model, name, module):
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
