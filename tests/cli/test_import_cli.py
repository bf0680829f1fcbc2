"""`layercut import` end to end: a state dict saved elsewhere becomes a checkpoint the other commands take; a
file that does not fit is refused with a message, never a traceback."""

from __future__ import annotations

import json

import torch

from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import load_checkpoint
from layercut.testing.commands import clean_env, layercut
from layercut.testing.nets import random_images, seeded


def test_import_then_truncate_and_compare_logits(tmp_path):
    original = seeded(build_model("smallcnn", 3), seed=5).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}, tmp_path / "mine.pth")
    (tmp_path / "classes.txt").write_text("cat\ndog\nowl\n")
    env = clean_env(tmp_path)
    done = layercut(
        "import", "--weights", "mine.pth", "--arch", "smallcnn", "--classes", "classes.txt",
        "--image-size", "32", "--mean", "0.5", "--std", "0.25", "--out", "mine.safetensors", "--json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert (result["found_under"], result["stripped_prefix"]) == ("state_dict", "module.")
    assert result["params"] == sum(p.numel() for p in original.parameters())
    imported, spec = load_checkpoint(tmp_path / "mine.safetensors")
    assert (spec.classes, spec.mean, spec.std, spec.image_size) == (["cat", "dog", "owl"], [0.5], [0.25], 32)
    images = random_images(2, 3, 32)
    with torch.no_grad():
        assert torch.equal(imported(images), original(images))
    layercut(
        "truncate", "--checkpoint", "mine.safetensors", "--cut", "1", "--out", "slim.safetensors",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "slim.safetensors").is_file()


def assert_refused(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_what_cannot_be_imported_is_refused_with_a_message(tmp_path):
    torch.save(seeded(build_model("smallcnn", 3)).state_dict(), tmp_path / "three.pt")
    torch.save(seeded(build_model("smallcnn", 3)), tmp_path / "module.pt")
    env = clean_env(tmp_path)
    common = ["--image-size", "32", "--out", "x.safetensors"]

    def run(*args: str):
        return layercut("import", *args, *common, env=env, cwd=tmp_path, check=False)

    assert_refused(
        run("--weights", "three.pt", "--arch", "smallcnn", "--classes", "a,b"),
        "(classifier.weight) has 3 outputs but 2 classes were given",
    )
    assert_refused(run("--weights", "module.pt", "--arch", "smallcnn", "--classes", "a,b,c"), "pickled Python objects")
    assert_refused(run("--weights", "nowhere.pt", "--arch", "smallcnn", "--classes", "a,b,c"), "does not exist")
    assert_refused(run("--weights", "three.pt", "--arch", "resnet99", "--classes", "a,b,c"), "unknown architecture")
    assert_refused(run("--weights", "three.pt", "--arch", "smallcnn", "--classes", "names.txt"), "names.txt does not")
    assert_refused(
        run("--weights", "three.pt", "--arch", "smallcnn", "--classes", "a,b,c", "--mean", "x"), "--mean takes"
    )
    assert not (tmp_path / "x.safetensors").exists()
