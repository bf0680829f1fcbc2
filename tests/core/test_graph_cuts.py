"""Cut points of any traceable CNN from its torch.fx graph: the same as the hand-written rules where those exist,
the outputs of real modules elsewhere (checked with forward hooks on the model's own forward), truncation and
guided backprop on them, and clear errors for what cannot be traced."""

from __future__ import annotations

import warnings

import captum.attr as captum_attr
import pytest
import torch
import torchvision
from torch import nn

from layercut.contracts.errors import LayercutError
from layercut.contracts.spec import CutPointRef, ModelSpec
from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import load_checkpoint, save_checkpoint
from layercut.stages.cutpoints import CUT_POINT_RULES, cut_points, forward_features, resolve_cut_point
from layercut.stages.gbp import guided_backprop_maps
from layercut.stages.graph_cuts import graph_cut_points, graph_sequence
from layercut.stages.truncation import truncate
from layercut.testing.nets import functional_relu_twins, random_images, seeded


def unit_outputs(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each named module returns during the model's own forward (forward hooks: independent of our graph)."""
    found: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: found.__setitem__(name, out.detach().clone())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return found


@pytest.mark.parametrize("arch", ["vgg11", "resnet18", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small"])
def test_the_graph_rule_gives_the_hand_written_rules_cut_points(arch):
    model = seeded(build_model(arch, 3))
    assert type(model) in CUT_POINT_RULES  # these families keep their hand-written rule …
    _, found = graph_cut_points(model)
    assert [name for name, _ in found] == [p.name for p in cut_points(model)]  # … which the graph rule agrees with
    images = random_images(2, 3, 32)
    by_hand = forward_features(model, images)
    with torch.no_grad():
        by_graph = {}
        x = images
        for index, (_, segment) in enumerate(graph_sequence(model)):
            x = segment(x)
            by_graph[index] = x
    for index, value in by_hand.items():
        assert torch.equal(by_graph[index], value), index


def torchvision_model(arch: str) -> nn.Module:
    return seeded(build_model(arch, 3))


def timm_model(name: str) -> nn.Module:
    return seeded(build_model(f"timm/{name}", 3))


FAMILIES = {
    "densenet121": (lambda: torchvision_model("densenet121"), 64, ["features.relu0", "features.denseblock1"]),
    "convnext_tiny": (
        lambda: torchvision_model("convnext_tiny"),
        32,
        ["features.0", "features.1.0", "features.1.1", "features.1.2", "features.3.0"],
    ),
    "regnet_x_400mf": (lambda: torchvision_model("regnet_x_400mf"), 32, ["stem", "trunk_output.block1.block1-0"]),
    "shufflenet_v2_x0_5": (lambda: torchvision_model("shufflenet_v2_x0_5"), 32, ["conv1.2", "stage2.0"]),
    "squeezenet1_1": (lambda: torchvision_model("squeezenet1_1"), 64, ["features.1", "features.3"]),
    "googlenet": (lambda: torchvision_model("googlenet"), 32, ["conv1", "conv2", "conv3", "inception3a"]),
    "inception_v3": (lambda: torchvision_model("inception_v3"), 80, ["Conv2d_1a_3x3", "Conv2d_2a_3x3"]),
    "mnasnet0_5": (lambda: torchvision_model("mnasnet0_5"), 32, ["layers.2", "layers.5", "layers.8.0"]),
    "timm/convnext_atto": (lambda: timm_model("convnext_atto"), 32, ["stages.0", "stages.1", "stages.2", "stages.3"]),
    "timm/resnet18": (lambda: timm_model("resnet18"), 32, ["act1", "layer1.0", "layer1.1"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cut_points_of_other_families_are_module_outputs_the_whole_net_passes(family):
    make, size, first = FAMILIES[family]
    model = make()
    names = [p.name for p in cut_points(model)]
    assert names[: len(first)] == first
    images = random_images(2, 3, size)
    expected = unit_outputs(model, names, images)
    with torch.no_grad():
        ours = forward_features(model, images)
    for point in cut_points(model):
        assert torch.equal(ours[point.index], expected[point.name]), point.name
    squeeze = [n for n in names if n.startswith("classifier")]
    assert squeeze == []  # a classifier's own layers (SqueezeNet's final conv and ReLU) are no cut points


def test_a_cut_of_a_graph_model_keeps_its_activations_and_reloads(tmp_path):
    model = seeded(build_model("densenet121", 3))
    point = resolve_cut_point(model, "features.transition2")
    slim = truncate(model, point, 3, image_size=64).eval()
    images = random_images(2, 3, 64)
    with torch.no_grad():
        assert torch.equal(slim.body(images), forward_features(model, images)[point.index])
    assert [p.name for p in cut_points(slim)] == [p.name for p in cut_points(model)][: point.index + 1]
    spec = ModelSpec(
        architecture="densenet121",
        classes=["a", "b", "c"],
        image_size=64,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        cut_point=CutPointRef(index=point.index, name=point.name),
    )
    save_checkpoint(slim, spec, tmp_path / "slim.safetensors")
    again, _ = load_checkpoint(tmp_path / "slim.safetensors")
    with torch.no_grad():
        assert torch.equal(again(images), slim(images))


def captum_maps(model: nn.Module, names: list[str], images: torch.Tensor) -> torch.Tensor:
    """captum's NeuronGuidedBackprop of the per-example sum of each named module's output (nn.ReLU modules only)."""
    maps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            gbp = captum_attr.NeuronGuidedBackprop(model, model.get_submodule(name))
            maps.append(gbp.attribute(images, neuron_selector=lambda out: out.flatten(1).sum(1)))
    return torch.stack(maps, dim=1)


def test_guided_backprop_guides_relus_called_as_functions():
    functional, twin = functional_relu_twins()
    names = [p.name for p in cut_points(functional)]
    assert names == ["conv1", "block1", "conv2", "block2"]
    images = random_images(3, 3, 16)
    ours = guided_backprop_maps(functional, images)
    reference = captum_maps(twin, names, images)  # the twin's ReLUs are modules, which captum guides
    scale = reference.flatten(2).abs().amax(2).clamp_min(1e-12)[..., None, None, None]
    assert ((ours - reference).abs() / scale).max() <= 1e-5
    plain = torch.stack(
        [
            torch.autograd.grad(forward_features(functional, x := images.clone().requires_grad_())[i].sum(), x)[0]
            for i in range(len(names))
        ],
        1,
    )
    assert not torch.allclose(plain, ours)  # unguided gradients differ: the functional ReLUs really were guided
    assert all(not isinstance(m, nn.ReLU) for m in functional.modules())  # and the model itself is unchanged


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.stem(x))


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x


def test_a_model_that_cannot_be_traced_is_named_with_the_module_that_failed():
    with pytest.raises(LayercutError, match=r"DataDependent: torch\.fx cannot trace it in module 'gate'"):
        cut_points(DataDependent())


def test_timm_names_are_checked_when_built():
    with pytest.raises(LayercutError, match="timm has no model 'convnext_nonexistent'.*timm/convnext_"):
        build_model("timm/convnext_nonexistent", 3)
    with pytest.raises(ValueError, match="no timm model name"):
        ModelSpec(architecture="timm/Bad Name", classes=["a", "b"], image_size=32, mean=[0.5], std=[0.5])
    assert isinstance(build_model("timm/convnext_atto", 3), nn.Module)


def test_torchvision_builds_every_cnn_it_lists():
    """The built-in names are exactly torchvision's classification CNNs (its transformers left out)."""
    from layercut.contracts.configs import ARCHITECTURE_NAMES

    listed = set(torchvision.models.list_models(module=torchvision.models))
    transformers = {n for n in listed if n.startswith(("vit_", "swin_", "maxvit_"))}
    assert set(ARCHITECTURE_NAMES) == (listed - transformers) | {"smallcnn"}


def few(dataset, per_split: int = 24):
    """The dataset with a few images of each split (enough to run every stage, fast)."""
    import dataclasses

    def head(split):
        step = max(1, len(split.labels) // per_split)  # spread over the split, so that every class is in it
        picked = list(range(0, len(split.labels), step))[:per_split]
        return dataclasses.replace(
            split,
            images=split.images[picked],
            labels=split.labels[picked],
            sources=[split.sources[i] for i in picked],
        )

    return dataclasses.replace(dataset, train=head(dataset.train), val=head(dataset.val), test=head(dataset.test))


@pytest.mark.parametrize(("arch", "cut"), [("densenet121", "features.transition1"), ("timm/convnext_atto", "stages.1")])
def test_new_families_go_through_train_analyze_truncate_retrain(tmp_path, arch, cut):
    import layercut as lc

    data = few(lc.load_data("textures", image_size=32, progress=False))
    lc.train(data, arch, tmp_path / "base", epochs=1, batch_size=8, progress=False)
    analysis = lc.analyze(
        tmp_path / "base" / "model.safetensors", data, tmp_path / "analysis", max_probes=3, progress=False
    )
    assert [p.name for p in analysis.cut_points][:2] == [p.name for p in cut_points(build_model(arch, 3))][:2]
    assert analysis.depth_probes is not None and len(analysis.depth_probes.curve) == len(analysis.cut_points)
    sliced = lc.truncate(tmp_path / "base" / "model.safetensors", tmp_path / "slim" / "initial.safetensors", cut=cut)
    assert sliced.cut_point.name == cut and sliced.slim_params < sliced.base_params
    slim = lc.retrain(tmp_path / "slim" / "initial.safetensors", data, tmp_path / "slim", epochs=1, progress=False)
    model, spec = lc.load_model(tmp_path / "slim" / "model.safetensors")
    assert (
        spec.architecture == arch
        and spec.cut_point.name == cut
        and slim.params == sum(p.numel() for p in model.parameters())
    )


def test_timm_pretrained_weights_come_from_the_local_hugging_face_cache_only(tmp_path, monkeypatch):
    """--pretrained with a timm model loads its default weights from the Hugging Face cache, laid out as
    huggingface_hub lays it out (refs/main → a snapshot), with the ImageNet head replaced; nothing is fetched, and an
    empty cache is an error naming the repository and the command that fills it."""
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LayercutError, match=r"huggingface-cli download timm/convnext_atto\.d2_in1k model\.safetensors"):
        build_model("timm/convnext_atto", 3, pretrained=True)

    imagenet = seeded(timm.create_model("convnext_atto", pretrained=False), 5)  # stands in for the published weights
    snapshot = tmp_path / "hub" / "models--timm--convnext_atto.d2_in1k" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in imagenet.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)

    model = build_model("timm/convnext_atto", 3, pretrained=True)
    loaded, published = model.state_dict(), imagenet.state_dict()
    head = {k for k in published if k.startswith("head.fc.")}
    assert head and all(torch.equal(loaded[k], published[k]) for k in published if k not in head)
    assert model.get_classifier().out_features == 3
