"""The pictures every stage writes: training curves, confusion matrix, ROC, most-confused pairs, class counts per
split, SSIM curve and matrix, GBP grid, depth probes, comparison, and the trade-off of retrained cuts.

Matplotlib runs on the Agg backend (set here, before pyplot is imported) so plotting works on headless
workers. Every function writes one PNG, closes its figure and returns the path it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must come after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    from layercut.contracts.results import Budget, Candidate, OtherRules, SweepBase
    from layercut.contracts.spec import CutPointRef
    from layercut.stages.metrics import ConfusedPair

DPI = 120
MAX_TICK_LABELS = 26
MAX_GRID_COLUMNS = 16
MAX_ANNOTATED_CLASSES = 20
BASE_COLOR = "#4C72B0"
SLIM_COLOR = "#DD8452"
TEST_COLOR = "#55A868"
SPLIT_COLORS = {"train": BASE_COLOR, "val": SLIM_COLOR, "test": TEST_COLOR}
MAX_COUNTED_CLASSES = 30
KNEE_COLOR = "#C44E52"


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG (creating the folder), close it and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    plt.close(fig)
    return out


def thin_indices(n: int, max_labels: int = MAX_TICK_LABELS, keep: Sequence[int] = ()) -> list[int]:
    """At most about ``max_labels`` indices of ``range(n)`` at a regular step, always including ``keep``.

    Regular neighbours closer than one step to a kept index are dropped so that labels never collide.
    """
    if n <= max_labels:
        return list(range(n))
    step = math.ceil((n - 1) / (max_labels - 1))
    chosen = set(range(0, n, step))
    forced = {k for k in keep if 0 <= k < n}
    chosen = {c for c in chosen if c in forced or all(abs(c - k) >= step for k in forced)}
    return sorted(chosen | forced)


# ----------------------------------------------------------------------------- training


def _best_epoch(history: list[dict[str, Any]]) -> int | None:
    """Index of the row with the highest validation accuracy (earliest on ties), or lowest val loss without it."""
    acc = [row.get("val_accuracy") for row in history]
    if any(a is not None for a in acc):
        return max((i for i, a in enumerate(acc) if a is not None), key=lambda i: (acc[i], -i))
    loss = [row.get("val_loss") for row in history]
    if any(v is not None for v in loss):
        return min((i for i, v in enumerate(loss) if v is not None), key=lambda i: (loss[i], i))
    return None


def _series(history: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        if row.get(key) is not None:
            xs.append(row.get("epoch", i + 1))
            ys.append(float(row[key]) * scale)
    return xs, ys


def _epoch_axis(ax_loss: Axes, ax_acc: Axes, epochs: Sequence[int]) -> None:
    """Whole-epoch ticks and room around the first and last epoch so end markers are not cut in half."""
    first, last = (min(epochs), max(epochs)) if epochs else (1, 1)
    pad = max(0.5, 0.03 * (last - first))
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(first - pad, last + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.margins(y=0.1)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Loss and accuracy per epoch for training and validation, the best epoch marked, learning rate faint."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.6))
    fig.suptitle(title, fontsize=12)
    acc_values = [row[k] for row in history for k in ("train_accuracy", "val_accuracy") if row.get(k) is not None]
    acc_scale = 100.0 if acc_values and max(acc_values) <= 1.0 else 1.0
    epoch_marker = "o" if len(history) <= 40 else None
    for ax, key, label, scale in (
        (ax_loss, "loss", "Loss (cross-entropy)", 1.0),
        (ax_acc, "accuracy", "Accuracy (%)", acc_scale),
    ):
        for split, color in (("train", BASE_COLOR), ("val", SLIM_COLOR)):
            xs, ys = _series(history, f"{split}_{key}", scale)
            if xs:
                ax.plot(
                    xs,
                    ys,
                    marker=epoch_marker,
                    markersize=3.5,
                    color=color,
                    label="training" if split == "train" else "validation",
                )
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_loss.set_title("Loss")
    ax_acc.set_title("Accuracy")
    best = _best_epoch(history)
    if best is not None:
        row = history[best]
        epoch = row.get("epoch", best + 1)
        ax_loss.axvline(epoch, color="0.35", linestyle="--", linewidth=1, label=f"best epoch ({epoch})")
        ax_acc.axvline(epoch, color="0.35", linestyle="--", linewidth=1)
        if row.get("val_accuracy") is not None:
            value = row["val_accuracy"] * acc_scale
            ax_acc.plot(
                [epoch],
                [value],
                marker="*",
                markersize=14,
                color=KNEE_COLOR,
                zorder=5,
                label=f"best epoch {epoch}: val {value:.1f}%",
            )
        else:
            ax_loss.plot(
                [epoch],
                [row["val_loss"]],
                marker="*",
                markersize=14,
                color=KNEE_COLOR,
                zorder=5,
                label=f"best epoch {epoch}: val loss {row['val_loss']:.3f}",
            )
    lr_x, lr_y = _series(history, "lr")
    if lr_y and max(lr_y) > 0:
        ax_lr = ax_loss.twinx()
        exponent = math.floor(math.log10(max(lr_y)))
        exponent = exponent if exponent < -1 or exponent > 3 else 0
        scale = 10.0**-exponent
        ax_lr.plot(
            lr_x,
            [v * scale for v in lr_y],
            color="0.6",
            linestyle=":",
            linewidth=1.3,
            label="learning rate",
            marker="." if len(lr_y) == 1 else None,
        )
        ax_lr.set_ylabel("Learning rate" + (f" (×1e{exponent})" if exponent else ""), color="0.45")
        ax_lr.tick_params(axis="y", colors="0.45", labelsize=8)
        ax_lr.set_ylim(0, max(lr_y) * scale * 1.1)
        handles, labels = ax_loss.get_legend_handles_labels()
        extra_h, extra_l = ax_lr.get_legend_handles_labels()
        ax_loss.legend(handles + extra_h, labels + extra_l, fontsize=9)
    else:
        ax_loss.legend(fontsize=9)
    ax_acc.legend(fontsize=9)
    _epoch_axis(ax_loss, ax_acc, [row.get("epoch", i + 1) for i, row in enumerate(history)])
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- classification


def row_percentages(matrix: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Each cell as a percentage of its row (the true class); rows without images stay 0 instead of dividing by 0."""
    counts = np.asarray(matrix, dtype=float)
    support = counts.sum(axis=1, keepdims=True)
    return np.divide(100.0 * counts, support, out=np.zeros(counts.shape, dtype=float), where=support > 0)


