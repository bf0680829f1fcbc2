"""Cut points of any traceable CNN, read from its ``torch.fx`` graph (docs/design.md: cut points of other models).

A cut point is a node of the graph that every path from the input to the output passes through (the network is
one tensor there), taken at module boundaries so that names stay readable: the model's children, with plain
``nn.Sequential`` / ``nn.ModuleList`` containers opened into their elements, are the *units*; a unit is a cut point
when the node that leaves it is such a node, holds a 4-D feature map, and the unit is a block (a module with
children, e.g. ``layer2.1``, ``features.denseblock3``, ``stages.2``) or an activation (``features.1`` of a VGG).
On VGG, ResNet, EfficientNet and MobileNet this gives exactly the hand-written rules' cut points.

The feature sequence of such a model is the graph split at its cut points: one ``GraphModule`` per cut point,
computing it from the one before, holding the model's own modules (so trained weights are shared, and a truncated
model keeps them). Activations that the model's code calls as functions (``F.relu`` in GoogLeNet's convolutions)
become modules of the segments, so that guided backpropagation guides them like any other.
"""

from __future__ import annotations

import operator
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from layercut.contracts.errors import LayercutError

NamedModule = tuple[str, nn.Module]

SHAPE_SIZES = (64, 299)
"""Input sizes tried, in order, to learn which nodes hold feature maps (Inception v3 needs at least 75 px)."""
SCOPE = "layercut_scope"
"""``node.meta`` key: the qualified name of the module whose forward created the node."""
CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
"""Module types (exactly these, not subclasses) that are opened into their elements when finding units."""

FUNCTIONAL_ACTIVATIONS: dict[Any, Callable[[dict[str, Any]], nn.Module]] = {
    F.relu: lambda kw: nn.ReLU(inplace=bool(kw.get("inplace", False))),
    torch.relu: lambda kw: nn.ReLU(),
    torch.relu_: lambda kw: nn.ReLU(inplace=True),
    F.relu6: lambda kw: nn.ReLU6(inplace=bool(kw.get("inplace", False))),
    F.silu: lambda kw: nn.SiLU(inplace=bool(kw.get("inplace", False))),
    F.hardswish: lambda kw: nn.Hardswish(inplace=bool(kw.get("inplace", False))),
    F.gelu: lambda kw: nn.GELU(approximate=str(kw.get("approximate", "none"))),
    F.mish: lambda kw: nn.Mish(inplace=bool(kw.get("inplace", False))),
}
"""Activation functions a model may call directly, and the module each becomes in the segments."""
METHOD_ACTIVATIONS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "relu": lambda kw: nn.ReLU(),
    "relu_": lambda kw: nn.ReLU(inplace=True),
}
"""Activation methods of a tensor (``x.relu()``), and the module each becomes."""
ACTIVATION_KWARGS = {"inplace", "approximate"}

_SEQUENCES: weakref.WeakKeyDictionary[nn.Module, list[NamedModule]] = weakref.WeakKeyDictionary()


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Callable[..., Any], ...]]:
    """The modules timm marks as leaves and the functions it marks as not traceable (nothing when timm was never
    imported: then no model is a timm model)."""
    if "timm" not in sys.modules:
        return (), ()
    from timm.layers import get_notrace_functions, get_notrace_modules

    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


