"""Curves over depth from one SSIM similarity matrix, and the reader for saved map folders.

Both curves come from the same (L, L) matrix ``M`` of SSIM between cut points (in depth order):

- *adjacent*: value ``i = M[i, i + 1]`` for ``i = 0 .. L-2`` (the reference study's plot);
- *cut*: value ``k`` = mean of ``M[i, j]`` over all pairs ``i <= k < j`` for ``k = 0 .. L-2``
  (the paper's "SSIM cut curve": how alike the layers kept are to the layers a cut after ``k`` drops).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from layercut.contracts.errors import DataError, LayercutError

CURVE_MODES = ("cut", "adjacent")
_MAP_NAME = re.compile(r"^([0-9]+)\.png$", re.IGNORECASE)


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    """A similarity matrix must be square, at least 2x2 and finite (returned as float64)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise LayercutError(f"A similarity matrix must be square (L x L); got shape {m.shape}.")
    if m.shape[0] < 2:
        raise LayercutError(
            f"A curve needs a similarity matrix of at least 2 cut points; got {m.shape[0]}. Analyse more cut points."
        )
    if not np.isfinite(m).all():
        raise LayercutError("The similarity matrix contains NaN or infinite values.")
    return m


def adjacent_curve(matrix: np.ndarray) -> np.ndarray:
    """SSIM of each cut point with the next one: value i = M[i, i+1], length L-1."""
    m = _check_matrix(matrix)
    return np.diagonal(m, offset=1).copy()


def cut_curve(matrix: np.ndarray) -> np.ndarray:
    """Mean SSIM across each possible cut: value k = mean of M[i, j] over i <= k < j, length L-1.

    Uses 2-D prefix sums of the upper triangle, so it costs O(L^2) for all k together.
    """
    m = _check_matrix(matrix)
    size = m.shape[0]
    # tail[i, b] = sum_{j >= b} M[i, j]; block[a, b] = sum_{i <= a} tail[i, b]
    tail = np.cumsum(m[:, ::-1], axis=1)[:, ::-1]
    block = np.cumsum(tail, axis=0)
    k = np.arange(size - 1)
    counts = (k + 1) * (size - 1 - k)
    return block[k, k + 1] / counts


def curve_from_matrix(matrix: np.ndarray, mode: str) -> np.ndarray:
    """The curve named by ``mode`` ("cut" or "adjacent") from the similarity matrix."""
    if mode == "cut":
        return cut_curve(matrix)
    if mode == "adjacent":
        return adjacent_curve(matrix)
    raise LayercutError(f"Unknown curve mode {mode!r}; choose one of {', '.join(CURVE_MODES)}.")


def _numbered_pngs(folder: Path) -> dict[int, Path]:
    """Map number -> file for every ``<number>.png`` in the folder; other files are ignored."""
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        match = _MAP_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(
                f"Two files in {folder} are numbered {number}: {found[number].name} and {entry.name}; keep one."
            )
        found[number] = entry
    return found


def _read_png(path: Path) -> np.ndarray:
    """One PNG as float (C, H, W) in [0, 1] with all its channels, as matplotlib's ``imread`` reads it."""
    from matplotlib import image as mpimg

    try:
        array = np.asarray(mpimg.imread(path), dtype=np.float64)
    except Exception as exc:  # any decoder failure means the file cannot be used
        raise DataError(f"Cannot read map image {path}: {exc}. Replace or remove the file.") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataError(f"Map image {path} has an unexpected shape {array.shape}.")
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def read_map_folder(path: str | Path) -> torch.Tensor:
    """Read maps saved as 1.png … N.png (depth order) into a (1, N, C, H, W) float64 tensor in [0, 1].

    Channels are kept as matplotlib's ``imread`` gives them (an RGBA PNG gives 4), as the paper authors'
    SSIM code read them.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"Map folder {folder} does not exist or is not a folder.")
    files = _numbered_pngs(folder)
    if not files:
        raise DataError(f"Map folder {folder} has no map images; name them 1.png, 2.png, … in depth order.")
    count = max(files)
    missing = [n for n in range(1, count + 1) if n not in files]
    if missing:
        shown = ", ".join(f"{n}.png" for n in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DataError(
            f"Map folder {folder} has a gap in its numbering: {shown} missing (found up to {count}.png); "
            "maps must be numbered 1.png … N.png without gaps."
        )
    arrays = []
    for number in range(1, count + 1):
        array = _read_png(files[number])
        if arrays and array.shape != arrays[0].shape:
            raise DataError(
                f"Map image {files[number]} has shape {array.shape} (channels, height, width) but 1.png has "
                f"{arrays[0].shape}; all maps must have the same size and channels."
            )
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays))[None]