def _cell_text(count: int, share: float, row_empty: bool) -> str:
    """What one confusion-matrix cell says: the count and its row percentage, or a bare 0 for an empty cell."""
    if count == 0 or row_empty:
        return "0"
    return f"{count}\n{share:.0f}%" if share >= 0.5 else f"{count}\n<1%"


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str
) -> Path:
    """Counts and row percentages (share of the true class) per cell; colour = row percentage.

    Up to ``MAX_ANNOTATED_CLASSES`` classes every cell is written (zeros faint, so mistakes stand out) and each
    true class shows its number of images; beyond that only the colour is kept and the title says so.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = counts.shape[0]
    support = counts.sum(axis=1)
    share = row_percentages(counts)
    annotate = k <= MAX_ANNOTATED_CLASSES
    side = min(max(5.5, 0.62 * k + 2.8), 13.0)
    fig, ax = plt.subplots(figsize=(side + 1.6, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("% of the true class (row percentage)")
    if annotate:
        font = 10 if k <= 6 else 8.5 if k <= 12 else 7
        for t in range(k):
            for p in range(k):
                empty = counts[t, p] == 0
                ax.text(
                    p,
                    t,
                    _cell_text(int(counts[t, p]), float(share[t, p]), support[t] == 0),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if share[t, p] > 55 else "0.7" if empty else "black",
                )
    ticks = thin_indices(k, 40)
    tick_font = 10 if k <= 10 else 8 if k <= 25 else 6
    rotate = k > 4 and any(len(str(classes[i])) > 3 for i in ticks)  # short names (digits) stay upright
    ax.set_xticks(
        ticks,
        [classes[i] for i in ticks],
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=tick_font,
    )
    row_names = [f"{classes[i]} ({support[i]})" if annotate else classes[i] for i in ticks]
    ax.set_yticks(ticks, row_names, fontsize=tick_font)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class (its number of images)" if annotate else "True class")
    note = "cell: count and % of the true class" if annotate else f"{k} classes: colour only, no cell numbers"
    ax.set_title(f"{title}\n({note})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    auc: dict[str, float | None] | None = None,
) -> Path:
    """One-vs-rest ROC curve per class (from ``metrics.roc_curves``) with the chance diagonal and each AUC."""
    outside = 10 < len(curves) <= 20
    fig, ax = plt.subplots(figsize=(9.6 if outside else 7.2, 6.4))
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        area = auc.get(name) if auc else None
        if area is None:
            area = float(np.trapezoid(tpr, fpr)) if len(fpr) > 1 else float("nan")
        label = f"{name} (AUC {area:.3f})" if len(curves) <= 20 else None
        ax.plot(fpr, tpr, color=cmap(i % cmap.N), linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.grid(alpha=0.3)
    ax.set_title(title + ("" if len(curves) <= 20 else f"\n({len(curves)} classes, legend omitted)"), fontsize=11)
    if outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8 if len(curves) > 8 else 9, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def _display_images(images: Any) -> np.ndarray:
    """Images (N, C, H, W) as floats in [0, 1]: uint8 (or any integer type) is divided by 255, floats kept."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    return array.astype(float) / 255.0 if np.issubdtype(array.dtype, np.integer) else array.astype(float)


def _message_figure(message: str, title: str, path: str | Path) -> Path:
    """A small figure that says one thing plainly, for when there is nothing to draw."""
    fig = plt.figure(figsize=(8.0, 2.8))
    fig.suptitle(title, fontsize=11)
    fig.text(
        0.5,
        0.45,
        message,
        ha="center",
        va="center",
        fontsize=12,
        wrap=True,
        bbox={"boxstyle": "round,pad=0.8", "facecolor": "#E8F4EA", "edgecolor": TEST_COLOR},
    )
    return save_figure(fig, path)


