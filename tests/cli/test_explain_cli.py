"""`layercut explain`: the real entry point on a tiny base and slim model; bad input gives one clean message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import layercut as lc
from layercut.cli.main import main


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("models")
    data = lc.load_data("textures", image_size=32)
    lc.train(data, "smallcnn", out / "base", epochs=1)
    lc.truncate(out / "base" / "model.safetensors", out / "slim" / "initial.safetensors", cut="features.10")
    lc.retrain(out / "slim" / "initial.safetensors", data, out / "slim", epochs=1)
    return out / "base" / "model.safetensors", out / "slim" / "model.safetensors"


def test_explain_base_beside_slim(models, tmp_path):
    base, slim = models
    out = tmp_path / "explain"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "layercut.cli.main",
            "explain",
            "--model",
            base,
            "--compare-with",
            slim,
            "--out",
            out,
            "--images",
            "3",
            "--methods",
            "gradcam,layercam,guided_gradcam",
            "--target",
            "predicted",
            "--edges",
            "--feature-maps",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload == json.loads((out / "explain.json").read_text())
    assert payload["methods"] == ["gradcam", "layercam", "guided_gradcam"] and payload["config"]["edges"]
    assert payload["models"]["base"]["layer"] == "features.14" and payload["models"]["slim"]["layer"] == "features.10"
    assert "base_vs_slim" in payload["figures"]
    for file in payload["figures"].values():
        assert (out / file).is_file() and (out / file).stat().st_size > 1000, file
    assert (out / "explain_maps.npz").is_file()


def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["layercut", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, " ".join((captured.err + captured.out).split())


def test_class_names_and_human_output(models, tmp_path, monkeypatch, capsys):
    base, _ = models
    code, text = _main(
        monkeypatch,
        capsys,
        "explain",
        "--model",
        base,
        "--out",
        tmp_path,
        "--images",
        "2",
        "--methods",
        "gradcam",
        "--feature-maps",
        "0",
        "--target",
        "grass",
        "--quiet",
    )
    assert code == 0, text
    assert "base: smallcnn at features.14" in text and "explain.json" in text
    payload = json.loads((tmp_path / "explain.json").read_text())
    assert payload["target"] == 1 and payload["models"]["base"]["targets"] == [[1], [1]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "layer4"], "no layer named 'layer4'"),
        (["--methods", "gradcam,fullgrad"], "--methods: unknown method(s) fullgrad"),
        (["--target", "7"], "--target 7 is not a class index"),
        (["--target", "cats"], "--target must be predicted, all, a class index or a class name (brick, grass, gravel)"),
        (["--images", "0"], "--images"),
    ],
)
def test_bad_input_gives_one_clean_message(models, tmp_path, monkeypatch, capsys, args, message):
    base, _ = models
    code, text = _main(monkeypatch, capsys, "explain", "--model", base, "--out", tmp_path, "--quiet", *args)
    assert code == 2 and message in text and "Traceback" not in text, text


def test_missing_checkpoints(models, tmp_path, monkeypatch, capsys):
    base, _ = models
    code, text = _main(monkeypatch, capsys, "explain", "--model", tmp_path / "none.safetensors", "--out", tmp_path)
    assert code == 2 and "does not exist" in text
    code, text = _main(
        monkeypatch,
        capsys,
        "explain",
        "--model",
        base,
        "--compare-with",
        tmp_path / "gone.safetensors",
        "--out",
        tmp_path,
        "--quiet",
    )
    assert code == 2 and "gone.safetensors does not exist" in text


def test_run_checks_its_explain_options_first(tmp_path, monkeypatch, capsys):
    code, text = _main(monkeypatch, capsys, "run", "--out", tmp_path, "--explain-methods", "gradcam,bogus", "--quiet")
    assert code == 2 and "--explain-methods: unknown method(s) bogus" in text
    assert not (tmp_path / "base").exists()
