"""Cut points exactly as docs/design.md defines them, for every supported family."""

import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from layercut.contracts.errors import LayercutError
from layercut.stages.architectures import ARCHITECTURES, build_model, min_image_size
from layercut.stages.cutpoints import (
    CUT_POINT_RULES,
    CutPointRule,
    cut_point_rule,
    cut_points,
    describe_cut_points,
    feature_sequence,
    forward_features,
    register_cut_point_rule,
    resolve_cut_point,
)
from layercut.stages.truncation import SlimNet, truncate


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("smallcnn", 4),
        ("vgg11", 8),
        ("vgg11_bn", 8),
        ("vgg13", 10),
        ("vgg16", 13),
        ("vgg16_bn", 13),
        ("vgg19", 16),
        # ResNet: the stem's ReLU + one per residual block: 1 + sum(blocks per stage)
        ("resnet18", 1 + 2 + 2 + 2 + 2),
        ("resnet34", 1 + 3 + 4 + 6 + 3),
        ("resnet50", 1 + 3 + 4 + 6 + 3),
        ("resnet101", 1 + 3 + 4 + 23 + 3),
        ("resnet152", 1 + 3 + 8 + 36 + 3),
        # EfficientNet / MobileNet: stem + every block + the final 1x1 conv block
        ("efficientnet_b0", 1 + 16 + 1),
        ("mobilenet_v2", 1 + 17 + 1),
        ("mobilenet_v3_small", 1 + 11 + 1),
    ],
)
def test_cut_point_counts(arch: str, expected: int) -> None:
    assert len(cut_points(build_model(arch, 3))) == expected


def test_resnet152_has_the_51_cut_points_of_the_reference_study() -> None:
    points = cut_points(build_model("resnet152", 3))
    assert len(points) == 51
    assert points[0].name == "relu" and points[1].name == "layer1.0" and points[-1].name == "layer4.2"


def test_vgg_cut_points_are_exactly_the_relus_of_features() -> None:
    model = build_model("vgg11", 3)
    relus = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
    assert [p.name for p in cut_points(model)] == relus


def test_feature_sequence_composes_to_the_models_features() -> None:
    torch.manual_seed(0)
    for arch in ("vgg11", "resnet18", "mobilenet_v2", "efficientnet_b0"):
        model = build_model(arch, 3).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            y = x
            for _, module in feature_sequence(model):
                y = module(y)
            if arch.startswith("resnet"):
                reference = model.layer4(
                    model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))))
                )
            else:
                reference = model.features(x)
        torch.testing.assert_close(y, reference)


def test_forward_features_returns_every_cut_point_and_stops_early() -> None:
    model = build_model("smallcnn", 3).eval()
    with torch.no_grad():
        outputs = forward_features(model, torch.randn(1, 3, 32, 32))
        partial = forward_features(model, torch.randn(1, 3, 32, 32), keep={1})
    assert sorted(outputs) == [0, 1, 2, 3]
    assert list(partial) == [1]


def test_custom_sequential_cnn_cuts_at_every_activation() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.SiLU(),
        nn.Conv2d(4, 4, 3),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
        nn.ReLU(),
    )
    assert [p.name for p in cut_points(model)] == ["1", "3", "5"]  # the ReLU after the Linear is not a feature layer


def test_describe_cut_points_gives_channels_and_spatial_size() -> None:
    infos = describe_cut_points(build_model("resnet18", 3), 64)
    assert (infos[0].name, infos[0].channels, infos[0].height) == ("relu", 64, 32)
    assert (infos[-1].name, infos[-1].channels, infos[-1].height, infos[-1].width) == ("layer4.1", 512, 2, 2)


def test_resolve_cut_point_by_index_name_and_errors() -> None:
    model = build_model("resnet18", 3)
    assert resolve_cut_point(model, 3).name == "layer2.0"
    assert resolve_cut_point(model, "-1").name == "layer4.1"
    assert resolve_cut_point(model, "layer3.1").index == 6
    with pytest.raises(LayercutError, match="no cut point named 'layer9.0'.*layer1.0"):
        resolve_cut_point(model, "layer9.0")
    with pytest.raises(LayercutError, match="out of range.*9"):
        resolve_cut_point(model, 9)