def plot_confused_pairs(
    pairs: Sequence[ConfusedPair],
    images: Any,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    confidences: Sequence[float] | np.ndarray | None = None,
    total: int | None = None,
) -> Path:
    """One row per (true → predicted) pair from ``metrics.confused_pairs`` with its example images.

    ``images`` is the whole evaluated split (N, C, H, W), uint8 or in [0, 1]; each row is titled
    "true X → predicted Y (n)" and each image captioned with its index in the split and, when
    ``confidences`` is given, the probability the model gave the wrong class. No pairs: a figure that says so.
    """
    if not pairs:
        seen = f" all {total} test images" if total is not None else " every test image"
        return _message_figure(
            f"No mistakes: the model classified{seen} correctly,\nso there are no confused pairs.", title, path
        )
    split = _display_images(images)
    columns = max(1, max(len(pair.examples) for pair in pairs))
    blocks_across = 1 if len(pairs) <= 2 or columns > 4 else 2
    block_rows = math.ceil(len(pairs) / blocks_across)
    cell, row_header, row_gap = 1.45, 0.42, 0.22
    row_height = cell + row_header + row_gap
    block_width = max(cell * columns + 0.3, 4.6)
    width = max(block_width * blocks_across, 7.5)
    notes = [
        "(n) = test images of the true class predicted as the other class"
        + (f"; {total} test images in all" if total is not None else ""),
        "examples: "
        + (
            "most confident mistakes first; p = probability the model gave the wrong class"
            if confidences is not None
            else "the first such images in test order"
        ),
    ]
    header = 0.45 + 0.2 * title.count("\n") + 0.17 * len(notes)
    fig = plt.figure(figsize=(width, header + block_rows * row_height))
    top, body = fig.subfigures(2, 1, height_ratios=[header, block_rows * row_height])
    top.suptitle(title, fontsize=11, y=0.95, va="top")
    top.text(0.5, 0.06, "\n".join(notes), ha="center", va="bottom", fontsize=8, color="0.35", linespacing=1.3)
    blocks = np.atleast_1d(body.subfigures(block_rows, blocks_across, wspace=0.0, hspace=0.0)).ravel()
    for subfig in blocks[len(pairs) :]:
        subfig.set_visible(False)
    for subfig, pair in zip(blocks, pairs):
        name_true, name_pred = classes[pair.true], classes[pair.predicted]
        subfig.suptitle(
            f"true {name_true} → predicted {name_pred} ({pair.count})",
            fontsize=10,
            fontweight="bold",
            x=0.15 / block_width,
            ha="left",
            y=0.98,
            va="top",
        )
        axes = subfig.subplots(1, columns, squeeze=False)[0]
        subfig.subplots_adjust(
            left=0.15 / block_width,
            right=1 - 0.15 / block_width,
            top=1 - (row_header + 0.1) / row_height,
            bottom=row_gap / row_height,
            wspace=0.12,
        )
        for ax in axes:
            ax.axis("off")
        for ax, index in zip(axes, pair.examples):
            image, cmap = _as_display(split[index])
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            caption = f"test #{index}"
            if confidences is not None:
                caption += f", p = {float(confidences[index]):.2f}"
            ax.set_title(caption, fontsize=7.5, pad=2)
    return save_figure(fig, path)


def plot_class_counts(per_split: Mapping[str, Mapping[str, int]], path: str | Path, title: str) -> Path:
    """Grouped bars: images per class in each split (train, val, test), the count written on each bar.

    Beyond ``MAX_COUNTED_CLASSES`` classes the numbers are dropped and the class names thinned; the legend
    always gives each split's total.
    """
    splits = [s for s in per_split if per_split[s] is not None]
    classes = list(dict.fromkeys(name for s in splits for name in per_split[s]))
    k, n_splits = len(classes), max(len(splits), 1)
    counts = np.array([[int(per_split[s].get(c, 0)) for c in classes] for s in splits], dtype=np.int64)
    width = min(max(7.0, 0.3 * k * n_splits + 2.2), 20.0)
    fig, ax = plt.subplots(figsize=(width, 5.0))
    bar_width = 0.8 / n_splits
    x = np.arange(k)
    write_numbers = k <= MAX_COUNTED_CLASSES
    top = int(counts.max()) if counts.size else 0
    number_font = 8.5 if k * n_splits <= 36 else 7
    bar_points = (width - 2.8) / max(k, 1) * 0.8 / n_splits * 72  # a bar's width on the page, in points
    vertical = write_numbers and 0.62 * number_font * len(str(top)) > bar_points
    for j, split in enumerate(splits):
        offsets = x + (j - (n_splits - 1) / 2) * bar_width
        bars = ax.bar(
            offsets,
            counts[j],
            width=bar_width,
            color=SPLIT_COLORS.get(split, f"C{j}"),
            label=f"{split} ({int(counts[j].sum())} images)",
        )
        if write_numbers:
            ax.bar_label(
                bars,
                labels=[str(v) for v in counts[j]],
                padding=2,
                rotation=90 if vertical else 0,
                fontsize=number_font,
            )
    ax.set_ylim(0, max(top, 1) * (1.22 if vertical else 1.12))
    ticks = thin_indices(k, 50)
    long_names = any(len(classes[i]) > 6 for i in ticks)
    rotate = k > 16 or (long_names and k > 4)
    ax.set_xticks(
        ticks,
        [classes[i] for i in ticks],
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=9 if k <= 20 else 7,
    )
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("Class")
    ax.set_ylabel("Images")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="split")
    note = "" if write_numbers else f"\n({k} classes: counts not written on the bars)"
    ax.set_title(title + note, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- analysis


def _cut_tick_labels(ax: Axes, n: int, names: Sequence[str], keep: Sequence[int] = (), axis: str = "x") -> None:
    """Tick labels from cut point names, thinned to stay readable, rotated on the x axis."""
    ticks = thin_indices(n, MAX_TICK_LABELS, keep)
    labels = [f"{names[i]}" if i < len(names) else str(i) for i in ticks]
    font = 9 if n <= 16 else 8 if n <= 30 else 7
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    else:
        ax.set_yticks(ticks, labels, fontsize=font)


def plot_ssim_curve(
    curves: dict[str, Sequence[float]],
    knee_index: int,
    knee_found: bool,
    cut_point_names: Sequence[str],
    chosen_mode: str,
    path: str | Path,
    title: str,
) -> Path:
    """SSIM curve(s) against cut point index; the chosen curve bold, the knee marked and said to be kneed's or the fallback's."""
    n = max(len(v) for v in curves.values())
    fig, ax = plt.subplots(figsize=(min(max(8.0, 0.16 * n + 6.0), 14.0), 5.6))
    descriptions = {"cut": "cut: mean SSIM of pairs across the cut", "adjacent": "adjacent: SSIM(i, i+1)"}
    for mode, values in sorted(curves.items(), key=lambda kv: kv[0] == chosen_mode):
        chosen = mode == chosen_mode
        ax.plot(
            range(len(values)),
            values,
            marker="o",
            markersize=4 if chosen else 2.5,
            linewidth=2.4 if chosen else 1.1,
            alpha=1.0 if chosen else 0.45,
            color=BASE_COLOR if chosen else "0.45",
            label=descriptions.get(mode, mode) + (" (chosen)" if chosen else ""),
            zorder=3 if chosen else 2,
        )
    how = "found by kneed" if knee_found else "kneed found none: fallback rule"
    name = cut_point_names[knee_index] if 0 <= knee_index < len(cut_point_names) else str(knee_index)
    ax.axvline(
        knee_index, color=KNEE_COLOR, linestyle="--", linewidth=1.6, label=f"knee at {knee_index} ({name}), {how}"
    )
    chosen_values = curves.get(chosen_mode)
    if chosen_values is not None and 0 <= knee_index < len(chosen_values):
        ax.plot(
            [knee_index],
            [chosen_values[knee_index]],
            marker="o",
            markersize=10,
            markerfacecolor="none",
            markeredgecolor=KNEE_COLOR,
            markeredgewidth=2,
            zorder=4,
        )
    _cut_tick_labels(ax, n, cut_point_names, keep=[knee_index])
    for label in ax.get_xticklabels():
        if label.get_text() == name:
            label.set_color(KNEE_COLOR)
            label.set_fontweight("bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("Cut point (index along the network; label = layer name)")
    ax.set_ylabel("SSIM")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3 if n > 20 else 2, frameon=False)
    ax.set_title(title, fontsize=11, pad=30 if n > 20 else 44)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_similarity_matrix(
    matrix: np.ndarray | Sequence[Sequence[float]], cut_point_names: Sequence[str], path: str | Path, title: str
) -> Path:
    """Heat map of mean SSIM between every pair of cut points, colour range from the data, with a colour bar."""
    values = np.asarray(matrix, dtype=float)
    n = values.shape[0]
    side = min(max(6.0, 0.1 * n + 5.5), 10.5)
    fig, ax = plt.subplots(figsize=(side + 1.3, side))
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("SSIM (mean over probe images)")
    if n <= 12:
        mid = (vmin + vmax) / 2
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if values[i, j] > mid else "white",
                )
    _cut_tick_labels(ax, n, cut_point_names, axis="x")
    _cut_tick_labels(ax, n, cut_point_names, axis="y")
    ax.set_xlabel("Cut point")
    ax.set_ylabel("Cut point")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def _grid_columns(n: int, knee_index: int | None) -> list[int]:
    """At most ``MAX_GRID_COLUMNS`` evenly spaced cut points, plus the knee when it is not among them."""
    if n <= MAX_GRID_COLUMNS:
        return list(range(n))
    chosen = {int(round(v)) for v in np.linspace(0, n - 1, MAX_GRID_COLUMNS)}
    if knee_index is not None and 0 <= knee_index < n:
        chosen.add(knee_index)
    return sorted(chosen)