class ScopeTracer(fx.Tracer):
    """A tracer that records, on every node, the module whose forward made it, and keeps childless modules
    whole (their forward may read ``self.training``, which tracing would freeze)."""

    def __init__(self) -> None:
        self.leaf_types, functions = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self.scopes: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if not any(True for _ in m.children()) or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        path = self.path_of_module(m)
        self.scopes.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or path  # the innermost module whose forward failed
            raise
        finally:
            self.scopes.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[SCOPE] = self.scopes[-1] if self.scopes else ""
        return node


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's graph, its modules shared, functional activations turned into modules; a clear error when the
    model cannot be traced."""
    tracer = ScopeTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError … from the model's own code
        where = f" in module {tracer.failed_in!r}" if tracer.failed_in else ""
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise LayercutError(
            f"cannot find cut points in {type(model).__name__}: torch.fx cannot trace it{where} "
            f"({type(exc).__name__}: {detail}); make that forward traceable or register a cut-point rule for the "
            "model (layercut.stages.cutpoints.register_cut_point_rule)"
        ) from None
    module = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    _modules_for_functional_activations(module)
    return module


def _activation_module(node: fx.Node) -> nn.Module | None:
    """The module that does what an activation call node does, or None when the node is no such call."""
    if len(node.args) != 1 or not set(node.kwargs) <= ACTIVATION_KWARGS:
        return None
    if node.op == "call_function" and node.target in FUNCTIONAL_ACTIVATIONS:
        return FUNCTIONAL_ACTIVATIONS[node.target](dict(node.kwargs))
    if node.op == "call_method" and node.target in METHOD_ACTIVATIONS:
        return METHOD_ACTIVATIONS[str(node.target)](dict(node.kwargs))
    return None


def _modules_for_functional_activations(module: fx.GraphModule) -> None:
    """Replace every ``F.relu(x)`` / ``x.relu()`` … call by a call of a new activation module of ``module``."""
    count = 0
    for node in list(module.graph.nodes):
        replacement = _activation_module(node)
        if replacement is None:
            continue
        name = f"functional_activation_{count}"
        count += 1
        module.add_submodule(name, replacement)
        with module.graph.inserting_after(node):
            call = module.graph.call_module(name, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        module.graph.erase_node(node)
    module.recompile()


def _reachable(start: fx.Node, forward: bool) -> set[fx.Node]:
    """Nodes reachable from ``start`` following users (``forward``) or inputs."""
    seen = {start}
    stack = [start]
    while stack:
        node = stack.pop()
        for nxt in node.users if forward else node.all_input_nodes:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def chokepoints(graph: fx.Graph) -> tuple[list[fx.Node], set[fx.Node]]:
    """(the nodes every input-to-output path passes through, in order; the nodes on some such path).

    In a topological order, a node is on every path exactly when no edge between path nodes jumps over it."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    if not inputs:
        raise LayercutError("the traced model has no input")
    on_path = _reachable(inputs[0], True) & _reachable(output, False)
    order = {node: i for i, node in enumerate(n for n in nodes if n in on_path)}
    found: list[fx.Node] = []
    reach = -1  # the furthest position an edge from an earlier path node goes to
    for node, position in order.items():
        if reach <= position and node.op not in ("placeholder", "output"):
            found.append(node)
        reach = max([reach, *(order[user] for user in node.users if user in order)])
    return found, on_path


def _is_container(module: nn.Module) -> bool:
    """A plain container, or an ``nn.Sequential`` subclass that only groups blocks (RegNet's stages), unlike one that
    makes a block of layers (torchvision's ``Conv2dNormActivation``)."""
    if type(module) in CONTAINERS:
        return True
    children = list(module.children())
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and bool(children)
        and all(any(True for _ in child.children()) for child in children)
    )


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's children, with plain containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``, and
    sequences of blocks) opened into their elements, recursively."""
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _is_container(child):
                visit(f"{path}.", child)
            else:
                found.append((path, child))

    visit("", model)
    return found


class _FeatureMaps(fx.Interpreter):
    """Runs a graph and remembers which nodes gave a 4-D tensor."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.maps: set[fx.Node] = set()

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor) and result.dim() == 4:
            self.maps.add(n)
        return result


