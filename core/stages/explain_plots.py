"""The explain stage's pictures: CAM overlays, gradient maps, feature maps, receptive fields, base vs slim.

Every function takes images in [0, 1] as (N, 3, H, W) numpy arrays and maps already prepared for display
(CAMs upsampled and min-max normalised, gradients normalised), writes one PNG through ``plots.save_figure``
and returns its path. At most ``MAX_ROWS`` images are drawn; the title says when some are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from layercut.stages.plots import KNEE_COLOR, save_figure

MAX_ROWS = 12
MAX_CLASS_COLUMNS = 10
CAM_CMAP = "jet"
CAM_ALPHA = 0.5
CELL = 1.9  # inches per image cell
CORRECT_COLOR = "#2A7F3E"
WRONG_COLOR = KNEE_COLOR
METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "layercam": "Layer-CAM",
    "eigencam": "Eigen-CAM",
    "scorecam": "Score-CAM",
    "guided_backprop": "Guided backprop",
    "guided_gradcam": "Guided Grad-CAM",
    "saliency": "Saliency |∂score/∂x|",
}


def _rgb(image: np.ndarray) -> np.ndarray:
    """(3, H, W) or (1, H, W) in [0, 1] → (H, W, 3) for imshow."""
    image = np.clip(np.asarray(image, dtype=float), 0.0, 1.0)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return np.transpose(image[:3], (1, 2, 0))


def _bare(ax: Axes) -> None:
    """No ticks, labels or frame (turning the axis off also skips creating ticks, which is most of the time)."""
    ax.set_axis_off()


def _edges_overlay(ax: Axes, edges: np.ndarray | None) -> None:
    """Canny edges of the input drawn as thin white lines over whatever the axis shows."""
    if edges is None:
        return
    layer = np.zeros((*edges.shape, 4))
    layer[edges.astype(bool)] = (1.0, 1.0, 1.0, 0.9)
    ax.imshow(layer, interpolation="nearest")


def _overlay(ax: Axes, image: np.ndarray, heat: np.ndarray, edges: np.ndarray | None = None) -> None:
    ax.imshow(_rgb(image))
    ax.imshow(heat, cmap=CAM_CMAP, alpha=CAM_ALPHA, vmin=0.0, vmax=1.0)
    _edges_overlay(ax, edges)
    _bare(ax)


def _rows(n: int) -> tuple[int, str]:
    """Rows drawn and the note saying how many were left out."""
    rows = min(n, MAX_ROWS)
    return rows, "" if rows == n else f" (first {rows} of {n} images)"


def _figure(
    rows: int, columns: int, title: str, header: float = 0.9, extra_width: float = 1.25, cell: float = CELL
) -> tuple[Figure, np.ndarray]:
    """A grid of image cells with room for a title of ``header`` inches and a colour bar on the right."""
    width = cell * columns + extra_width
    height = cell * rows + header
    fig, axes = plt.subplots(
        rows, columns, figsize=(width, height), squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.42}
    )
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height, va="top")
    fig.subplots_adjust(left=0.12 / width, right=1 - extra_width / width, bottom=0.1 / height, top=1 - header / height)
    return fig, axes


def _colorbar(
    fig: Figure, cmap: str, label: str, low: str = "low", high: str = "high", norm: Normalize | None = None
) -> None:
    """One vertical colour bar on the right edge of the figure."""
    width, height = fig.get_size_inches()
    top = fig.subplotpars.top
    cax = fig.add_axes((1 - 1.0 / width, 0.1 / height + 0.1 * top, 0.16 / width, 0.75 * top))
    mappable = plt.cm.ScalarMappable(norm=norm or Normalize(0, 1), cmap=cmap)
    bar = fig.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=9)
    if norm is None:
        bar.set_ticks([0, 0.5, 1], labels=[f"0 {low}", "0.5", f"1 {high}"], fontsize=8)
    else:
        bar.ax.tick_params(labelsize=8)


def _input_cell(
    ax: Axes, image: np.ndarray, caption: str, color: str = "black", edges: np.ndarray | None = None
) -> None:
    ax.imshow(_rgb(image))
    _edges_overlay(ax, edges)
    _bare(ax)
    ax.set_title(caption, fontsize=8, color=color)


def plot_cam_overlays(
    images: np.ndarray,
    maps: dict[str, np.ndarray],
    captions: Sequence[str],
    explained: Sequence[str],
    path: str | Path,
    title: str,
    edges: np.ndarray | None = None,
) -> Path:
    """Rows = images (the input first, captioned with true and predicted class), columns = CAM methods.

    ``maps[method]`` is (N, H, W) in [0, 1]; ``explained[i]`` names the class image i's maps explain,
    written in every cell's title.
    """
    rows, note = _rows(len(images))
    methods = list(maps)
    fig, axes = _figure(rows, len(methods) + 1, title + note)
    for r in range(rows):
        _input_cell(axes[r, 0], images[r], captions[r], edges=edges[r] if edges is not None else None)
        for c, method in enumerate(methods, start=1):
            _overlay(axes[r, c], images[r], maps[method][r], edges[r] if edges is not None else None)
            axes[r, c].set_title(f"{METHOD_TITLES.get(method, method)}\nfor {explained[r]}", fontsize=8)
    _colorbar(fig, CAM_CMAP, "CAM, min-max scaled per map")
    return save_figure(fig, path)


def plot_gradient_maps(
    images: np.ndarray,
    maps: dict[str, np.ndarray],
    captions: Sequence[str],
    explained: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """Rows = images; columns = guided backprop and guided Grad-CAM (colour, (g − mean)/std · 0.25 + 0.5)
    and saliency (max |∂score/∂x| over channels, min-max scaled, 'hot' colour map with its bar)."""
    rows, note = _rows(len(images))
    methods = list(maps)
    legend = "\nguided maps: gray = no gradient, colour = the input change that raises the class score"
    fig, axes = _figure(rows, len(methods) + 1, title + note + legend, header=1.1)
    for r in range(rows):
        _input_cell(axes[r, 0], images[r], captions[r])
        for c, method in enumerate(methods, start=1):
            ax = axes[r, c]
            values = maps[method][r]
            if values.ndim == 3:
                ax.imshow(_rgb(values))
            else:
                ax.imshow(values, cmap="hot", vmin=0.0, vmax=1.0)
            _bare(ax)
            ax.set_title(f"{METHOD_TITLES.get(method, method)}\nfor {explained[r]}", fontsize=8)
    if any(np.asarray(m).ndim == 3 for m in maps.values()):
        _colorbar(fig, "hot", "saliency, min-max scaled per map")
    return save_figure(fig, path)


def plot_feature_maps(
    images: np.ndarray,
    activations: np.ndarray,
    channels: np.ndarray,
    means: np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """Rows = images; columns = the k most active channels of the layer (by mean activation), drawn at the
    layer's own resolution with one colour scale per row (its bar at the row's end)."""
    rows, note = _rows(len(images))
    k = activations.shape[1]
    cell = CELL if k <= 8 else 1.4
    fig, axes = _figure(rows, k + 1, title + note, extra_width=0.75, cell=cell)
    for r in range(rows):
        _input_cell(axes[r, 0], images[r], captions[r])
        low, high = float(activations[r].min()), float(activations[r].max())
        high = high if high > low else low + 1e-9
        for c in range(k):
            ax = axes[r, c + 1]
            shown = ax.imshow(activations[r, c], cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
            _bare(ax)
            ax.set_title(f"channel {int(channels[r, c])}\nmean {means[r, c]:.3g}", fontsize=8)
        bar = fig.colorbar(shown, ax=axes[r, k], fraction=0.08, pad=0.03)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("activation", fontsize=7)
    return save_figure(fig, path)


def plot_receptive_fields(
    images: np.ndarray,
    boxes: Sequence[tuple[int, int, int, int]],
    units: Sequence[tuple[int, int, int]],
    unit_maps: np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """Top row: each image with the receptive field box (top, left, bottom, right; ends exclusive) of its
    most active unit; bottom row: that unit's channel at layer resolution, the unit circled."""
    n = min(len(images), MAX_ROWS)
    note = "" if n == len(images) else f" (first {n} of {len(images)} images)"
    fig, axes = plt.subplots(
        2, n, figsize=(CELL * n + 1.4, 2 * CELL + 1.3), squeeze=False, gridspec_kw={"wspace": 0.1, "hspace": 0.45}
    )
    fig.suptitle(title + note, fontsize=11)
    for i in range(n):
        top, left, bottom, right = boxes[i]
        channel, y, x = units[i]
        ax = axes[0, i]
        ax.imshow(_rgb(images[i]))
        ax.add_patch(
            Rectangle(
                (left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=KNEE_COLOR, linewidth=2
            )
        )
        _bare(ax)
        ax.set_title(f"{captions[i]}\nfield rows {top}–{bottom - 1}, cols {left}–{right - 1}", fontsize=7.5)
        ax = axes[1, i]
        peak = float(np.abs(unit_maps[i]).max()) or 1.0
        ax.imshow(
            unit_maps[i] / peak,
            cmap="viridis",
            vmin=min(0.0, float(unit_maps[i].min()) / peak),
            vmax=1.0,
            interpolation="nearest",
        )
        ax.plot(
            [x], [y], marker="o", markersize=12, markerfacecolor="none", markeredgecolor=KNEE_COLOR, markeredgewidth=2
        )
        _bare(ax)
        ax.set_title(f"channel {channel} at layer resolution\nmost active unit (y={y}, x={x})", fontsize=7.5)
    width = CELL * n + 1.4
    fig.subplots_adjust(left=0.1 / width, right=1 - 1.2 / width, top=1 - 0.95 / (2 * CELL + 1.3), bottom=0.03)
    cax = fig.add_axes((1 - 1.0 / width, 0.06, 0.14 / width, 0.36))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(0, 1), cmap="viridis"), cax=cax)
    bar.set_label("activation ÷ its maximum", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return save_figure(fig, path)


def plot_base_vs_slim(
    images: np.ndarray,
    base_maps: np.ndarray,
    slim_maps: np.ndarray,
    true_labels: Sequence[str],
    base_captions: Sequence[str],
    slim_captions: Sequence[str],
    base_correct: Sequence[bool],
    slim_correct: Sequence[bool],
    path: str | Path,
    title: str,
    edges: np.ndarray | None = None,
) -> Path:
    """Rows = the same images; columns = input (true class), the base model's and the slim model's Grad-CAM
    for its own prediction, captioned with the model, its predicted class and probability (green right, red wrong)."""
    rows, note = _rows(len(images))
    fig, axes = _figure(rows, 3, title + note, header=1.05)
    for r in range(rows):
        edge = edges[r] if edges is not None else None
        _input_cell(axes[r, 0], images[r], f"true: {true_labels[r]}", edges=edge)
        for c, (maps, caption, correct) in enumerate(
            ((base_maps, base_captions, base_correct), (slim_maps, slim_captions, slim_correct)), start=1
        ):
            _overlay(axes[r, c], images[r], maps[r], edge)
            axes[r, c].set_title(caption[r], fontsize=8, color=CORRECT_COLOR if correct[r] else WRONG_COLOR)
    _colorbar(fig, CAM_CMAP, "Grad-CAM, min-max scaled per map")
    return save_figure(fig, path)


def plot_class_cams(
    images: np.ndarray,
    maps: np.ndarray,
    classes: Sequence[str],
    captions: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """Rows = images; columns = one CAM per class (the first ``MAX_CLASS_COLUMNS`` classes)."""
    rows, note = _rows(len(images))
    k = min(len(classes), MAX_CLASS_COLUMNS)
    if k < len(classes):
        note += f", first {k} of {len(classes)} classes"
    fig, axes = _figure(rows, k + 1, title + note)
    for r in range(rows):
        _input_cell(axes[r, 0], images[r], captions[r])
        for c in range(k):
            _overlay(axes[r, c + 1], images[r], maps[r, c])
            axes[r, c + 1].set_title(f"for {classes[c]}", fontsize=8)
    _colorbar(fig, CAM_CMAP, "CAM, min-max scaled per map")
    return save_figure(fig, path)