def _as_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] → what imshow wants: (H, W) with a gray colormap, or (H, W, 3)."""
    image = np.clip(np.asarray(image, dtype=float), 0.0, 1.0)
    if image.shape[0] == 1:
        return image[0], "gray"
    return np.transpose(image[:3], (1, 2, 0)), None


def plot_gbp_grid(
    map_images: np.ndarray,
    probe_images: np.ndarray,
    cut_point_names: Sequence[str],
    path: str | Path,
    title: str,
    knee_index: int | None = None,
) -> Path:
    """Guided backprop map images, rows = probe images (input first), columns = cut points, the knee framed.

    ``map_images`` is (R, L, C, H, W) and ``probe_images`` (R, C, H, W), both in [0, 1]; more than
    ``MAX_GRID_COLUMNS`` cut points are thinned to evenly spaced ones plus the knee, and the title says so.
    """
    maps = np.asarray(map_images)
    probes = np.asarray(probe_images)
    if maps.ndim != 5 or probes.ndim != 4 or maps.shape[0] != probes.shape[0]:
        raise ValueError(f"expected maps (R, L, C, H, W) and probes (R, C, H, W), got {maps.shape} and {probes.shape}")
    rows, n = maps.shape[0], maps.shape[1]
    columns = _grid_columns(n, knee_index)
    cell = 1.25 if len(columns) <= 10 else 1.05
    shown = (
        ""
        if len(columns) == n
        else f"\n({len(columns)} of {n} cut points shown, evenly spaced"
        + (" plus the knee)" if knee_index is not None and 0 <= knee_index < n else ")")
    )
    header = 0.6 + 0.22 * (1 + shown.count("\n"))  # title lines + two lines of column names, in inches
    height = cell * rows + header
    fig, axes = plt.subplots(
        rows,
        len(columns) + 1,
        figsize=(cell * (len(columns) + 1) + 0.3, height),
        squeeze=False,
        gridspec_kw={"wspace": 0.06, "hspace": 0.06},
    )
    fig.suptitle(title + shown, fontsize=11, y=1 - 0.06 / height, va="top")
    name_font = 8 if len(columns) <= 10 else 6.5
    for r in range(rows):
        image, cmap = _as_display(probes[r])
        ax = axes[r, 0]
        ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"probe {r + 1}", fontsize=8)
        if r == 0:
            ax.set_title("input", fontsize=name_font + 0.5, fontweight="bold")
        for c, layer in enumerate(columns, start=1):
            ax = axes[r, c]
            image, cmap = _as_display(maps[r, layer])
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            is_knee = layer == knee_index
            for spine in ax.spines.values():
                spine.set_visible(is_knee)
                spine.set_edgecolor(KNEE_COLOR)
                spine.set_linewidth(3)
            if r == 0:
                name = cut_point_names[layer] if layer < len(cut_point_names) else str(layer)
                label = f"KNEE {layer}\n{name}" if is_knee else f"{layer}\n{name}"
                ax.set_title(
                    label,
                    fontsize=name_font,
                    color=KNEE_COLOR if is_knee else "black",
                    fontweight="bold" if is_knee else "normal",
                )
    fig.subplots_adjust(
        left=0.3 / (cell * (len(columns) + 1) + 0.3), right=0.995, bottom=0.02 / rows, top=1 - header / height
    )
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- comparison


def _scaled(value: float, units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    """The largest unit not bigger than the value, e.g. 2.3e6 params → (1e6, "M")."""
    for factor, unit in units:
        if abs(value) >= factor:
            return factor, unit
    return units[-1]


_COUNT_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "K"), (1.0, ""))
_BYTE_UNITS = ((1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB"), (1.0, "B"))


def _bar_panel(ax: Axes, title: str, base: float, slim: float, fmt: str, note: str) -> None:
    """Two bars (base, slim) with their values written on top and a note on the change below."""
    bars = ax.bar(["base", "slim"], [base, slim], color=[BASE_COLOR, SLIM_COLOR], width=0.6)
    top = max(base, slim, 1e-12)
    ax.set_ylim(0, top * 1.22)
    for bar, value in zip(bars, (base, slim)):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + top * 0.02,
            fmt.format(value),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(note, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def _percent_change(entry: dict[str, Any]) -> str:
    ratio = entry.get("ratio")
    return "slim − base: n/a" if ratio is None else f"slim = {ratio:.1%} of base ({(ratio - 1):+.1%})"


def plot_comparison(comparison: dict[str, Any], path: str | Path, title: str) -> Path:
    """Base vs slim bars for accuracy, macro-F1, parameters, MACs, checkpoint size and latency, values on the bars."""
    metrics = comparison["metrics"]
    latency = comparison.get("latency") or {}
    panels: list[tuple[str, float, float, str, str]] = []
    for key, label in (("accuracy", "Test accuracy (%)"), ("macro_f1", "Test macro-F1 (%)")):
        m = metrics[key]
        panels.append(
            (
                label,
                100 * m["base"],
                100 * m["slim"],
                "{:.1f}",
                f"slim − base: {100 * m['delta']:+.1f} percentage points",
            )
        )
    for key, label, units in (
        ("params", "Parameters", _COUNT_UNITS),
        ("macs", "MACs per image", _COUNT_UNITS),
        ("checkpoint_bytes", "Checkpoint size", _BYTE_UNITS),
    ):
        m = metrics[key]
        factor, unit = _scaled(max(m["base"], m["slim"]), units)
        unit_label = f" ({unit})" if unit else ""
        panels.append(
            (
                f"{label}{unit_label}",
                m["base"] / factor,
                m["slim"] / factor,
                "{:.2f}" if factor > 1 else "{:.0f}",
                _percent_change(m),
            )
        )
    gpu_names = set()
    for key, entry in list(latency.items())[:6]:  # torch's CPU and GPU, ONNX Runtime's CPU beside torch's
        device = entry.get("device") or key
        on_cpu = entry.get("device_type", device) == "cpu"
        where = ("ONNX Runtime CPU" if str(key).startswith("onnxruntime_") else "CPU") if on_cpu else "GPU"
        if not on_cpu:
            gpu_names.add(str(device))
        batch = entry.get("batch_size")
        speed = entry.get("speedup")
        note = f"speed-up ×{speed:.2f}" if speed else "speed-up n/a"
        panels.append(
            (
                f"{where} latency, batch {batch} (ms)",
                entry["base_ms"],
                entry["slim_ms"],
                "{:.2f}" if max(entry["base_ms"], entry["slim_ms"]) < 100 else "{:.0f}",
                note,
            )
        )
    ncols = min(5, math.ceil(len(panels) / 2)) if len(panels) > 6 else 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.3 * nrows + 0.6), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _bar_panel(ax, *panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    statistic = comparison.get("latency_statistic", "median ms per forward pass")
    gpu = f"; GPU = {', '.join(sorted(gpu_names))}" if gpu_names else ""
    subtitle = f"latency = {statistic}{gpu}" if latency else "no latency measured for both models"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- depth probes and the cut's trade-off

PROBE_COLOR = "#8172B3"
"""The probe choice (the shallowest cut whose depth probe is within the budget)."""
WITHIN_COLOR = TEST_COLOR
BELOW_COLOR = SLIM_COLOR
BUDGET_FILL = TEST_COLOR
CHOSEN_COLOR = "#F2B701"
TEST_SERIES_COLOR = "#D1559E"
F1_COLOR = "#937860"
PROBE_SERIES_COLOR = "0.5"
BASE_LINE_COLOR = "0.2"
MAX_POINT_LABELS = 16


def _cut_name(names: Sequence[str], index: int) -> str:
    """The name of cut point ``index``, or the index itself when the names do not reach it."""
    return names[index] if 0 <= index < len(names) else str(index)


def _budget_band(
    ax: Axes, threshold: float | None, base_accuracy: float | None, label: bool = True, name: str = "budget"
) -> None:
    """The base model's validation accuracy as a line and the accepted band (threshold up to the base) shaded (%);
    ``name`` starts the band's legend entry ("budget", or "default budget" where no budget was given)."""
    if base_accuracy is not None:
        ax.axhline(
            100 * base_accuracy,
            color=BASE_LINE_COLOR,
            linewidth=1.3,
            zorder=2,
            label=f"base model: validation {100 * base_accuracy:.1f}%" if label else None,
        )
    if threshold is None:
        return
    budget = f"{name}: validation ≥ {100 * threshold:.1f}%"
    ax.axhline(100 * threshold, color=BUDGET_FILL, linestyle=":", linewidth=1.4, zorder=2)
    if base_accuracy is not None and base_accuracy > threshold:
        ax.axhspan(
            100 * threshold,
            100 * base_accuracy,
            color=BUDGET_FILL,
            alpha=0.13,
            zorder=1,
            label=budget if label else None,
        )
    elif label:  # the band has no height (a budget of 0 points, or a minimum above the base): the line says it
        ax.plot([], [], color=BUDGET_FILL, linestyle=":", linewidth=1.4, label=budget)


