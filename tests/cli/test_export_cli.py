"""`layercut export`: the real entry point on a tiny checkpoint; a wrong format or a missing checkpoint is one clean
message and a non-zero exit status."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from layercut.cli.main import main
from layercut.contracts.results import ExportResult
from layercut.contracts.spec import ModelSpec
from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import save_checkpoint
from layercut.testing.nets import seeded

TEXTURES = ["brick", "grass", "gravel"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    spec = ModelSpec(
        architecture="smallcnn",
        classes=TEXTURES,
        image_size=32,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        data={"source": "textures", "image_size": 32},
    )
    return save_checkpoint(
        seeded(build_model("smallcnn", 3)), spec, tmp_path_factory.mktemp("ck") / "model.safetensors"
    )


def run_main(monkeypatch, capsys, *args: object) -> tuple[int, str]:
    """`layercut *args` in this process: its exit status and what it printed (stderr and stdout) on one line."""
    monkeypatch.setattr(sys, "argv", ["layercut", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, " ".join((captured.err + captured.out).split())


def test_export_onnx_beside_the_checkpoint_checked_on_real_test_images(checkpoint, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["layercut", "export", "--checkpoint", str(checkpoint), "--data", "textures"])
    sys.argv += ["--repeats", "1", "--threads", "1", "--json", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    result = ExportResult.model_validate(json.loads(captured.out))
    assert result == ExportResult.model_validate_json((checkpoint.parent / "export.json").read_text())
    assert Path(result.file) == checkpoint.with_suffix(".onnx") and checkpoint.with_suffix(".onnx").is_file()
    assert result.parity.images_from == "test split" and result.parity.max_abs_diff <= 1e-4
    assert set(result.latency) == {"cpu_b1", "cpu_b32", "onnxruntime_cpu_b1", "onnxruntime_cpu_b32"}


def test_export_prints_a_table(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "deploy" / "slim.pt2"
    code, text = run_main(
        monkeypatch, capsys, "export", "--checkpoint", checkpoint, "--format", "exported-program", "--out", out,
        "--repeats", "1", "--quiet",
    )  # fmt: skip
    assert code in (0, None), text
    assert out.is_file() and (out.parent / "export.json").is_file()
    assert (
        "exported-program" in text and "max |diff| vs torch" in text and "ExportedProgram CPU latency, batch 32" in text
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "--format: Input should be 'onnx', 'torchscript' or 'exported-program'"),
        (["--tolerance", "0"], "--tolerance: Input should be greater than 0"),
    ],
)
def test_bad_options_are_one_message(checkpoint, monkeypatch, capsys, args, message) -> None:
    code, text = run_main(monkeypatch, capsys, "export", "--checkpoint", checkpoint, *args)
    assert code == 2 and message in text and "Traceback" not in text


def test_a_missing_checkpoint_is_one_message_without_traceback(tmp_path, monkeypatch, capsys) -> None:
    code, text = run_main(
        monkeypatch, capsys, "export", "--checkpoint", tmp_path / "nope.safetensors", "--data", "digits"
    )
    assert code == 2 and f"checkpoint {tmp_path / 'nope.safetensors'} does not exist" in text
    assert "Traceback" not in text and not (tmp_path / "nope.onnx").exists()
