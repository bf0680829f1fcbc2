"""Every plot writes a readable PNG of sensible size on small synthetic inputs and leaves no figure open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from layercut.stages import plots
from layercut.stages.metrics import confused_pairs
from layercut.stages.profiling import compare_models


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
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "val_loss": 2.2 / e + 0.05 * max(0, e - 4),
            "train_accuracy": 1 - 0.6 / e,
            "val_accuracy": 0.9 - 0.5 / e - 0.02 * max(0, e - 4),
            "lr": 0.1 * 0.8**e,
        }
        for e in range(1, epochs + 1)
    ]


def test_training_curves(tmp_path: Path) -> None:
    out = plots.plot_training_curves(_history(), tmp_path / "sub" / "curves.png", "train: tiny cnn")
    assert out == tmp_path / "sub" / "curves.png"
    _check_png(out)


def test_training_curves_without_validation_or_lr(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": None, "train_accuracy": 0.5, "val_accuracy": None} for e in (1, 2)
    ]
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
    base = {
        "accuracy": 0.91,
        "macro_f1": 0.9,
        "params": 11_000_000,
        "macs": 1_800_000_000,
        "checkpoint_bytes": 45_000_000,
        "latency": {"cpu_b1": _lat(30.0, 1), "cpu_b32": _lat(600.0, 32)},
    }
    slim = {
        "accuracy": 0.89,
        "macro_f1": 0.88,
        "params": 700_000,
        "macs": 900_000_000,
        "checkpoint_bytes": 2_800_000,
        "latency": {"cpu_b1": _lat(20.0, 1), "cpu_b32": _lat(300.0, 32)},
    }
    _check_png(plots.plot_comparison(compare_models(base, slim), tmp_path / "cmp.png", "base vs slim"))
    base["latency"], slim["latency"] = {}, {}
    _check_png(plots.plot_comparison(compare_models(base, slim), tmp_path / "cmp2.png", "no latency"))


def test_thin_indices_keeps_knee_and_limits_count() -> None:
    ticks = plots.thin_indices(50, 26, keep=[9])
    assert 9 in ticks and len(ticks) <= 26 and 0 in ticks
    assert all(b - a >= 2 for a, b in zip(ticks, ticks[1:]))
    assert plots.thin_indices(5, 26) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- confusion matrix numbers


def test_row_percentages_by_hand() -> None:
    matrix = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    share = plots.row_percentages(matrix)
    np.testing.assert_allclose(share, [[75.0, 25.0, 0.0], [0.0, 0.0, 0.0], [25.0, 25.0, 50.0]])


def test_cell_text_shows_count_and_row_percentage() -> None:
    assert plots._cell_text(3, 75.0, False) == "3\n75%"
    assert plots._cell_text(1, 100 / 3, False) == "1\n33%"
    assert plots._cell_text(1, 0.2, False) == "1\n<1%"  # a real mistake never reads as 0%
    assert plots._cell_text(0, 0.0, False) == "0"
    assert plots._cell_text(0, 0.0, True) == "0"


# ----------------------------------------------------------------------------- confused pairs


def _labels_and_predictions() -> tuple[np.ndarray, np.ndarray]:
    """Hand-made: class 0 → 1 three times, 2 → 0 twice, 1 → 2 once; 12 images of 3 classes, 4 each."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    preds = np.array([1, 0, 1, 1, 1, 2, 1, 1, 0, 2, 0, 2])
    return labels, preds


def test_confused_pairs_picks_pairs_and_examples_by_value() -> None:
    labels, preds = _labels_and_predictions()
    pairs = confused_pairs(labels, preds, 3, top=5, examples=2)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [(0, 1, 3), (2, 0, 2), (1, 2, 1)]
    assert [p.examples for p in pairs] == [[0, 2], [8, 10], [5]]  # split order without confidences
    assert [p.share_of_true for p in pairs] == [0.75, 0.5, 0.25]
    assert confused_pairs(labels, preds, 3, top=1, examples=5)[0].examples == [0, 2, 3]


def test_confused_pairs_orders_examples_by_confidence_and_ties_by_share() -> None:
    labels, preds = _labels_and_predictions()
    confidence = np.linspace(0.1, 0.9, 12)
    confidence[2] = 0.95  # the most confident 0 → 1 mistake
    pairs = confused_pairs(torch.tensor(labels), torch.tensor(preds), 3, examples=3, confidences=confidence)
    assert pairs[0].examples == [2, 3, 0]
    assert pairs[1].examples == [10, 8]
    # equal counts: the larger share of the true class first (class 1 has 2 images, class 0 has 4)
    tie = confused_pairs([0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1], 2)
    assert [(p.true, p.predicted) for p in tie] == [(1, 0), (0, 1)]