SMALLEST_OF_EACH_FAMILY = (
    "smallcnn",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "squeezenet1_1",
    "densenet121",
    "googlenet",
    "inception_v3",
    "shufflenet_v2_x0_5",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet0_5",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
)
"""One architecture of every family (larger siblings have the same blocks)."""


def test_every_family_runs_at_its_smallest_size_with_its_cut_points() -> None:
    assert set(SMALLEST_OF_EACH_FAMILY) <= set(ARCHITECTURES)
    for arch in SMALLEST_OF_EACH_FAMILY:
        size = min_image_size(arch)
        model = build_model(arch, 4).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 4), arch
            outputs = forward_features(model, torch.randn(1, 3, size, size))
        assert len(outputs) == len(cut_points(model)) >= 4, arch


# ------------------------------------------------------------------------------------------ the registry


class ToyNet(nn.Module):
    """A family no built-in rule covers: its blocks live in a ModuleList called ``stages``."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1), nn.ReLU()) for i in range(3)
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))


class ToyChild(ToyNet):
    """A subclass of a registered family, with no rule of its own."""


TOY_RULE = CutPointRule(
    sequence=lambda model: [(f"stages.{i}", stage) for i, stage in enumerate(model.stages)],
    is_cut_point=lambda model, name, module: True,
)


@pytest.fixture
def rules():
    """The registry, restored after the test."""
    saved = dict(CUT_POINT_RULES)
    yield CUT_POINT_RULES
    CUT_POINT_RULES.clear()
    CUT_POINT_RULES.update(saved)


def test_a_model_no_rule_covers_gets_its_cut_points_from_its_graph(rules) -> None:
    assert [p.name for p in cut_points(ToyNet())] == ["stages.0.1", "stages.1.1", "stages.2.1"]
    with pytest.raises(LayercutError, match="Conv2d has no cut points"):
        feature_sequence(nn.Conv2d(3, 4, 3))


def test_a_registered_family_gets_its_cut_points_and_can_be_cut(rules) -> None:
    register_cut_point_rule(ToyNet, TOY_RULE)
    model = ToyNet().eval()
    assert [p.name for p in cut_points(model)] == ["stages.0", "stages.1", "stages.2"]
    slim = truncate(model, resolve_cut_point(model, "stages.1"), num_classes=5, image_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(slim.body(x), forward_features(model, x, keep={1})[1])
    assert [p.name for p in cut_points(slim)] == ["stages.0", "stages.1"]


def test_the_rule_is_looked_up_along_the_mro(rules) -> None:
    register_cut_point_rule(ToyNet, TOY_RULE)
    assert cut_point_rule(ToyChild()) is TOY_RULE
    assert len(cut_points(ToyChild())) == 3
    own = CutPointRule(TOY_RULE.sequence, lambda model, name, module: name == "stages.2")
    register_cut_point_rule(ToyChild, own)  # the nearest class with a rule wins
    assert [p.name for p in cut_points(ToyChild())] == ["stages.2"]
    assert len(cut_points(ToyNet())) == 3

    class WideResNet(tvm.ResNet):  # a subclass of a torchvision family gets the family's rule
        pass

    resnet = WideResNet(tvm.resnet.BasicBlock, [2, 2, 2, 2], num_classes=3)
    assert cut_point_rule(resnet) is CUT_POINT_RULES[tvm.ResNet]
    assert len(cut_points(resnet)) == 1 + 2 + 2 + 2 + 2

    class MySequential(nn.Sequential):
        pass

    assert [p.name for p in cut_points(MySequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()))] == ["1"]


def test_a_model_with_a_features_stack_needs_no_entry(rules) -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.GELU())
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean(dim=(2, 3)))

    assert [p.name for p in cut_points(Custom())] == ["features.1", "features.3"]


def test_the_slim_model_registers_its_own_rule_and_cutpoints_does_not_import_truncation() -> None:
    assert SlimNet in CUT_POINT_RULES
    code = (
        "import sys, layercut.stages.cutpoints as c; "
        "assert 'layercut.stages.truncation' not in sys.modules, 'cutpoints imports truncation'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
