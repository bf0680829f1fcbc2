"""What a run asks for, checked before any work starts: the architecture, the image size, the data source, the
cached weights of --pretrained, the cut point and the sweep's cut points, so that a typo fails in a second instead
of after training and analysis (and leaves no partial run folder behind)."""

from __future__ import annotations

import torch
from torch import nn

from layercut.contracts.configs import DataConfig, SweepConfig, TruncateConfig
from layercut.contracts.errors import DataError
from layercut.contracts.plan import cut_rule
from layercut.contracts.sources import source_problem
from layercut.stages.architectures import build_model, check_architecture, check_image_size, check_pretrained
from layercut.stages.cutpoints import resolve_cut_point
from layercut.stages.select import sweep_indices


def model_layout(arch: str) -> nn.Module:
    """``arch`` built on the meta device (no memory, no initialisation: a ResNet-152 takes about 0.1 s); on the CPU
    for the few builders that compute with tensors while building (RegNet)."""
    try:
        with torch.device("meta"):
            return build_model(arch, num_classes=2)
    except (NotImplementedError, RuntimeError):
        return build_model(arch, num_classes=2)


def check_run_inputs(
    data: DataConfig, arch: str, cut: TruncateConfig, sweep: SweepConfig | None = None, pretrained: bool = False
) -> None:
    """Raise the error a run would meet later for any input that can be checked now, without data or weights.

    The cut point and the sweep's cut points are looked up in ``arch``'s layout, built on the meta device (no
    memory, no initialisation: a ResNet-152 takes about 0.1 s).
    """
    check_architecture(arch)
    check_image_size(data.image_size, arch)
    problem = source_problem(data.source)
    if problem is not None:
        raise DataError(problem)
    if pretrained:
        check_pretrained(arch)
    if cut_rule(cut.cut) != "user" and sweep is None:
        return
    layout = model_layout(arch)
    if cut_rule(cut.cut) == "user":
        resolve_cut_point(layout, cut.cut)
    if sweep is not None:
        sweep_indices(layout, sweep.cuts)
