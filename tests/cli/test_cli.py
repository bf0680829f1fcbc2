"""The `layercut` command end to end: the real entry point in a subprocess, tiny models and 32 px images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from kneed import KneeLocator
from PIL import Image

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "paper_ssim_cut"
TINY = ["--arch", "smallcnn", "--image-size", "32", "--epochs", "1", "--quiet"]


def layercut(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layercut.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def layercut_each(*commands: tuple) -> list[subprocess.CompletedProcess]:
    """``layercut(*command)`` for independent commands, two at a time (each process spends seconds importing)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda command: layercut(*command), commands))


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    message = " ".join(result.stderr.split())  # rich may wrap long lines
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@dataclass
class LoggedRun:
    """A run whose stderr went to a file, as in a log or CI: each line with the seconds after the start at which
    it appeared in the file."""

    lines: list[tuple[float, str]]
    seconds: float


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, dict, LoggedRun]:
    """`layercut run` on the tiny model with progress on (no --quiet) and stderr redirected to a file."""
    out = tmp_path_factory.mktemp("run")
    log_path = out.parent / f"{out.name}.stderr.log"
    tiny = [arg for arg in TINY if arg != "--quiet"]
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "layercut.cli.main",
                "run",
                "--data",
                "textures",
                *tiny,
                "--out",
                out,
                "--json",
                "--export",
                "onnx",
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        stdout_chunks: list[str] = []
        reader = threading.Thread(target=lambda: stdout_chunks.append(process.stdout.read()), daemon=True)
        reader.start()
        lines: list[tuple[float, str]] = []
        seen = ""
        while True:
            finished = process.poll() is not None
            text = log_path.read_text()
            complete = text[: text.rfind("\n") + 1]
            for line in complete[len(seen) :].splitlines():
                lines.append((time.monotonic() - started, line))
            seen = complete
            if finished:
                break
            assert time.monotonic() - started < 600, "the tiny run took more than 10 minutes"
            time.sleep(0.1)
        reader.join(timeout=10)
    assert process.returncode == 0, log_path.read_text()
    return out, json.loads("".join(stdout_chunks)), LoggedRun(lines, time.monotonic() - started)


@pytest.fixture(scope="module")
def tiny_run(logged_run) -> tuple[Path, dict]:
    out, summary, _ = logged_run
    return out, summary


def test_progress_in_a_log_file_is_plain_lines_never_silent_for_10_s(logged_run) -> None:
    """With stderr redirected to a file, progress arrives as plain lines while the run runs: the first within 10 s
    of the start, then never 10 s without one, each whole (no bar characters, carriage returns or colour codes),
    every stage named."""
    _, _, logged = logged_run
    assert logged.lines, "no progress at all"
    times = [0.0] + [at for at, _ in logged.lines]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert logged.lines[0][0] < 10, f"first line after {logged.lines[0][0]:.1f} s"
    assert max(gaps) < 10, f"silent for {max(gaps):.1f} s: {logged.lines}"
    text = "\n".join(line for _, line in logged.lines)
    assert "\r" not in text and "\x1b" not in text and "━" not in text
    for stage in ("start", "data", "train", "analyze", "select", "compare", "explain", "report"):
        assert re.search(rf"\] {stage}\s+\d+\.\d%", text), f"no line for {stage}: {text}"
    assert any("ETA" in line for _, line in logged.lines)


def test_run_json_has_every_field(tiny_run) -> None:
    _, summary = tiny_run
    for side in ("base", "slim"):
        for key in ("accuracy", "macro_f1", "params", "macs", "checkpoint_bytes", "latency_ms"):
            assert key in summary[side], (side, key)
        assert 0.0 <= summary[side]["accuracy"] <= 1.0
    assert isinstance(summary["cut_point"]["index"], int)
    assert isinstance(summary["cut_point"]["name"], str)
    assert isinstance(summary["knee_found"], bool)
    assert summary["slim"]["params"] < summary["base"]["params"]
    assert {"cpu_b1", "cpu_b32"} <= set(summary["base"]["latency_ms"])


