"""Fused CPU kernels of the batched SSIM, compiled with numba: one pass over a pair of maps instead of twenty.

Why our own kernel: the torch formulation in ``ssim.py`` runs about twenty vectorised passes per pair (a product,
twelve slice additions for the window sums, the per-pixel formula), each reading and writing whole float64
tensors, so at 224 px it is bound by memory bandwidth (1.15 ms per pair of 3 × 224 × 224 maps with one thread).
These kernels do the same arithmetic row by row while the row is in the L1 cache: 0.35 ms per pair
(bench/README.md). The GPU keeps the torch formulation, where twenty passes cost little.

The window sums are exact in the same sense as ``ssim.py``'s: only fully-inside windows are summed, in float64.
Column sums (over ``win`` rows) are updated as a row enters the window and one leaves it, and restarted from scratch
every ``BAND_ROWS`` output rows, so each column sum is the result of at most ``BAND_ROWS + win`` additions and
subtractions of products: its rounding error is below ``2 (BAND_ROWS + win) ε · max Σ|x·y|`` (ε = 2⁻⁵³), about
1e-13 for maps in [0, 1]; the bound is checked against scikit-image in tests/core/test_ssim.py on maps made to
cancel. Row window sums are built by doubling (sums of 1, 2, 4 … neighbours), ``log2(win)`` passes plus one per
set bit of ``win``, where direct sums need ``win − 1``. Bands also keep every map's band of rows in the cache while
the pairs of a tile pass over it.
"""

from __future__ import annotations

import numba
import numpy as np

BAND_ROWS = 32
"""Output rows per band: the column sums restart at every band (bounding their rounding error), and one band of
every map in a tile stays in the cache while the tile's pairs pass over it."""


@numba.njit(cache=True, nogil=True, inline="always")
def _levels(win: int) -> int:
    """How many doubling levels the row window sums of ``win`` columns use (sums of 1, 2, 4 … columns)."""
    levels = 1
    span = 1
    while 2 * span <= win:
        span *= 2
        levels += 1
    return levels


@numba.njit(cache=True, nogil=True, inline="always")
def _row_window_sums(lv: np.ndarray, win: int, out: np.ndarray) -> None:
    """``out[w] = Σ_{d < win} lv[0, w + d]``: doubling sums into ``lv[1:]``, then the set bits of ``win`` added.
    (Rows and shifts are taken as separate views: indexing one 2-D array at a runtime offset kept LLVM from
    vectorising the loops, 1.6× slower per pair.)"""
    width = lv.shape[1]
    out_w = out.shape[0]
    span = 1
    level = 0
    while 2 * span <= win:
        size = width - 2 * span + 1
        src = lv[level]
        shifted = src[span : span + size]
        dst = lv[level + 1]
        for w in range(size):
            dst[w] = src[w] + shifted[w]
        span *= 2
        level += 1
    top = lv[level]
    for w in range(out_w):
        out[w] = top[w]
    offset = span
    left = win - span
    while left > 0:
        level -= 1
        span //= 2
        if left >= span:
            part = lv[level][offset : offset + out_w]
            for w in range(out_w):
                out[w] += part[w]
            offset += span
            left -= span


