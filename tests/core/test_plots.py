"""Every plot writes a readable PNG of sensible size on small synthetic inputs and leaves no figure open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from core.pipeline import plots
from core.pipeline.profiling import compare_models


def _check_png(path: Path, min_side: int = 300, max_side: int = 4000) -> np.ndarray:
    assert path.exists() and path.stat().st_size > 1000
    image = plt.imread(path)
    height, width = image.shape[:2]
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    assert image.std() > 0.01  # not a blank canvas
    assert plt.get_fignums() == []  # the figure was closed
    return image


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def test_backend_is_agg() -> None:
    assert plt.get_backend().lower() == "agg"


def _history(epochs: int = 6) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e + 0.05 * max(0, e - 4), "train_accuracy": 1 - 0.6 / e,
         "val_accuracy": 0.9 - 0.5 / e - 0.02 * max(0, e - 4), "lr": 0.1 * 0.8 ** e}
        for e in range(1, epochs + 1)
    ]


def test_training_curves(tmp_path: Path) -> None:
    out = plots.plot_training_curves(_history(), tmp_path / "sub" / "curves.png", "train: tiny cnn")
    assert out == tmp_path / "sub" / "curves.png"
    _check_png(out)


def test_training_curves_without_validation_or_lr(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": None, "train_accuracy": 0.5, "val_accuracy": None}
               for e in (1, 2)]
    _check_png(plots.plot_training_curves(history, tmp_path / "c.png", "no validation"))


@pytest.mark.parametrize("k", [3, 20, 30])
def test_confusion_matrix(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    matrix = (rng.integers(0, 5, (k, k)) + np.eye(k, dtype=int) * 30).tolist()
    matrix[0] = [0] * k  # a class with no test images
    _check_png(plots.plot_confusion_matrix(matrix, [f"class {i}" for i in range(k)], tmp_path / "cm.png", "cm"))


def test_roc_curves(tmp_path: Path) -> None:
    curves = {"a": ([0.0, 0.1, 1.0], [0.0, 0.8, 1.0]), "b": ([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])}
    _check_png(plots.plot_roc_curves(curves, tmp_path / "roc.png", "roc", auc={"a": 0.85, "b": None}))


def _names(n: int) -> list[str]:
    return ["relu"] + [f"layer{1 + i // 12}.{i % 12}" for i in range(n - 1)]


@pytest.mark.parametrize("n,found", [(6, True), (51, False)])
def test_ssim_curve(tmp_path: Path, n: int, found: bool) -> None:
    x = np.linspace(0, 1, n - 1)
    curves = {"cut": (0.3 + 0.4 * np.sqrt(x)).tolist(), "adjacent": (0.8 + 0.1 * x).tolist()}
    _check_png(plots.plot_ssim_curve(curves, 2, found, _names(n), "cut", tmp_path / "ssim.png", "ssim"))


@pytest.mark.parametrize("n", [5, 51])
def test_similarity_matrix(tmp_path: Path, n: int) -> None:
    i = np.arange(n)
    matrix = np.exp(-np.abs(i[:, None] - i[None, :]) / 5.0)
    _check_png(plots.plot_similarity_matrix(matrix, _names(n), tmp_path / "sim.png", "sim"))


def test_gbp_grid_color(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 4, 3, 16, 16))
    probes = rng.random((2, 3, 16, 16))
    _check_png(plots.plot_gbp_grid(maps, probes, _names(4), tmp_path / "gbp.png", "gbp", knee_index=1))


def test_gbp_grid_51_grayscale_does_not_explode(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((3, 51, 1, 32, 32)).astype(np.float32)
    probes = rng.random((3, 3, 32, 32)).astype(np.float32)
    image = _check_png(plots.plot_gbp_grid(maps, probes, _names(51), tmp_path / "gbp.png", "gbp", knee_index=9))
    assert image.shape[1] < 2600  # thinned to about 17 columns, not 51
    assert plots._grid_columns(51, 9) == sorted(set(plots._grid_columns(51, None)) | {9})
    assert len(plots._grid_columns(51, None)) == plots.MAX_GRID_COLUMNS


def test_gbp_grid_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plots.plot_gbp_grid(np.zeros((2, 3, 16, 16)), np.zeros((2, 3, 16, 16)), _names(3), tmp_path / "x.png", "x")


def _lat(ms: float, batch: int) -> dict:
    return {"median_ms": ms, "batch_size": batch, "device": "cpu", "device_type": "cpu"}


def test_comparison(tmp_path: Path) -> None:
    base = {"accuracy": 0.91, "macro_f1": 0.9, "params": 11_000_000, "macs": 1_800_000_000,
            "checkpoint_bytes": 45_000_000, "latency": {"cpu_b1": _lat(30.0, 1), "cpu_b32": _lat(600.0, 32)}}
    slim = {"accuracy": 0.89, "macro_f1": 0.88, "params": 700_000, "macs": 900_000_000,
            "checkpoint_bytes": 2_800_000, "latency": {"cpu_b1": _lat(20.0, 1), "cpu_b32": _lat(300.0, 32)}}
    _check_png(plots.plot_comparison(compare_models(base, slim), tmp_path / "cmp.png", "base vs slim"))
    base["latency"], slim["latency"] = {}, {}
    _check_png(plots.plot_comparison(compare_models(base, slim), tmp_path / "cmp2.png", "no latency"))


def test_thin_indices_keeps_knee_and_limits_count() -> None:
    ticks = plots.thin_indices(50, 26, keep=[9])
    assert 9 in ticks and len(ticks) <= 26 and 0 in ticks
    assert all(b - a >= 2 for a, b in zip(ticks, ticks[1:]))
    assert plots.thin_indices(5, 26) == [0, 1, 2, 3, 4]