def _accuracy_limits(values: Sequence[float | None]) -> tuple[float, float]:
    """Y limits (%) that hold every accuracy given (fractions) with a little room, never far beyond 0-100."""
    finite = [100 * v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    low, high = min(finite), max(finite)
    pad = max(1.0, 0.08 * (high - low))
    return max(low - pad, -1.0), min(high + pad, 101.0)


def plot_depth_probes(
    probe: Sequence[float],
    cut_curve: Sequence[float],
    names: Sequence[str],
    *,
    knee_index: int,
    threshold: float | None,
    base_accuracy: float | None,
    probe_index: int | None,
    path: str | Path,
    title: str,
    budget_name: str = "budget",
) -> Path:
    """The probe curve (validation accuracy of a linear classifier per cut point) against depth, the SSIM cut curve
    lighter on a right axis, the base model's accuracy and the budget band, the knee and the probe's choice marked.

    ``probe`` has one value per cut point; ``cut_curve`` one fewer (value k is the cut after point k). A knee of
    ``len(probe) - 1`` is the whole network kept (the SSIM curve never levels off).
    """
    n = max(len(probe), len(cut_curve) + 1, len(names), 1)
    fig, ax = plt.subplots(figsize=(min(max(8.5, 0.16 * n + 6.5), 14.0), 5.8))
    ax_ssim = ax.twinx()
    ax.set_zorder(ax_ssim.get_zorder() + 1)  # the probe curve in front of the SSIM curve
    ax.patch.set_visible(False)
    marker = "o" if n <= 60 else None
    if cut_curve:
        ax_ssim.plot(
            range(len(cut_curve)),
            cut_curve,
            color="0.55",
            alpha=0.8,
            linewidth=1.3,
            marker="." if n <= 60 else None,
            markersize=5,
            label="SSIM cut curve (right axis)",
        )
    ax_ssim.set_ylabel("SSIM of the GBP maps (cut curve)", color="0.45")
    ax_ssim.tick_params(axis="y", colors="0.45", labelsize=8)
    _budget_band(ax, threshold, base_accuracy, name=budget_name)
    ax.plot(
        range(len(probe)),
        [100 * v for v in probe],
        color=BASE_COLOR,
        linewidth=2.2,
        marker=marker,
        markersize=4,
        zorder=4,
        label="depth probe: validation accuracy",
    )
    last = n - 1
    knee_name = _cut_name(names, knee_index)
    kept_all = knee_index >= last
    knee_label = f"knee (SSIM rule): {knee_name}" + (" = last cut point, whole network kept" if kept_all else "")
    ax.axvline(knee_index, color=KNEE_COLOR, linestyle="--", linewidth=1.6, zorder=3, label=knee_label)
    if probe_index is not None and 0 <= probe_index < len(probe):
        value = 100 * probe[probe_index]
        ax.plot(
            [probe_index],
            [value],
            marker="D",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor=PROBE_COLOR,
            markeredgewidth=2.2,
            linestyle="none",
            zorder=5,
            label=f"probe choice (shallowest within the budget): {_cut_name(names, probe_index)}, {value:.1f}%",
        )
        ax.axvline(probe_index, color=PROBE_COLOR, linestyle=":", linewidth=1.4, zorder=3)
    elif threshold is not None and probe:
        ax.plot([], [], linestyle="none", label="probe choice: no cut point's probe is within the budget")
    limits = _accuracy_limits([*probe, threshold, base_accuracy])
    ax.set_ylim(*limits)
    keep = [k for k in (knee_index, probe_index) if k is not None]
    _cut_tick_labels(ax, n, names, keep=keep)
    colours = {knee_name: KNEE_COLOR}
    if probe_index is not None:
        colours[_cut_name(names, probe_index)] = PROBE_COLOR
    for label in ax.get_xticklabels():
        if label.get_text() in colours:
            label.set_color(colours[label.get_text()])
            label.set_fontweight("bold")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("Cut point (index along the network; label = layer name)")
    ax.set_ylabel("Validation accuracy (%)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    extra_h, extra_l = ax_ssim.get_legend_handles_labels()
    ax.legend(
        handles + extra_h,
        labels + extra_l,
        fontsize=8.5,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=2,
        frameon=False,
    )
    rows = math.ceil(len(labels + extra_l) / 2)
    ax.set_title(title, fontsize=11, pad=12 + 15 * rows)
    fig.tight_layout()
    return save_figure(fig, path)


def _count_label(value: float, _position: float | None = None) -> str:
    """A tick label for a count on a log axis: 1.2M, 350K, 4G."""
    if value <= 0:
        return "0"
    factor, unit = _scaled(value, _COUNT_UNITS)
    scaled = value / factor
    return f"{scaled:.3g}{unit}"


def _minor_count_labels(decades: float) -> Callable[[float, float | None], str]:
    """Labels of a log axis' minor ticks: all of them over less than a decade, 2× and 5× over up to two, else none
    (the powers of ten say enough and the labels would collide)."""
    shown = {2, 3, 4, 5, 6, 7, 8, 9} if decades < 0.75 else {2, 5} if decades < 2.0 else set()

    def label(value: float, _position: float | None = None) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
        return _count_label(value) if mantissa in shown else ""

    return label


def _log_limits(values: Sequence[float]) -> tuple[float, float]:
    """X limits of a log axis holding every value with room for labels; at least a factor 2.5 wide."""
    positive = [v for v in values if v > 0] or [1.0]
    low, high = min(positive), max(positive)
    span = max(math.log10(high / low), math.log10(2.5))
    middle = (math.log10(low) + math.log10(high)) / 2
    low_log = min(math.log10(low), middle - span / 2) - 0.06 * span - 0.02
    high_log = max(math.log10(high), middle + span / 2) + 0.1 * span + 0.03
    return 10**low_log, 10**high_log


def _labelled_points(positions: Sequence[float], first: Sequence[int], min_gap: float) -> list[int]:
    """Which points get their name beside them: ``first`` (the marked ones) before the others from left to right,
    none closer than ``min_gap`` (in axis fractions) to one already named, at most ``MAX_POINT_LABELS``."""
    chosen: list[int] = []
    for i in dict.fromkeys([*first, *sorted(range(len(positions)), key=lambda i: positions[i])]):
        if len(chosen) >= MAX_POINT_LABELS:
            break
        if all(abs(positions[i] - positions[j]) >= min_gap for j in chosen):
            chosen.append(i)
    return sorted(chosen)


@dataclass(frozen=True)
class _Mark:
    """A cut point some rule chose, as the trade-off chart marks it: marker shape, size, colour and what it is."""

    ref: CutPointRef
    marker: str
    size: float
    colour: str
    filled: bool
    text: str


def _rule_marks(candidates: Sequence[Candidate], rules: OtherRules, chosen: CutPointRef | None) -> list[_Mark]:
    """The chosen cut (gold star, drawn behind), the knee (red square) and the probe choice (purple diamond)."""
    marks = []
    if chosen is not None:
        kept = next((c.within_budget for c in candidates if c.cut_point.index == chosen.index), None)
        how = ", smallest within budget" if kept else ", none within budget" if kept is False else ""
        marks.append(_Mark(chosen, "*", 26, CHOSEN_COLOR, True, f"chosen{how}"))
    if rules.knee is not None:
        marks.append(_Mark(rules.knee, "s", 15, KNEE_COLOR, False, "knee (SSIM)"))
    if rules.probe is not None:
        marks.append(_Mark(rules.probe, "D", 11, PROBE_COLOR, False, "probe choice"))
    return marks


def _draw_mark(ax: Axes, mark: _Mark, point: tuple[float, float] | None, legend: bool) -> None:
    """One rule's marker around its candidate's validation point (only in the legend when it was not retrained)."""
    label = f"{mark.text}: {mark.ref.name}" + (f" (val. {point[1]:.1f}%)" if point else " (not retrained)")
    style = {"markerfacecolor": mark.colour, "markeredgecolor": "0.25", "markeredgewidth": 0.8}
    if not mark.filled:
        style = {"markerfacecolor": "none", "markeredgecolor": mark.colour, "markeredgewidth": 2.2}
    ax.plot(
        *(([point[0]], [point[1]]) if point is not None else ([], [])),
        marker=mark.marker,
        markersize=mark.size,
        linestyle="none",
        zorder=4.5 if mark.filled else 7,
        label=label if legend else None,
        **style,
    )


def _trade_off_panel(
    ax: Axes,
    ordered: Sequence[Candidate],
    key: str,
    budget: Budget,
    marks: Sequence[_Mark],
    probe_of: Mapping[int, float | None],
    base: SweepBase | None,
    legend: bool,
) -> list[float]:
    """One panel of the trade-off chart: every series against ``key`` (macs or params); returns the x values."""
    many = len(ordered) > 12
    xs = [max(float(getattr(c, key)), 1.0) for c in ordered]
    val = [100 * c.val_accuracy for c in ordered]

    def label(text: str) -> str | None:
        return text if legend else None

    _budget_band(ax, budget.threshold, budget.base_val_accuracy, label=legend)
    probed = [(x, 100 * v) for x, c in zip(xs, ordered) if (v := probe_of.get(c.cut_point.index)) is not None]
    if probed:
        ax.plot(
            *zip(*probed),
            color=PROBE_SERIES_COLOR,
            linestyle="--",
            linewidth=1.2,
            marker=".",
            markersize=5,
            zorder=3,
            label=label("depth probe (validation)"),
        )
    ax.plot(
        xs,
        [100 * c.val_macro_f1 for c in ordered],
        color=F1_COLOR,
        linewidth=0.9,
        marker=None if many else ".",
        markersize=4,
        alpha=0.85,
        zorder=3,
        label=label("validation macro-F1 (×100)"),
    )
    ax.plot(
        xs,
        [100 * c.accuracy for c in ordered],
        color=TEST_SERIES_COLOR,
        linewidth=1.0,
        marker="o",
        markersize=4.5 if many else 5.5,
        markerfacecolor="white",
        markeredgewidth=1.3,
        zorder=4,
        label=label("test accuracy"),
    )
    ax.plot(xs, val, color=BASE_COLOR, linewidth=2.0, zorder=5)
    for within, marker, colour, text in (
        (True, "o", WITHIN_COLOR, "validation accuracy, within budget"),
        (False, "v", BELOW_COLOR, "validation accuracy, below budget"),
    ):
        points = [(x, y) for x, y, c in zip(xs, val, ordered) if c.within_budget == within]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linestyle="none",
            marker=marker,
            markersize=6.5 if many else 8,
            markerfacecolor=colour,
            markeredgecolor="white",
            markeredgewidth=0.8,
            zorder=6,
            label=label(text) if points else None,
        )
    at = {c.cut_point.index: i for i, c in enumerate(ordered)}
    marked: list[int] = []
    for mark in marks:
        i = at.get(mark.ref.index)
        _draw_mark(ax, mark, (xs[i], val[i]) if i is not None else None, legend)
        if i is not None and i not in marked:
            marked.append(i)
    if base is not None:
        base_x = max(float(getattr(base, key)), 1.0)
        ax.plot(
            [base_x],
            [100 * base.val_accuracy],
            marker="D",
            markersize=9,
            color=BASE_LINE_COLOR,
            linestyle="none",
            zorder=6,
            label=label("base model: val. (filled), test (hollow)"),
        )
        ax.plot(
            [base_x],
            [100 * base.accuracy],
            marker="D",
            markersize=9,
            markerfacecolor="white",
            markeredgecolor=BASE_LINE_COLOR,
            markeredgewidth=1.4,
            linestyle="none",
            zorder=6,
        )
        ax.annotate(
            "base",
            (base_x, 100 * base.val_accuracy),
            xytext=(8, -3),
            textcoords="offset points",
            va="top",
            fontsize=9.5,
            fontweight="bold",
        )
    ax.set_xscale("log")
    low, high = _log_limits([*xs, *([max(float(getattr(base, key)), 1.0)] if base is not None else [])])
    ax.set_xlim(low, high)
    ax.xaxis.set_major_formatter(_count_label)
    ax.xaxis.set_minor_formatter(_minor_count_labels(math.log10(high / low)))
    ax.tick_params(axis="x", which="both", labelsize=9)
    span = math.log10(high / low)
    positions = [(math.log10(x) - math.log10(low)) / span for x in xs]
    names = [c.cut_point.name for c in ordered]
    for i in _labelled_points(positions, first=marked, min_gap=0.045 if many else 0.09):
        ax.annotate(
            names[i],
            (xs[i], val[i]),
            xytext=((5, 8) if many else (9, 7)) if i in marked else ((3, 6) if many else (6, 5)),
            textcoords="offset points",
            rotation=50 if many else 0,
            rotation_mode="anchor",
            fontsize=8 if many else 9.5,
            fontweight="bold" if i in marked else "normal",
            color="0.1" if i in marked else "0.3",
            zorder=8,
        )
    ax.set_xlabel({"macs": "MACs per image (log scale)", "params": "Parameters (log scale)"}[key])
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.12, which="minor")
    return xs