@numba.njit(cache=True, nogil=True)
def map_terms(
    x: np.ndarray, win: int, h1: float, h2: float, root: np.ndarray, square: np.ndarray, variance: np.ndarray
) -> bool:
    """Per-map terms of the (M, C, H, W) float64 maps ``x`` into the (M, C, H', W') arrays: ``root = Σx/win``,
    ``square = root² + h1`` and ``variance = Σx² − root² + h2`` over every fully-inside window (see
    ``ssim._Constants``). Returns whether every value of ``x`` is finite (``value − value`` is 0 for a finite value and
    NaN otherwise, summed without a branch so that the loops stay vectorised)."""
    n_maps, channels, height, width = x.shape
    out_h = height - win + 1
    out_w = width - win + 1
    levels = _levels(win)
    lv_sum = np.empty((levels, width))
    lv_squares = np.empty((levels, width))
    box = np.empty(out_w)
    box_squares = np.empty(out_w)
    check = 0.0
    for m in range(n_maps):
        for c in range(channels):
            plane = x[m, c]
            for r0 in range(0, out_h, BAND_ROWS):
                r1 = min(r0 + BAND_ROWS, out_h)
                for w in range(width):
                    lv_sum[0, w] = 0.0
                    lv_squares[0, w] = 0.0
                for r in range(r0, r0 + win):
                    for w in range(width):
                        value = plane[r, w]
                        check += value - value
                        lv_sum[0, w] += value
                        lv_squares[0, w] += value * value
                for r in range(r0, r1):
                    if r > r0:
                        new = r + win - 1
                        for w in range(width):
                            value = plane[new, w]
                            check += value - value
                            old = plane[r - 1, w]
                            lv_sum[0, w] += value - old
                            lv_squares[0, w] += value * value - old * old
                    _row_window_sums(lv_sum, win, box)
                    _row_window_sums(lv_squares, win, box_squares)
                    root_row = root[m, c, r]
                    square_row = square[m, c, r]
                    variance_row = variance[m, c, r]
                    for w in range(out_w):
                        mean_root = box[w] / win
                        mean_square = mean_root * mean_root
                        root_row[w] = mean_root
                        square_row[w] = mean_square + h1
                        variance_row[w] = box_squares[w] - mean_square + h2
    return check == 0.0


@numba.njit(cache=True, nogil=True)
def pair_sums(
    x: np.ndarray,
    root: np.ndarray,
    square: np.ndarray,
    variance: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    win: int,
    h1: float,
    h2: float,
    out: np.ndarray,
) -> None:
    """``out[k]`` = the sum over channels and pixels of ``4·(q + h1)(S − q + h2) / ((P_a + P_b)(V_a + V_b))`` (the
    SSIM map over 4, see ``ssim._Constants``) of the maps ``a = first[k]``, ``b = second[k]`` of ``x``, with the
    terms of ``map_terms``. Pairs are visited band by band, in the given order (a tile sorted by its second map
    keeps that map's band in the cache for every pair that uses it)."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h = height - win + 1
    out_w = width - win + 1
    levels = _levels(win)
    lv = np.empty((levels, width))
    ring = np.empty((win, width))
    sums = np.empty(out_w)
    acc = np.empty(out_w)
    both = h1 + h2
    for k in range(first.shape[0]):
        out[k] = 0.0
    for c in range(channels):
        for r0 in range(0, out_h, BAND_ROWS):
            r1 = min(r0 + BAND_ROWS, out_h)
            for k in range(first.shape[0]):
                a = first[k]
                b = second[k]
                xa = x[a, c]
                xb = x[b, c]
                for w in range(width):
                    lv[0, w] = 0.0
                for r in range(r0, r0 + win):
                    slot = r % win
                    for w in range(width):
                        product = xa[r, w] * xb[r, w]
                        ring[slot, w] = product
                        lv[0, w] += product
                for w in range(out_w):
                    acc[w] = 0.0
                for r in range(r0, r1):
                    if r > r0:
                        new = r + win - 1
                        slot = new % win
                        for w in range(width):
                            product = xa[new, w] * xb[new, w]
                            lv[0, w] += product - ring[slot, w]
                            ring[slot, w] = product
                    _row_window_sums(lv, win, sums)
                    root_a = root[a, c, r]
                    root_b = root[b, c, r]
                    square_a = square[a, c, r]
                    square_b = square[b, c, r]
                    variance_a = variance[a, c, r]
                    variance_b = variance[b, c, r]
                    for w in range(out_w):
                        mean_term = root_a[w] * root_b[w] + h1
                        numerator = mean_term * (sums[w] + both - mean_term)
                        acc[w] += numerator / ((square_a[w] + square_b[w]) * (variance_a[w] + variance_b[w]))
                total = 0.0
                for w in range(out_w):
                    total += acc[w]
                out[k] += total
