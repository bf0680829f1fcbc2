"""Truncation keeps the trained weights up to the cut, adds the documented head, and really shrinks the model."""

import io

import pytest
import torch
from safetensors import safe_open
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.contracts.spec import CutPointRef, ModelSpec
from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import load_checkpoint, read_spec, save_checkpoint
from layercut.stages.cutpoints import cut_points, forward_features, resolve_cut_point
from layercut.stages.profiling import count_parameters
from layercut.stages.truncation import SlimNet, truncate


@pytest.mark.parametrize(
    ("arch", "cut"),
    [("smallcnn", "features.6"), ("vgg11", "features.9"), ("resnet18", "layer2.1"), ("mobilenet_v2", "features.7")],
)
def test_activations_at_the_cut_are_identical_and_params_shrink(arch: str, cut: str) -> None:
    torch.manual_seed(0)
    base = build_model(arch, 3).eval()
    point = resolve_cut_point(base, cut)
    slim = truncate(base, point, num_classes=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = forward_features(base, x, keep={point.index})[point.index]
        got = slim.body(x)
    assert torch.equal(got, expected)
    assert count_parameters(slim) < count_parameters(base)
    assert isinstance(slim, SlimNet)


def test_head_is_gap_dropout_linear_to_the_classes() -> None:
    base = build_model("resnet18", 3)
    slim = truncate(base, resolve_cut_point(base, "layer2.1"), num_classes=5, dropout=0.3, image_size=32)
    assert isinstance(slim.pool, nn.AdaptiveAvgPool2d) and slim.pool.output_size == 1
    assert isinstance(slim.dropout, nn.Dropout) and slim.dropout.p == 0.3
    assert (slim.classifier.in_features, slim.classifier.out_features) == (128, 5)
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_slim_model_is_independent_of_the_base() -> None:
    base = build_model("smallcnn", 3)
    slim = truncate(base, cut_points(base)[1], num_classes=3)
    with torch.no_grad():
        next(slim.parameters()).add_(1.0)
    assert not torch.equal(next(slim.parameters()), next(base.parameters()))


def test_slim_cut_points_are_the_base_ones_up_to_the_cut() -> None:
    base = build_model("resnet18", 3)
    slim = truncate(base, resolve_cut_point(base, "layer2.0"), num_classes=3, image_size=32)
    assert [p.name for p in cut_points(slim)] == ["relu", "layer1.0", "layer1.1", "layer2.0"]


def _spec(**update) -> ModelSpec:
    spec = ModelSpec(architecture="resnet18", classes=["a", "b", "c"], image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    return spec.model_copy(update=update)


def test_slim_checkpoint_round_trips_without_pickle(tmp_path) -> None:
    torch.manual_seed(0)
    base = build_model("resnet18", 3).eval()
    point = resolve_cut_point(base, "layer3.0")
    slim = truncate(base, point, num_classes=3, dropout=0.1, image_size=32).eval()
    path = save_checkpoint(
        slim,
        _spec(cut_point=CutPointRef(index=point.index, name=point.name), head_dropout=0.1),
        tmp_path / "slim.safetensors",
    )

    loaded, spec = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), slim(x), rtol=0, atol=0)
    assert spec.cut_point.name == "layer3.0" and spec.head_dropout == 0.1 and spec.is_slim

    # The file is safetensors (a JSON header and raw tensors), and its state dict holds plain tensors only,
    # so it also survives torch's restricted unpickler.
    with safe_open(str(path), framework="pt") as handle:
        assert "layercut.spec" in handle.metadata()
    buffer = io.BytesIO()
    torch.save(loaded.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == set(slim.state_dict())


def test_checkpoint_errors_are_clear(tmp_path) -> None:
    with pytest.raises(LayercutError, match="does not exist"):
        read_spec(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LayercutError, match="not a safetensors checkpoint"):
        read_spec(junk)
    wrong = save_checkpoint(build_model("smallcnn", 3), _spec(), tmp_path / "wrong.safetensors")
    with pytest.raises(LayercutError, match="do not match its spec"):
        load_checkpoint(wrong)