def _feature_map_nodes(module: fx.GraphModule, model: nn.Module) -> set[fx.Node]:
    """The nodes that hold a 4-D tensor, learnt by running a dummy image through the graph in eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    channels = _input_channels(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # meta when only the layout is built
    problem: Exception | None = None
    try:
        model.eval()
        for size in SHAPE_SIZES:
            run = _FeatureMaps(module)
            try:
                with torch.no_grad():
                    run.run(torch.zeros(1, channels, size, size, device=device))
                return run.maps
            except Exception as exc:  # too small an input for the model: try the next size
                problem = exc
    finally:
        for m, training in modes:
            m.training = training
    raise LayercutError(
        f"cannot find cut points in {type(model).__name__}: a {SHAPE_SIZES[-1]} px image does not run through it "
        f"({type(problem).__name__}: {problem})"
    )


def _input_channels(model: nn.Module) -> int:
    """The input channels of the first convolution (3 when there is none)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3


def graph_cut_points(model: nn.Module) -> tuple[fx.GraphModule, list[tuple[str, fx.Node]]]:
    """The traced model and its cut points: ``(unit name, the node that leaves the unit)`` in depth order."""
    module, points, _ = _traced_cut_points(model)
    return module, points


def _traced_cut_points(model: nn.Module) -> tuple[fx.GraphModule, list[tuple[str, fx.Node]], set[fx.Node]]:
    """``graph_cut_points``, and the nodes on an input-to-output path (which the segments are made of)."""
    from layercut.stages.cutpoints import ACTIVATIONS  # cutpoints imports this module for its fallback rule

    module = trace(model)
    choke, on_path = chokepoints(module.graph)
    choke_set = set(choke)
    maps = _feature_map_nodes(module, model)
    position = {node: i for i, node in enumerate(module.graph.nodes)}
    found: list[tuple[int, str, fx.Node]] = []
    for name, unit in units(model):
        inside = [n for n in module.graph.nodes if n in on_path and _within(str(n.meta.get(SCOPE, "")), name)]
        if not inside:
            continue
        last = inside[-1]
        is_block = any(True for _ in unit.children())
        if last in choke_set and last in maps and (is_block or isinstance(unit, ACTIVATIONS)):
            found.append((position[last], name, last))
    found.sort(key=operator.itemgetter(0))
    head = _head_child(model)
    features = [item for item in found if head is None or not _within(item[1], head)]
    return module, [(name, node) for _, name, node in (features or found)], on_path


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _head_child(model: nn.Module) -> str | None:
    """The child of the model that holds its last layer with weights (its classifier: SqueezeNet's ``classifier``
    ends in a convolution and a ReLU, which are no cut points)."""
    last = None
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            last = name
    return last.split(".")[0] if last else None


def _segment(
    module: fx.GraphModule, start: fx.Node | None, end: fx.Node, on_path: set[fx.Node], class_name: str
) -> fx.GraphModule:
    """A GraphModule computing ``end`` from ``start`` (the model's input when None): the path nodes between them,
    and the input-free nodes (parameters, constants) they read."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    nodes = list(module.graph.nodes)
    first = nodes.index(start) + 1 if start is not None else 0
    if start is not None:
        env[start] = graph.placeholder("x")

    def copy(node: fx.Node) -> fx.Node:
        if node not in env:
            for needed in node.all_input_nodes:
                copy(needed)
            env[node] = graph.node_copy(node, lambda n: env[n])
        return env[node]

    for node in nodes[first : nodes.index(end) + 1]:
        if node in on_path:
            copy(node)
    graph.output(env[end])
    graph.lint()
    return fx.GraphModule(module, graph, class_name=class_name)


def graph_sequence(model: nn.Module) -> list[NamedModule]:
    """The model's feature sequence: one segment per cut point, named by it (cached per model object)."""
    cached = _SEQUENCES.get(model)
    if cached is not None:
        return cached
    module, points, on_path = _traced_cut_points(model)
    if not points:
        raise LayercutError(
            f"{type(model).__name__} has no cut points: no block or activation of it leaves a single feature map"
        )
    unit_types = {name: type(unit).__name__ for name, unit in units(model)}
    sequence: list[NamedModule] = []
    start: fx.Node | None = None
    for name, node in points:
        sequence.append((name, _segment(module, start, node, on_path, unit_types.get(name, "Segment"))))
        start = node
    _SEQUENCES[model] = sequence
    return sequence