def test_run_exports_the_slim_model_when_asked(tiny_run) -> None:
    """`run --export onnx`: the slim model as ONNX in export/, checked against torch, named in run.json."""
    import onnxruntime

    out, summary = tiny_run
    assert summary["outputs"]["export"] == str(out / "export" / "model.onnx")
    record = json.loads((out / "export" / "export.json").read_text())
    assert record["cut_point"]["name"] == summary["cut_point"]["name"] and record["parity"]["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(out / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_run_writes_checkpoints_analysis_and_pictures(tiny_run) -> None:
    out, summary = tiny_run
    for name in (
        "run.json",
        "base/model.safetensors",
        "base/metrics.json",
        "base/training_curves.png",
        "base/confusion_matrix.png",
        "base/roc_curves.png",
        "analysis/analysis.json",
        "analysis/gbp_maps.npz",
        "analysis/ssim_curve.png",
        "analysis/similarity_matrix.png",
        "analysis/gbp_grid.png",
        "analysis/depth_probes.png",
        "select/select.json",
        "select/trade_off.png",
        "select/depth_probes.png",
        "select/model.safetensors",
        "slim/initial.safetensors",
        "slim/truncate.json",
        "slim/model.safetensors",
        "slim/metrics.json",
        "compare/compare.json",
        "compare/compare.png",
        "explain/explain.json",
        "explain/explain_maps.npz",
        *summary["explain"]["figures"].values(),
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert summary["explain"]["layers"] == {"base": "features.14", "slim": summary["cut_point"]["name"]}
    assert "explain/base_vs_slim.png" in summary["explain"]["figures"].values()
    report = (out / "report.html").read_text()  # the self-contained page (its content: tests/core/test_report.py)
    assert summary["outputs"]["report"] == str(out / "report.html") and "not run yet" not in report.lower()
    assert report.count("data:image/png;base64,") >= 15 and "http://" not in report and "https://" not in report
    analysis = json.loads((out / "analysis/analysis.json").read_text())
    n_points = len(analysis["cut_points"])
    assert n_points == 4  # smallcnn: one per ReLU
    assert np.array(analysis["similarity_matrix"]).shape == (n_points, n_points)
    assert len(analysis["curves"]["cut"]) == len(analysis["curves"]["adjacent"]) == n_points - 1
    assert analysis["knee"]["found"] == analysis["knee_found"] == summary["knee_found"]
    assert analysis["cut_point"]["name"] == summary["rules"]["knee"]["name"]  # the knee; the auto rule may differ
    for key in ("rule",):
        assert key in analysis["gbp"]
    assert analysis["ssim"]["data_range"] == 1.0 and analysis["ssim"]["win_size"] == 7
    with np.load(out / "analysis/gbp_maps.npz") as maps:
        probes = analysis["probes"]["count"]
        assert probes == 12  # 4 per class, 3 classes
        assert maps["maps"].shape == (probes, n_points, 3, 32, 32) and maps["maps"].dtype == np.float32
        assert maps["probe_images"].shape == (probes, 3, 32, 32)
    memory = analysis["memory"]
    assert memory["budget_mb"] is None and memory["batch_size"] == analysis["gbp"]["batch_size"] == 12
    assert 0 < memory["gbp_graph_mb_per_image"] < memory["estimated_peak_mb"]
    assert memory["resident_at_start_mb"] <= memory["peak_resident_mb"]
    metrics = json.loads((out / "base/metrics.json").read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "confusion_matrix",
        "per_class",
        "roc_auc_macro",
        "most_confused",
    ):
        assert key in metrics["test"], key
    assert len(metrics["history"]) == 1


def test_run_cuts_by_the_accuracy_budget_and_says_what_every_rule_chose(tiny_run) -> None:
    out, summary = tiny_run
    selection = json.loads((out / "select/select.json").read_text())
    assert summary["cut_point"]["chosen_by"] == "auto"
    assert summary["cut_point"]["name"] == selection["cut_point"]["name"] == summary["rules"]["auto"]["name"]
    analysis = json.loads((out / "analysis/analysis.json").read_text())
    assert summary["rules"]["knee"]["name"] == analysis["cut_point"]["name"]
    assert len(analysis["depth_probes"]["points"]) == len(analysis["cut_points"])
    assert summary["selection"]["within_budget"] == selection["within_budget"]
    assert summary["verdict"].startswith(
        "Kept the accuracy" if selection["within_budget"] else "No slim model kept the accuracy"
    )
    retrained = {c["cut_point"]["name"] for c in selection["candidates"]}
    assert summary["cut_point"]["name"] in retrained
    for candidate in selection["candidates"]:  # every candidate is kept with its model and pictures
        assert (Path(candidate["folder"]) / "model.safetensors").is_file()
        assert (Path(candidate["folder"]) / "training_curves.png").is_file()
    chosen = next(c for c in selection["candidates"] if c["cut_point"] == selection["cut_point"])
    assert json.loads((out / "slim/metrics.json").read_text())["best_val_accuracy"] == chosen["val_accuracy"]


def test_a_memory_budget_too_small_for_one_image_is_refused_up_front(tiny_run, tmp_path: Path) -> None:
    out, _ = tiny_run
    checkpoint = out / "base/model.safetensors"
    refused = layercut("analyze", "--checkpoint", checkpoint, "--out", tmp_path / "refused", "--memory-budget", "256")
    assert_clean_error(refused, "memory budget of 256 MiB", "already in use by the process", "--memory-budget")
    assert not (tmp_path / "refused").exists()


def test_knee_command_repicks_from_an_analysis(tiny_run) -> None:
    out, _ = tiny_run
    analysis = json.loads((out / "analysis/analysis.json").read_text())
    result = layercut("knee", "--curve", out / "analysis/analysis.json", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["chosen"] == analysis["cut_point"]["index"]
    assert payload["cut_point"] == analysis["cut_point"]["name"]


def test_stages_one_by_one(tmp_path: Path) -> None:
    """Every stage as its own command, and their refusals; commands that need only what is already made run two
    at a time (each process spends seconds importing)."""
    base, analysis, slim = tmp_path / "base", tmp_path / "analysis", tmp_path / "slim"
    checkpoint = base / "model.safetensors"
    assert layercut("train", "--data", "textures", *TINY, "--out", base).returncode == 0
    analyzed, truncated, no_analysis, auto_truncate, bad_every, bad_name = layercut_each(
        ("analyze", "--checkpoint", checkpoint, "--out", analysis, "--max-probes", "6", "--curve", "adjacent")
        + ("--quiet", "--json"),
        (
            "truncate",
            "--checkpoint",
            checkpoint,
            "--cut",
            "features.6",
            "--out",
            slim / "initial.safetensors",
            "--json",
        ),
        ("truncate", "--checkpoint", checkpoint, "--out", tmp_path / "x.safetensors"),
        ("truncate", "--checkpoint", checkpoint, "--cut", "auto", "--out", tmp_path / "x.safetensors"),
        ("sweep", "--checkpoint", checkpoint, "--cuts", "every:x", "--out", tmp_path / "s2"),
        ("sweep", "--checkpoint", checkpoint, "--cuts", "3,nowhere", "--out", tmp_path / "s3"),
    )
    assert analyzed.returncode == 0, analyzed.stderr
    assert json.loads(analyzed.stdout)["probes"]["count"] == 6
    assert truncated.returncode == 0, truncated.stderr
    assert json.loads(truncated.stdout)["cut_point"] == {"index": 1, "name": "features.6"}
    # --cut knee needs the analysis; the auto cut is its own command; a sweep's cut points are checked
    assert_clean_error(no_analysis, "--analysis")
    assert_clean_error(auto_truncate, "layercut select")
    assert_clean_error(bad_every, "every:K")
    assert_clean_error(bad_name, "nowhere")
    result = layercut(
        "retrain", "--checkpoint", slim / "initial.safetensors", "--out", slim, "--epochs", "1", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    compared, truncated_again, selected_run, swept_run = layercut_each(
        ("compare", "--base", checkpoint, "--slim", slim / "model.safetensors", "--out", tmp_path / "compare")
        + ("--repeats", "2", "--no-onnxruntime", "--quiet", "--json"),
        ("truncate", "--checkpoint", slim / "model.safetensors", "--cut", "0", "--out", tmp_path / "x.safetensors"),
        # the auto cut and the sweep, one command each
        ("select", "--checkpoint", checkpoint, "--analysis", analysis / "analysis.json", "--out", tmp_path / "select")
        + ("--min-accuracy", "100", "--max-retrains", "2", "--epochs", "1", "--quiet"),
        ("sweep", "--checkpoint", checkpoint, "--cuts", "every:2", "--out", tmp_path / "sweep", "--epochs", "1")
        + ("--quiet", "--json"),
    )
    assert compared.returncode == 0, compared.stderr
    comparison = json.loads(compared.stdout)
    assert comparison["slim"]["cut_point"]["name"] == "features.6"
    assert comparison["slim"]["latency"] and not any(
        label.startswith("onnxruntime") for label in comparison["slim"]["latency"]
    )
    assert_clean_error(truncated_again, "already a slim model")  # a slim model cannot be truncated again
    assert selected_run.returncode == 0, selected_run.stderr
    assert "No slim model kept the accuracy" in " ".join(selected_run.stdout.split())  # out of reach: said plainly
    selected = json.loads((tmp_path / "select/select.json").read_text())
    assert len(selected["candidates"]) == 2 and selected["within_budget"] is False and selected["shortfall"] > 0
    assert swept_run.returncode == 0, swept_run.stderr
    swept = json.loads(swept_run.stdout)
    assert [c["cut_point"]["index"] for c in swept["candidates"]] == [0, 2, 3]  # every second, and the last
    assert swept["rules"]["knee"] is None and (tmp_path / "sweep/trade_off.png").is_file()


def test_layers_lists_resnet152s_51_cut_points() -> None:
    result = layercut("layers", "--arch", "resnet152", "--image-size", "224", "--json")
    assert result.returncode == 0, result.stderr
    points = json.loads(result.stdout)["cut_points"]
    assert len(points) == 51
    assert points[0] == {"index": 0, "name": "relu", "module": "ReLU", "channels": 64, "height": 112, "width": 112}
    assert points[-1]["name"] == "layer4.2" and points[-1]["channels"] == 2048 and points[-1]["height"] == 7


def test_curve_reproduces_the_paper_csv() -> None:
    result = layercut("curve", "--maps", FIXTURE / "maps", "--mode", "cut", "--data-range", "2", "--json")
    assert result.returncode == 0, result.stderr
    expected = np.loadtxt(FIXTURE / "ssim_cut_expected.csv")
    np.testing.assert_allclose(json.loads(result.stdout)["curve"], expected, rtol=0, atol=1e-5)


def test_knee_command_matches_kneed_and_reports_no_knee(tmp_path: Path) -> None:
    values = [0.40, 0.55, 0.64, 0.70, 0.73, 0.75, 0.76, 0.765, 0.77]
    (tmp_path / "curve.json").write_text(json.dumps(values))
    payload = json.loads(layercut("knee", "--curve", tmp_path / "curve.json", "--json").stdout)
    x = list(range(len(values)))
    assert payload["knee"] == KneeLocator(x, values, curve="concave", direction="increasing", S=1.0).knee
    (tmp_path / "line.json").write_text(json.dumps({"curve": [0.1 * i for i in range(8)]}))
    payload = json.loads(layercut("knee", "--curve", tmp_path / "line.json", "--json").stdout)
    assert payload["knee"] is None and payload["reason"] and payload["rule"].startswith("fallback")


def _write_png(path: Path, size: int = 36, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def _class_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _write_png(root / name / f"{i}.png", value=40 * (list(classes).index(name) + 1))
    return root


def test_bad_data_gives_clear_messages(tmp_path: Path) -> None:
    empty = _class_folder(tmp_path / "empty", {"cats": 6, "dogs": 6})
    (empty / "birds").mkdir()
    single = _class_folder(tmp_path / "single", {"cats": 6})
    corrupt = _class_folder(tmp_path / "corrupt", {"cats": 8, "dogs": 8})
    (corrupt / "dogs" / "broken.png").write_bytes(b"definitely not a png")
    mixed = _class_folder(tmp_path / "mixed", {"cats": 8, "dogs": 8})
    _write_png(mixed / "cats" / "big.png", size=50)
    cases = [
        (("run", "--data", empty, *TINY, "--out", tmp_path / "o1"), ("birds",)),
        (("run", "--data", single, *TINY, "--out", tmp_path / "o2"), ("class",)),
        (("train", "--data", corrupt, *TINY, "--out", tmp_path / "o3"), ("broken.png",)),
        (("train", "--data", mixed, *TINY, "--out", tmp_path / "o4"), ("big.png", "--allow-mixed-sizes")),
        (("run", "--data", tmp_path / "nowhere", *TINY, "--out", tmp_path / "o5"), ("nowhere",)),
    ]
    for result, (_, fragments) in zip(layercut_each(*(command for command, _ in cases)), cases, strict=True):
        assert_clean_error(result, *fragments)

    skipped = layercut("train", "--data", corrupt, *TINY, "--out", tmp_path / "o3", "--skip-unreadable", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(skipped.stdout)["data"]["skipped"]["count"] == 1


def test_bad_options_give_clear_messages(tmp_path: Path) -> None:
    cases = [
        (("train", "--arch", "resnet9000", "--out", tmp_path), ("unknown architecture", "resnet18")),
        (("train", "--optimizer", "adagrad", "--out", tmp_path), ("--optimizer",)),
        (("train", "--image-size", "16", "--out", tmp_path), ("--image-size",)),
        (("analyze", "--checkpoint", tmp_path / "none.safetensors", "--out", tmp_path), ("does not exist",)),
        (("curve", "--maps", tmp_path / "no-maps"), ("no-maps",)),
        (
            (
                "train",
                "--pretrained",
                "--arch",
                "resnet18",
                "--out",
                tmp_path,
                "--data",
                "textures",
                "--image-size",
                "32",
            ),
            ("pretrained weights", "TORCH_HOME"),
        ),
    ]
    for result, (_, fragments) in zip(layercut_each(*(command for command, _ in cases)), cases, strict=True):
        assert_clean_error(result, *fragments)


def test_every_command_has_help() -> None:
    commands = (
        "run",
        "train",
        "analyze",
        "truncate",
        "retrain",
        "select",
        "sweep",
        "compare",
        "layers",
        "curve",
        "knee",
    )
    for command, result in zip(commands, layercut_each(*((command, "--help") for command in commands)), strict=True):
        assert result.returncode == 0 and "Usage" in result.stdout, command
