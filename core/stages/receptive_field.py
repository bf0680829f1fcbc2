"""Receptive fields computed from the network's geometry: kernels, strides, padding and dilation.

The model is traced with ``torch.fx``; every node up to the chosen layer carries, per spatial axis,
``(start, jump, size)``: unit ``i`` of the node's output sees input pixels ``start + i·jump`` to
``start + i·jump + size − 1`` (before clipping to the image). A convolution or pooling with kernel ``k``,
stride ``s``, padding ``p`` and dilation ``d`` maps ``(start, jump, size)`` to
``(start − p·jump, jump·s, size + d·(k − 1)·jump)``.

Supported:
- ``nn.Conv2d`` (groups, dilation, ``padding="same"/"valid"``), ``nn.MaxPool2d``, ``nn.AvgPool2d``;
- element-wise modules and functions (activations, batch norm, dropout, identity, sigmoid gates,
  stochastic depth, arithmetic): the field passes through;
- joins (``+``, ``*``, ``torch.cat``, as in ResNet and inverted-residual blocks): the union of the fields
  (their jumps must agree);
- ``nn.AdaptiveAvgPool2d``/``AdaptiveMaxPool2d`` that keep the size (identity) or pool to 1×1 (global).
  A global tensor broadcast back onto a feature map (the squeeze-excitation gates of EfficientNet and
  MobileNet v3) is a per-channel gain: it is left out, so the field reported is the local one, and
  strictly such units depend on the whole image.

Anything else on the way to the layer (a functional convolution, a reshape, upsampling, …) raises a
``LayercutError`` that names the operation. Boxes are the *bounding box* of the field: with dilation the
pixels inside it that influence the unit can be a lattice.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.ops import stochastic_depth

from layercut.contracts.errors import LayercutError
from layercut.stages.cams import model_device_dtype, resolve_layer
from layercut.stages.cutpoints import ACTIVATIONS


@dataclass(frozen=True)
class AxisField:
    """Along one axis: unit ``i`` sees input pixels ``start + i·jump`` … ``start + i·jump + size − 1``."""

    start: int
    jump: int
    size: int

    def conv(self, kernel: int, stride: int, padding: int, dilation: int) -> AxisField:
        reach = dilation * (kernel - 1) * self.jump
        return AxisField(self.start - padding * self.jump, self.jump * stride, self.size + reach)

    def union(self, other: AxisField) -> AxisField:
        if other.jump != self.jump:
            raise LayercutError(f"cannot join receptive fields with strides {self.jump} and {other.jump}")
        start = min(self.start, other.start)
        end = max(self.start + self.size, other.start + other.size)
        return AxisField(start, self.jump, end - start)


@dataclass(frozen=True)
class PixelBox:
    """Input pixels ``top:bottom`` × ``left:right`` (ends exclusive, like slices), clipped to the image."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field geometry of every unit of one layer, for inputs of ``image_size``."""

    layer: str
    y: AxisField
    x: AxisField
    image_size: tuple[int, int]  # (H, W) of the input
    layer_size: tuple[int, int]  # (h, w) of the layer's output at that input size

    @property
    def size(self) -> tuple[int, int]:
        """Unclipped (height, width) of one unit's field, in input pixels."""
        return self.y.size, self.x.size

    @property
    def stride(self) -> tuple[int, int]:
        """Input pixels between neighbouring units (the product of strides)."""
        return self.y.jump, self.x.jump

    def box(self, unit_y: int, unit_x: int) -> PixelBox:
        """Input pixels that unit ``(unit_y, unit_x)`` of the layer sees, clipped to the image."""
        h, w = self.layer_size
        if not (0 <= unit_y < h and 0 <= unit_x < w):
            raise LayercutError(f"unit ({unit_y}, {unit_x}) is outside the {h}×{w} output of {self.layer}")
        top = self.y.start + unit_y * self.y.jump
        left = self.x.start + unit_x * self.x.jump
        height, width = self.image_size
        return PixelBox(max(top, 0), max(left, 0), min(top + self.y.size, height), min(left + self.x.size, width))

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "size": list(self.size),
            "stride": list(self.stride),
            "start": [self.y.start, self.x.start],
            "image_size": list(self.image_size),
            "layer_size": list(self.layer_size),
            "y": asdict(self.y),
            "x": asdict(self.x),
        }


_Field = tuple[AxisField, AxisField]
_GLOBAL = "global"  # a node whose every unit depends on the whole input (after global pooling)

_SPATIAL_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    *ACTIVATIONS,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.ReLU6,
    nn.PReLU,
    nn.Softplus,
)
_POINTWISE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.imul,
    operator.neg,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.neg,
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.leaky_relu,
    F.elu,
    F.dropout,
    F.mish,
    F.tanh,
    stochastic_depth,
}
_POINTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "add",
    "add_",
    "mul",
    "mul_",
    "sub",
    "div",
    "clamp",
    "clamp_",
    "clone",
    "contiguous",
    "float",
    "to",
}
_SHAPE_METHODS = {"size", "dim"}


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _spatial_field(field: _Field, module: nn.Module) -> _Field:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = module.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    return tuple(axis.conv(k, s, p, d) for axis, k, s, p, d in zip(field, kernel, stride, padding, dilation))