def plot_trade_off(
    candidates: Sequence[Candidate],
    budget: Budget,
    rules: OtherRules,
    path: str | Path,
    title: str,
    *,
    base: SweepBase | None = None,
    probe: Mapping[int, float] | None = None,
    chosen: CutPointRef | None = None,
) -> Path:
    """Validation accuracy of retrained slim models against MACs and against parameters (log x), one point per
    candidate named by its cut point: test accuracy (hollow), validation macro-F1 (thin) and the depth probe
    (dashed) beside it, the base model and the budget band, points within the budget told from those below it,
    and the chosen cut (``chosen``, else the auto rule's), the knee and the probe choice marked and named.

    Reads with 2 candidates (an auto search) as with 50 (a sweep): names are thinned so that none collide, and the
    marked cut points are named in boxes of their own.
    """
    ordered = sorted(candidates, key=lambda c: (c.macs, c.params, c.cut_point.index))
    probe_of: dict[int, float | None] = {c.cut_point.index: c.probe_accuracy for c in ordered}
    probe_of.update(probe or {})
    marks = _rule_marks(ordered, rules, chosen or rules.auto)
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 6.6), sharey=True)
    fig.suptitle(f"{title}\n{budget.description or 'accuracy budget'}", fontsize=12.5)
    accuracies: list[float | None] = [budget.threshold, budget.base_val_accuracy]
    for c in ordered:
        accuracies += [c.val_accuracy, c.accuracy, c.val_macro_f1, probe_of.get(c.cut_point.index)]
    if base is not None:
        accuracies += [base.val_accuracy, base.accuracy]
    low, high = _accuracy_limits(accuracies)
    headroom = 0.14 if len(ordered) > 12 else 0.05  # room above the deepest points for their names
    axes[0].set_ylim(low, high + headroom * (high - low))
    axes[0].yaxis.set_major_formatter(lambda value, _: f"{value:g}" if value <= 100.5 else "")
    for ax, key in zip(axes, ("macs", "params")):
        _trade_off_panel(ax, ordered, key, budget, marks, probe_of, base, legend=ax is axes[0])
    axes[0].set_ylabel("Accuracy (%)")
    axes[0].set_title("against MACs (compute per image)", fontsize=11)
    axes[1].set_title("against parameters (model size)", fontsize=11)
    axes[1].tick_params(axis="y", labelleft=True)
    handles, labels = axes[0].get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9.5, frameon=False)
    for handle in legend.legend_handles:
        if hasattr(handle, "get_markersize") and handle.get_markersize() > 12:
            handle.set_markersize(12)
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, 0.042 * rows + 0.01, 1, 1))
    return save_figure(fig, path)
