"""Importing models trained elsewhere: every common way a state dict is saved is read (never unpickling code), the
weights are matched key by key against the architecture with the mismatches named, and the checkpoint written
gives the same logits as the model the weights came from."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.contracts.spec import ModelSpec
from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import load_checkpoint
from layercut.stages.importing import import_weights, read_weights
from layercut.testing.nets import random_images, seeded

CLASSES = ["cat", "dog", "owl"]


def spec(arch: str = "smallcnn", classes: list[str] = CLASSES, image_size: int = 32) -> ModelSpec:
    return ModelSpec(architecture=arch, classes=classes, image_size=image_size, mean=[0.5] * 3, std=[0.25] * 3)


def trained_elsewhere(arch: str = "smallcnn", classes: int = 3) -> nn.Module:
    """A model as another project would have it: the plain torchvision (or our small) module, seeded weights and
    BatchNorm statistics that are not the defaults."""
    model = seeded(build_model(arch, classes), seed=7)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def same_logits(original: nn.Module, checkpoint, size: int = 32) -> None:
    imported, _ = load_checkpoint(checkpoint)
    images = random_images(4, 3, size)
    with torch.no_grad():
        torch.testing.assert_close(imported(images), original(images), rtol=0, atol=0)


def test_a_plain_state_dict_saved_with_torch_save_imports_with_the_same_logits(tmp_path):
    original = trained_elsewhere()
    torch.save(original.state_dict(), tmp_path / "weights.pt")
    result = import_weights(tmp_path / "weights.pt", spec(), tmp_path / "model.safetensors")
    same_logits(original, tmp_path / "model.safetensors")
    assert (result.source_format, result.found_under, result.stripped_prefix) == ("torch", None, None)
    assert result.tensors == len(original.state_dict())


@pytest.mark.parametrize(
    ("wrap", "found_under", "prefix"),
    [
        (lambda sd: {"epoch": 9, "state_dict": sd, "optimizer": {"lr": 0.1}}, "state_dict", None),
        (lambda sd: {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, "model_state_dict", "module."),
        (lambda sd: {"_orig_mod." + k: v for k, v in sd.items()}, None, "_orig_mod."),
        (lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "hparams": {}}, "state_dict", "model."),
        (lambda sd: {"checkpoint": 1, "model": {"state_dict": sd}}, "model.state_dict", None),
    ],
    ids=["checkpoint-dict", "data-parallel", "torch-compile", "lightning", "nested-twice"],
)
def test_common_checkpoint_layouts_are_found(tmp_path, wrap, found_under, prefix):
    original = trained_elsewhere()
    torch.save(wrap(original.state_dict()), tmp_path / "checkpoint.pth")
    result = import_weights(tmp_path / "checkpoint.pth", spec(), tmp_path / "model.safetensors")
    assert (result.found_under, result.stripped_prefix) == (found_under, prefix)
    same_logits(original, tmp_path / "model.safetensors")


def test_safetensors_and_the_legacy_torch_format_import_too(tmp_path):
    original = trained_elsewhere()
    save_file(original.state_dict(), tmp_path / "weights.safetensors")
    torch.save(original.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name, fmt in (("weights.safetensors", "safetensors"), ("legacy.pt", "torch")):
        result = import_weights(tmp_path / name, spec(), tmp_path / f"{name}.safetensors")
        assert result.source_format == fmt
        same_logits(original, tmp_path / f"{name}.safetensors")


def test_half_precision_weights_and_a_missing_batchnorm_counter_are_accepted(tmp_path):
    original = trained_elsewhere()
    state = {k: v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pt")
    result = import_weights(tmp_path / "half.pt", spec(), tmp_path / "model.safetensors")
    assert result.source_dtypes == ["float16"]
    imported, _ = load_checkpoint(tmp_path / "model.safetensors")
    expected = {k: v.half().float() for k, v in state.items() if v.is_floating_point()}
    for key, value in expected.items():
        assert torch.equal(imported.state_dict()[key], value), key


def test_a_pickled_module_is_refused_without_running_it(tmp_path):
    torch.save(trained_elsewhere(), tmp_path / "whole.pt")
    with pytest.raises(LayercutError, match=r"pickled Python objects \(layercut\.stages\.architectures\.SmallCNN\)"):
        import_weights(tmp_path / "whole.pt", spec(), tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("content", [b"hello, not weights", b"PK\x03\x04 broken zip", b"\x80\x02 broken pickle", b""])
def test_a_file_that_is_not_weights_gets_a_clear_error(tmp_path, content):
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(LayercutError, match="junk.pt"):
        read_weights(tmp_path / "junk.pt")


def test_a_dict_without_tensors_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "config": "x"}, tmp_path / "c.pt")
    with pytest.raises(LayercutError, match=r"its keys: epoch, optimizer, config"):
        read_weights(tmp_path / "c.pt")


def test_mismatched_keys_are_named_with_their_count(tmp_path):
    state = trained_elsewhere().state_dict()
    dropped = [k for k in state if k.startswith("features.") and not k.endswith("num_batches_tracked")][:7]
    broken = {k: v for k, v in state.items() if k not in dropped}
    broken["extra.weight"] = torch.zeros(2)
    broken["features.0.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(LayercutError) as caught:
        import_weights(tmp_path / "broken.pt", spec(), tmp_path / "model.safetensors")
    message = str(caught.value)
    assert "missing keys: " + ", ".join(dropped[1:6]) + " … (6 in all)" in message  # features.0.weight is kept
    assert "unexpected keys: extra.weight" in message
    assert "wrong shapes: features.0.weight (16, 3, 5, 5) (expected (16, 3, 3, 3))" in message


def test_another_architecture_is_refused_naming_what_is_missing(tmp_path):
    torch.save(trained_elsewhere("resnet18").state_dict(), tmp_path / "r18.pt")
    with pytest.raises(LayercutError, match=r"do not fit resnet34 with 3 classes: missing keys: layer1\.2\.conv1"):
        import_weights(tmp_path / "r18.pt", spec("resnet34", image_size=64), tmp_path / "model.safetensors")


def test_the_head_must_have_one_output_per_class(tmp_path):
    torch.save(trained_elsewhere("resnet18", classes=5).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(LayercutError, match=r"head in r18.pt \(fc.weight\) has 5 outputs but 3 classes were given"):
        import_weights(tmp_path / "r18.pt", spec("resnet18", image_size=64), tmp_path / "model.safetensors")


def test_parameters_are_counted_without_batchnorm_buffers(tmp_path):
    """torchvision's ResNet-50 has 25,557,032 parameters (its model card); its BatchNorm statistics are not."""
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pt")
    classes = [f"c{i}" for i in range(1000)]
    result = import_weights(tmp_path / "r50.pt", spec("resnet50", classes, 224), tmp_path / "model.safetensors")
    assert result.params == 25_557_032
    assert result.buffers == 53_120 + 53  # running mean and variance of 26,560 channels, one counter per BatchNorm