def _spatial_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape[-2:]) if shape is not None and len(shape) == 4 else None


def _join(node: fx.Node, values: list) -> _Field | str | None:
    """Union of the operands' fields; constants and broadcast global gates are left out."""
    fields = [v for v in values if isinstance(v, tuple)]
    if not fields:
        return _GLOBAL if _GLOBAL in values else None
    y, x = fields[0]
    for fy, fx_ in fields[1:]:
        y, x = y.union(fy), x.union(fx_)
    return y, x


class _Tracer(fx.Tracer):
    """An fx tracer that remembers the node each module call (leaf or not) returned."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, list[fx.Node]] = {}

    def call_module(self, m: nn.Module, forward, args, kwargs):  # type: ignore[override]
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.outputs.setdefault(id(m), []).append(out.node)
        return out


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return seen


def _operands(node: fx.Node, values: dict[fx.Node, object]) -> list:
    found: list = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(values.get(n)))
    return found


def receptive_field(
    model: nn.Module, layer: str | None = None, image_size: int | tuple[int, int] = 224, in_channels: int = 3
) -> ReceptiveField:
    """The receptive field of the units of ``layer`` (default: ``cams.default_layer``) for square or (H, W) inputs."""
    name, module = resolve_layer(model, layer)
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    was_training = model.training
    model.eval()
    try:
        tracer = _Tracer()
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds; the user needs to know tracing failed
            raise LayercutError(
                f"cannot trace {type(model).__name__} with torch.fx to compute receptive fields: {exc}"
            ) from None
        nodes = tracer.outputs.get(id(module), [])
        if len(nodes) != 1:
            raise LayercutError(
                f"layer {name!r} runs {len(nodes)} times in one forward pass; receptive fields need a "
                "layer that runs once"
            )
        target = nodes[0]
        traced = fx.GraphModule(model, graph)
        device, dtype = model_device_dtype(model)
        with torch.no_grad():
            ShapeProp(traced).propagate(torch.zeros(1, in_channels, height, width, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    layer_size = _spatial_shape(target)
    if layer_size is None:
        raise LayercutError(f"layer {name!r} does not give a (N, C, H, W) feature map")
    field = _propagate(traced, target)
    if not isinstance(field, tuple):
        raise LayercutError(f"every unit of layer {name!r} sees the whole image (it follows a global pooling)")
    return ReceptiveField(name, field[0], field[1], (height, width), layer_size)


def _propagate(traced: fx.GraphModule, target: fx.Node) -> _Field | str | None:
    """Walk the nodes that ``target`` depends on, in order, computing each one's field."""
    needed = _ancestors(target)
    modules = dict(traced.named_modules())
    values: dict[fx.Node, object] = {}
    for node in traced.graph.nodes:
        if node not in needed:
            continue
        operands = _operands(node, values)
        if node.op == "placeholder":
            values[node] = (AxisField(0, 1, 1), AxisField(0, 1, 1))
        elif node.op == "get_attr":
            values[node] = None
        elif node.op == "call_module":
            values[node] = _module_field(node, modules[node.target], operands)
        elif node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS | {torch.cat}:
            values[node] = _join(node, operands)
        elif node.op == "call_function" and node.target in (getattr, operator.getitem) and operands[0] is None:
            values[node] = None
        elif node.op == "call_method" and node.target in _SHAPE_METHODS:
            values[node] = None
        elif node.op == "call_method" and node.target in _POINTWISE_METHODS:
            values[node] = _join(node, operands)
        else:
            what = getattr(node.target, "__name__", str(node.target))
            raise LayercutError(
                f"receptive field: unsupported operation {what!r} ({node.op}) at {node.name}; "
                "supported are Conv2d, MaxPool2d, AvgPool2d, adaptive pooling, element-wise "
                "operations and joins (+, *, cat)"
            )
    return values[target]


def _module_field(node: fx.Node, module: nn.Module, operands: list) -> _Field | str | None:
    source = _join(node, operands)
    if isinstance(module, _SPATIAL_MODULES):
        return _spatial_field(source, module) if isinstance(source, tuple) else source
    if isinstance(module, _POINTWISE_MODULES):
        return source
    if isinstance(module, _ADAPTIVE_MODULES):
        inputs = [n for n in node.all_input_nodes if _spatial_shape(n) is not None]
        before = _spatial_shape(inputs[0]) if inputs else None
        after = _spatial_shape(node)
        if after is not None and after == before:
            return source
        if after == (1, 1):
            return _GLOBAL
        raise LayercutError(f"receptive field: adaptive pooling {before} → {after} at {node.target} is not supported")
    raise LayercutError(
        f"receptive field: unsupported module {type(module).__name__} at {node.target}; supported are "
        "Conv2d, MaxPool2d, AvgPool2d, adaptive pooling and element-wise modules"
    )


def most_active_unit(activations: torch.Tensor) -> tuple[int, int, int]:
    """``(channel, y, x)`` of the largest activation of one image's (C, h, w) feature map."""
    if activations.dim() != 3:
        raise LayercutError(f"activations must be (C, h, w), got shape {tuple(activations.shape)}")
    c, h, w = activations.shape
    flat = int(torch.argmax(activations.reshape(-1)))
    return flat // (h * w), (flat // w) % h, flat % w
