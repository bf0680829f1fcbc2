"""Cut points exactly as DESIGN.md defines them, for every supported family."""

import pytest
import torch
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.stages.architectures import ARCHITECTURES, build_model
from layercut.stages.cutpoints import (
    cut_points,
    describe_cut_points,
    feature_sequence,
    forward_features,
    resolve_cut_point,
)


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


def test_every_architecture_runs_at_32_pixels() -> None:
    for arch in ARCHITECTURES:
        if arch.endswith(("101", "152")) or arch.startswith(("vgg13", "vgg19", "efficientnet_b2", "efficientnet_b3")):
            continue  # same blocks as their smaller siblings; kept out for speed
        model = build_model(arch, 4).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4), arch