def test_confused_pairs_without_mistakes_and_bad_input() -> None:
    assert confused_pairs([0, 1, 2], [0, 1, 2], 3) == []
    assert confused_pairs([], [], 3) == []
    with pytest.raises(ValueError):
        confused_pairs([0, 1], [0], 2)
    with pytest.raises(ValueError):
        confused_pairs([0, 3], [0, 1], 2)


def test_confused_pairs_picture(tmp_path: Path) -> None:
    labels, preds = _labels_and_predictions()
    rng = np.random.default_rng(0)
    images = torch.from_numpy((rng.random((12, 3, 32, 32)) * 255).astype(np.uint8))
    confidence = rng.random(12)
    pairs = confused_pairs(labels, preds, 3, confidences=confidence)
    _check_png(
        plots.plot_confused_pairs(
            pairs,
            images,
            ["cat", "dog", "owl"],
            tmp_path / "pairs.png",
            "most confused",
            confidences=confidence,
            total=12,
        )
    )
    gray = rng.random((12, 1, 32, 32))  # floats in [0, 1], one channel
    _check_png(plots.plot_confused_pairs(pairs[:1], gray, ["cat", "dog", "owl"], tmp_path / "one.png", "one pair"))


def test_confused_pairs_picture_without_mistakes_says_so(tmp_path: Path) -> None:
    image = _check_png(
        plots.plot_confused_pairs(
            [], np.zeros((3, 3, 32, 32), np.uint8), ["a", "b"], tmp_path / "none.png", "most confused", total=3
        ),
        min_side=200,
    )
    assert image.shape[0] < image.shape[1]  # one small banner, not an empty grid


# ----------------------------------------------------------------------------- class counts


