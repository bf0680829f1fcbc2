"""The options of `layercut`: --version, defaults and help taken from the config models, the architectures in
--help, `run --config` (YAML and TOML, the command line winning), and settings read through layercut.settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel

import layercut
import layercut.local
from layercut.cli.main import app, main
from layercut.contracts.configs import (
    ARCHITECTURE_NAMES,
    AnalyzeConfig,
    CompareConfig,
    DataConfig,
    ExplainConfig,
    TrainConfig,
    TruncateConfig,
)
from layercut.contracts.errors import LayercutError


def layercut_command(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, on a wide terminal so that help text is not folded mid-sentence."""
    return subprocess.run(
        [sys.executable, "-m", "layercut.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def plain(help_text: str) -> str:
    """Help text without rich's box characters and line breaks, so that wrapped sentences read whole."""
    return " ".join(help_text.replace("│", " ").split())


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `layercut *args` in this process; its exit status and its stdout and stderr on one line."""
    monkeypatch.setattr(sys, "argv", ["layercut", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, " ".join((captured.err + captured.out).split())


class Recorded(BaseModel):
    """What the recording pipeline returns in place of a RunSummary: a model, which `--json` prints."""

    recorded: bool = True


@pytest.fixture
def pipeline_calls(monkeypatch) -> list[dict]:
    """Replace the pipeline by a recorder of what `layercut run` asked for (no training)."""
    calls: list[dict] = []

    def record(data, arch, out_dir, **configs):
        calls.append({"data": data, "arch": arch, "out": Path(out_dir), **configs})
        return Recorded()

    monkeypatch.setattr(layercut.local, "run_pipeline", record)
    return calls


def test_version_prints_the_package_version() -> None:
    result = layercut_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"layercut {layercut.__version__}\n"


@pytest.mark.parametrize("command", ["run", "train", "layers"])
def test_help_of_commands_with_arch_lists_the_architectures(command: str) -> None:
    result = layercut_command(command, "--help")
    assert result.returncode == 0, result.stderr
    text = plain(result.stdout)
    for name in ARCHITECTURE_NAMES:
        assert f" {name}," in text or f" {name} " in text, name


def test_run_help_shows_defaults_and_help_of_the_config_models() -> None:
    text = plain(layercut_command("run", "--help").stdout)
    for model, field in ((TrainConfig, "epochs"), (TrainConfig, "weight_decay"), (AnalyzeConfig, "max_probes")):
        info = model.model_fields[field]
        assert f"{info.description} [default: {info.default}]" in text, field
    assert "--config" in text and "YAML" in text and "TOML" in text and "image_size" in text


OPTIONS_FROM_FIELDS = [
    ("run", "epochs", TrainConfig, "epochs"),
    ("run", "image_size", DataConfig, "image_size"),
    ("run", "probes_per_class", AnalyzeConfig, "probes_per_class"),
    ("run", "cut", TruncateConfig, "cut"),
    ("run", "explain_images", ExplainConfig, "images"),
    ("train", "batch_size", TrainConfig, "batch_size"),
    ("train", "skip_unreadable", DataConfig, "skip_unreadable"),
    ("analyze", "data_range", AnalyzeConfig, "ssim_data_range"),
    ("analyze", "batch_size", AnalyzeConfig, "batch_size"),
    ("truncate", "dropout", TruncateConfig, "dropout"),
    ("retrain", "label_smoothing", TrainConfig, "label_smoothing"),
    ("compare", "repeats", CompareConfig, "latency_repeats"),
    ("compare", "onnxruntime", CompareConfig, "onnxruntime"),
    ("run", "onnxruntime", CompareConfig, "onnxruntime"),
    ("explain", "feature_maps", ExplainConfig, "feature_maps"),
    ("explain", "batch_size", ExplainConfig, "batch_size"),
    ("knee", "sensitivity", AnalyzeConfig, "knee_sensitivity"),
    ("curve", "mode", AnalyzeConfig, "curve"),
]


@pytest.mark.parametrize("command, param_name, model, field", OPTIONS_FROM_FIELDS)
def test_options_take_default_and_help_from_their_field(command, param_name, model, field) -> None:
    param = next(p for p in typer.main.get_command(app).commands[command].params if p.name == param_name)
    info = model.model_fields[field]
    assert param.default == info.default
    assert param.help.startswith(info.description)


def test_run_reads_a_yaml_config_and_the_command_line_wins(tmp_path, monkeypatch, capsys, pipeline_calls) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "arch: smallcnn\nimage-size: 32\nepochs: 3\nretrain_epochs: 2\naugment: false\n"
        "explain-methods: [gradcam, saliency]\nout: from-file\n"
    )
    code, text = run_main(monkeypatch, capsys, "run", "--config", config, "--epochs", "1", "--quiet", "--json")
    assert code in (0, None), text
    assert json.loads(text) == {"recorded": True}
    (call,) = pipeline_calls
    assert call["arch"] == "smallcnn" and call["data"].image_size == 32 and call["out"] == Path("from-file")
    assert call["train"].epochs == 1  # the command line overrides the file
    assert call["retrain"].epochs == 2 and call["train"].augment is False
    assert call["explain"].methods == ["gradcam", "saliency"]


def test_run_reads_a_toml_config(tmp_path, monkeypatch, capsys, pipeline_calls) -> None:
    config = tmp_path / "run.toml"
    config.write_text('data = "digits"\nimage_size = 40\nmax-probes = 6\nquiet = true\njson = true\n')
    code, text = run_main(monkeypatch, capsys, "run", "--config", config, "--image-size", "48")
    assert code in (0, None), text
    (call,) = pipeline_calls
    assert call["data"].source == "digits" and call["data"].image_size == 48
    assert call["analyze"].max_probes == 6 and call["train"].epochs == TrainConfig.model_fields["epochs"].default


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("unknown.yaml", "epochs: 2\nepoch: 3\n", "'epoch' is not an option of `layercut run`; did you mean 'epochs'?"),
        ("bad.yaml", "epochs: many\n", "epochs: 'many' is not a valid int"),
        ("bad.toml", 'optimizer = "adagrad"\n', "--optimizer: Input should be 'adam' or 'sgd'"),
        ("broken.toml", "epochs = \n", "is not valid TOML"),
        ("list.yaml", "- epochs\n", "expected a mapping of option names to values"),
        ("run.json", "{}", "give a .yaml, .yml or .toml file"),
    ],
)
def test_a_bad_config_file_is_one_clean_line(
    tmp_path, monkeypatch, capsys, pipeline_calls, name, content, message
) -> None:
    config = tmp_path / name
    config.write_text(content)
    code, text = run_main(monkeypatch, capsys, "run", "--config", config, "--quiet")
    assert code == 2 and message in text and "Traceback" not in text, text
    assert text.startswith("error:") and not pipeline_calls


def test_a_bad_config_file_through_the_real_entry_point(tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("frobnicate: 1\n")
    result = layercut_command("run", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'frobnicate' is not an option of `layercut run`" in " ".join(result.stderr.split())


def test_data_root_is_recorded_only_when_given(tmp_path, monkeypatch, capsys, pipeline_calls) -> None:
    """--data-root goes into the run's DataConfig (and so its checkpoints) only when the user gives it; otherwise
    the machine's folder comes from the settings when the data is read (layercut.local.read_data)."""
    monkeypatch.setenv("LAYERCUT_DATA_ROOT", str(tmp_path / "datasets"))
    assert run_main(monkeypatch, capsys, "run", "--quiet", "--json")[0] in (0, None)
    assert run_main(monkeypatch, capsys, "run", "--data-root", "elsewhere", "--quiet", "--json")[0] in (0, None)
    assert [call["data"].data_root for call in pipeline_calls] == [None, "elsewhere"]


def test_reading_data_uses_the_settings_folder_and_download_permission(tmp_path, monkeypatch) -> None:
    import layercut.local

    seen: list[dict] = []
    monkeypatch.setattr(layercut.local, "load_stage_data", lambda config, reporter, **kw: seen.append(kw))
    monkeypatch.setenv("LAYERCUT_DATA_ROOT", str(tmp_path / "datasets"))
    monkeypatch.setenv("LAYERCUT_NO_DOWNLOAD", "1")
    layercut.local.read_data(DataConfig(source="cifar10"))
    assert seen == [{"data_root": tmp_path / "datasets", "allow_download": False}]


def test_debug_setting_shows_the_error_itself(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LAYERCUT_DEBUG", "true")  # read through Settings: any pydantic boolean
    monkeypatch.setattr(sys, "argv", ["layercut", "curve", "--maps", str(tmp_path / "no-maps")])
    with pytest.raises(LayercutError, match="no-maps"):
        main()
    monkeypatch.setenv("LAYERCUT_DEBUG", "0")
    code, text = run_main(monkeypatch, capsys, "curve", "--maps", tmp_path / "no-maps")
    assert code == 2 and "no-maps" in text


FAST_CHECK = """
import sys
from layercut.cli.main import main
sys.argv = ["layercut", *sys.argv[1:]]
try:
    main()
except SystemExit as exit_info:
    print("exit", exit_info.code, "torch imported" if "torch" in sys.modules else "torch not imported")
"""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["run", "--arch", "resnet81"], "unknown architecture 'resnet81'"),
        (["run", "--data", "no/such/folder"], "neither an existing folder nor a known dataset"),
        (["train", "--data", "cifar1O"], "neither an existing folder nor a known dataset"),
        (["run", "--max-drop", "-1"], "--max-drop"),
        (["run", "--sweep", "every:0"], "--sweep"),
        (["analyze", "base.safetensors", "--data", "nowhere"], "neither an existing folder nor a known dataset"),
    ],
)
def test_argument_errors_fail_before_torch_is_imported(tmp_path, args, said) -> None:
    """A wrong architecture, data source or budget is refused before anything heavy is imported (so in well under
    2 s), with the message that says what to fix, and nothing is written."""
    done = subprocess.run(
        [sys.executable, "-c", FAST_CHECK, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.stdout.strip().endswith("exit 2 torch not imported"), (done.stdout, done.stderr)
    assert said in plain(done.stderr), done.stderr
    assert not list(tmp_path.iterdir()), "nothing written"


def test_a_wrong_cut_point_fails_before_the_data_is_read(tmp_path) -> None:
    """A cut point the architecture does not have is refused before any data is read or model trained, naming the
    cut points there are, and the run folder is not made."""
    out = tmp_path / "run"
    done = layercut_command("run", "--arch", "resnet18", "--cut", "layer9.0", "--out", str(out), "--epochs", "1")
    assert done.returncode == 2, done.stderr
    assert "no cut point named 'layer9.0'" in done.stderr and "layer4.1" in done.stderr
    assert "data" not in done.stderr.split("error:")[0], "the data stage never started"
    assert not out.exists()
    done = layercut_command("run", "--arch", "smallcnn", "--sweep", "0,99", "--out", str(out))
    assert done.returncode == 2 and "cut point index 99 is out of range" in done.stderr, done.stderr
    assert not out.exists()


def test_python_run_checks_its_inputs_before_the_data(tmp_path) -> None:
    """``lc.run`` and ``run_pipeline`` refuse a cut point the architecture lacks, or missing pretrained weights,
    before the data stage reports anything."""
    from layercut.stages.progress import Reporter

    updates: list[str] = []
    reporter = Reporter(callback=lambda stage, fraction, message: updates.append(stage))
    with pytest.raises(LayercutError, match="no cut point named 'nope'"):
        layercut.run(tmp_path / "run", arch="smallcnn", cut="nope", reporter=reporter)
    with pytest.raises(LayercutError, match="smallcnn has no pretrained weights"):
        layercut.local.run_pipeline(DataConfig(), "smallcnn", tmp_path / "run", pretrained=True, reporter=reporter)
    assert updates == [] and not (tmp_path / "run").exists()


def test_run_times_torch_only_with_no_onnxruntime(monkeypatch, capsys, pipeline_calls) -> None:
    code, _ = run_main(monkeypatch, capsys, "run", "--arch", "smallcnn", "--no-onnxruntime", "--quiet", "--json")
    assert code == 0 and pipeline_calls[-1]["compare"].onnxruntime is False
    code, _ = run_main(monkeypatch, capsys, "run", "--arch", "smallcnn", "--quiet", "--json")
    assert code == 0 and pipeline_calls[-1]["compare"].onnxruntime is True