@pytest.mark.parametrize("k", [3, 10, 100])
def test_class_counts(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    classes = [f"class {i}" for i in range(k)]
    per_split = {split: {c: int(rng.integers(1, 500)) for c in classes} for split in ("train", "val", "test")}
    image = _check_png(plots.plot_class_counts(per_split, tmp_path / "counts.png", "images per class"))
    assert image.shape[1] <= 20 * plots.DPI


def test_class_counts_with_an_empty_split(tmp_path: Path) -> None:
    per_split = {"train": {"a": 5, "b": 7}, "val": {"a": 0, "b": 0}, "test": {"a": 1, "b": 0}}
    _check_png(plots.plot_class_counts(per_split, tmp_path / "counts.png", "tiny"))


# ----------------------------------------------------------------------------- depth probes and the trade-off


def _probe_curve(n: int) -> list[float]:
    return (0.35 + 0.6 * (1 - np.exp(-5 * np.linspace(0, 1, n)))).tolist()


@pytest.mark.parametrize(
    "n,knee,threshold,base,probe_index",
    [
        (6, 3, 0.9, 0.95, 4),  # every mark
        (51, 50, 0.942, 0.952, 30),  # a ResNet-152: the knee is the whole network (one past the SSIM curve)
        (51, 9, None, None, None),  # the analysis alone: no budget, no base accuracy, no probe choice
        (4, 1, 0.99, 0.95, None),  # a minimum above the base: no band, no cut point's probe within it
    ],
)
def test_depth_probes(
    tmp_path: Path, n: int, knee: int, threshold: float | None, base: float | None, probe_index: int | None
) -> None:
    cut_curve = (0.3 + 0.4 * np.sqrt(np.linspace(0, 1, n - 1))).tolist()
    out = plots.plot_depth_probes(
        _probe_curve(n),
        cut_curve,
        _names(n),
        knee_index=knee,
        threshold=threshold,
        base_accuracy=base,
        probe_index=probe_index,
        path=tmp_path / "sub" / "probes.png",
        title="depth probes beside the SSIM cut curve",
    )
    assert out == tmp_path / "sub" / "probes.png"
    image = _check_png(out)
    assert image.shape[1] <= 14 * plots.DPI


def _candidate(index: int, name: str, depth: float, val: float, within: bool, probe: float | None = 0.8):
    from layercut.contracts.results import Candidate
    from layercut.contracts.spec import CutPointRef

    return Candidate(
        cut_point=CutPointRef(index=index, name=name),
        reasons=["sweep"],
        params=int(60e6 * depth**1.5) + 9000,
        macs=int(11e9 * depth) + 120_000,
        latency_ms=1 + 80 * depth,
        val_accuracy=val,
        val_macro_f1=val - 0.02,
        accuracy=val - 0.005,
        macro_f1=val - 0.025,
        probe_accuracy=probe,
        within_budget=within,
        epochs_run=3,
        seconds=10.0,
        folder=f"candidates/cut-{index:02d}-{name}",
    )


def _budget():
    from layercut.contracts.results import Budget

    return Budget(
        description="at most 1 point of validation accuracy below the base",
        max_drop=1.0,
        min_accuracy=None,
        base_val_accuracy=0.952,
        threshold=0.942,
    )


def _rules(knee: tuple[int, str] | None, probe: tuple[int, str] | None, auto: tuple[int, str] | None = None):
    from layercut.contracts.results import OtherRules
    from layercut.contracts.spec import CutPointRef

    def ref(pair: tuple[int, str] | None) -> CutPointRef | None:
        return CutPointRef(index=pair[0], name=pair[1]) if pair else None

    return OtherRules(knee=ref(knee or (0, "relu")), knee_reason=None, probe=ref(probe), auto=ref(auto))


def test_trade_off_of_an_auto_search(tmp_path: Path) -> None:
    names = _names(12)
    candidates = [
        _candidate(7, names[7], 0.3, 0.948, True),
        _candidate(5, names[5], 0.2, 0.931, False, probe=None),  # in the order retrained, not by size
    ]
    rules = _rules((7, names[7]), (5, names[5]), auto=(7, names[7]))
    out = plots.plot_trade_off(
        candidates, _budget(), rules, tmp_path / "sub" / "trade_off.png", "auto", probe={5: 0.9, 7: 0.92}
    )
    assert out == tmp_path / "sub" / "trade_off.png"
    _check_png(out)


def test_trade_off_of_a_large_sweep(tmp_path: Path) -> None:
    from layercut.contracts.results import SweepBase

    names = _names(51)
    curve = _probe_curve(51)
    candidates = []
    for i in range(51):
        val = 0.952 - 0.55 * np.exp(-9 * (i + 1) / 51) + 0.004 * np.sin(i)
        candidates.append(_candidate(i, names[i], (i + 1) / 51, float(val), bool(val >= 0.942), curve[i]))
    smallest = next(c.cut_point for c in candidates if c.within_budget)
    base = SweepBase(
        params=60_200_000,
        macs=11_500_000_000,
        latency_ms=90.0,
        val_accuracy=0.952,
        val_macro_f1=0.95,
        accuracy=0.947,
        macro_f1=0.945,
    )
    rules = _rules((50, names[50]), (30, names[30]), auto=(smallest.index, smallest.name))
    image = _check_png(
        plots.plot_trade_off(
            candidates,
            _budget(),
            rules,
            tmp_path / "trade_off.png",
            "sweep",
            base=base,
            probe=dict(enumerate(curve)),
            chosen=smallest,
        )
    )
    assert image.shape[1] <= 14 * plots.DPI
    positions = np.linspace(0, 1, 51).tolist()
    named = plots._labelled_points(positions, first=[50, 20], min_gap=0.045)
    assert {20, 50} <= set(named) and len(named) <= plots.MAX_POINT_LABELS
    assert all(
        b - a >= 0.045 for a, b in zip(sorted(positions[i] for i in named), sorted(positions[i] for i in named)[1:])
    )


def test_trade_off_of_one_candidate_without_rules_or_probes(tmp_path: Path) -> None:
    """One candidate below a minimum accuracy, no probe curve, no auto choice, a knee that was not retrained."""
    from layercut.contracts.results import Budget

    budget = Budget(
        description="validation accuracy at least 97.5 %",
        max_drop=None,
        min_accuracy=97.5,
        base_val_accuracy=0.96,
        threshold=0.975,
    )
    candidate = _candidate(3, "layer1.2", 0.1, 0.5, False, probe=None).model_copy(update={"macs": 0, "params": 0})
    _check_png(plots.plot_trade_off([candidate], budget, _rules((9, "layer1.8"), None), tmp_path / "one.png", "one"))
