"""Exact, batched SSIM in torch: scikit-image's ``structural_similarity`` for many map pairs at once.

The definition is scikit-image's default one (uniform ``win_size`` x ``win_size`` window, sample
covariance ``NP / (NP - 1)``, ``K1 = 0.01``, ``K2 = 0.03``, a border of ``(win_size - 1) // 2`` pixels
cropped before the mean, mean over channels) with ``data_range`` always stated by the caller.

Why window sums over the "valid" windows are exact: scikit-image filters with
``scipy.ndimage.uniform_filter`` (reflect padding) and then crops ``pad = (win_size - 1) // 2`` pixels on every
side. A pixel survives the crop only if its whole window lies inside the image, so no padded value ever
reaches the mean; those windows are exactly the ``(H - win_size + 1) x (W - win_size + 1)`` windows summed
here. Everything is computed in float64 (TF32 never applies to float64, and no matmul or convolution is
used), so the result equals scikit-image's to about 1e-12.

How it scales with the pairs: the window means and variances of every map are computed once; per pair only
the cross term is new (one product, one separable window sum) and the per-pixel formula. On the CPU that work is
one fused pass per pair (``ssim_kernels``, compiled with numba): 0.37 ms per pair of 3 × 224 × 224 maps with one
thread on a 2-core AMD EPYC, against about 5 ms for one ``structural_similarity`` call (bench/README.md). On a GPU
(and on the CPU with ``engine="torch"``) the same arithmetic runs as about twenty vectorised in-place torch passes
over preallocated float64 buffers (1.15 ms per pair on that CPU).
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from layercut.contracts.errors import LayercutError
from layercut.stages.progress import Reporter

CPU_MAX_ELEMENTS = 2**18
"""Default working-tensor size on the CPU (float64 elements): small chunks stay in the cache."""
GPU_MAX_ELEMENTS = 2**24
"""Default working-tensor size on a GPU: large chunks keep kernel-launch overhead negligible."""
CACHE_BYTES = 2**25
"""Float64 map data (maps and their terms) of the rows of a tile of pairs, small enough to stay in a CPU's
last-level cache while the later maps stream past (measured ~10 % faster than row by row at 224 px)."""
PAIR_PIXELS_PER_CALL = 2**26
"""Pair pixels (channels × window positions × pairs) of one fused-kernel call on the CPU: about 0.15 s, so progress
and cancellation come several times a second, and a tile is large enough to reuse its maps from the cache."""
MAX_TILE_ROWS = 16
"""At most this many first maps per tile of pairs (their bands stay in the cache while the second maps pass)."""
PROGRESS_STEPS = 200
"""``similarity_matrix`` reports at most about this many progress updates (each is a cancellation point)."""

_K_DEFAULTS = (0.01, 0.03)


def _is_real(value: object) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_settings(data_range: float, win_size: int, k1: float, k2: float) -> None:
    """Reject SSIM settings that scikit-image would reject or that make the formula meaningless."""
    if not _is_real(data_range) or not math.isfinite(data_range) or data_range <= 0:
        raise LayercutError(
            f"SSIM data_range must be a positive number (got {data_range!r}); use 1.0 for map images "
            "in [0, 1], or 2.0 to reproduce the paper authors' numbers."
        )
    odd = isinstance(win_size, numbers.Integral) and not isinstance(win_size, bool) and win_size % 2 == 1
    if not odd or win_size < 3:
        raise LayercutError(f"SSIM win_size must be an odd integer of at least 3 (got {win_size!r}).")
    for name, k in (("k1", k1), ("k2", k2)):
        if not _is_real(k) or not math.isfinite(k) or k < 0:
            raise LayercutError(f"SSIM {name} must be a non-negative number (got {k!r}).")


def _check_spatial(shape: tuple[int, ...], win_size: int, what: str) -> None:
    """Maps must be at least as large as the SSIM window in both directions."""
    h, w = shape[-2], shape[-1]
    if h < win_size or w < win_size:
        raise LayercutError(
            f"{what} are {h}x{w} pixels, smaller than the {win_size}x{win_size} SSIM window; "
            f"use maps of at least {win_size}x{win_size} pixels or a smaller odd win_size."
        )


def _not_finite(what: str) -> LayercutError:
    return LayercutError(f"{what} contain NaN or infinite values; SSIM needs finite numbers.")


def _check_finite(x: torch.Tensor, what: str) -> None:
    """NaN or infinite values would silently turn every SSIM into NaN, so refuse them."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise _not_finite(what)


Engine = Literal["auto", "numba", "torch"]
ENGINES = ("auto", "numba", "torch")


def _engine(engine: str, device: torch.device) -> str:
    """``auto`` is the fused numba kernels on the CPU and torch elsewhere; ``torch`` on the CPU runs the GPU's code."""
    if engine not in ENGINES:
        raise LayercutError(f"SSIM engine must be one of {', '.join(ENGINES)} (got {engine!r}).")
    if engine == "numba" and device.type != "cpu":
        raise LayercutError(f"the numba SSIM engine runs on the CPU only; maps on {device} use engine 'torch'.")
    if engine == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return engine


def box_sum(x: torch.Tensor, win_size: int) -> torch.Tensor:
    """Sum over every fully-inside ``win_size`` window of the last two axes, as a new tensor."""
    rows = x.new_empty((*x.shape[:-1], x.shape[-1] - win_size + 1))
    out = x.new_empty((*x.shape[:-2], x.shape[-2] - win_size + 1, rows.shape[-1]))
    _window_sums(x, win_size, x.dim() - 1, rows)
    _window_sums(rows, win_size, x.dim() - 2, out)
    return out


def _window_sums(src: torch.Tensor, win_size: int, dim: int, out: torch.Tensor) -> None:
    """``out[t] = Σ_{d < win_size} src[t + d]`` along ``dim``: ``win_size - 1`` additions of shifted slices, in place.

    (Doubling — sums of 2, then 4 neighbours — needs fewer passes but measured no faster: the passes are
    limited by memory bandwidth and doubling writes two more intermediate tensors.)
    """
    width = out.shape[dim]
    torch.add(src.narrow(dim, 0, width), src.narrow(dim, 1, width), out=out)
    for shift in range(2, win_size):
        out.add_(src.narrow(dim, shift, width))


def _box_sum_into(x: torch.Tensor, win_size: int, work: _PairWork, out: torch.Tensor) -> torch.Tensor:
    """Window sums of ``x`` over its last two axes written into ``out``: separable, a few vectorised passes per
    pixel where a ``win_size``² pooling kernel costs ``win_size``² additions, and no allocation (fresh large
    tensors on the CPU cost page faults that take longer than the arithmetic)."""
    rows = work.get("rows", (*x.shape[:-1], out.shape[-1]))
    _window_sums(x, win_size, x.dim() - 1, rows)
    _window_sums(rows, win_size, x.dim() - 2, out)
    return out


def box_mean(x: torch.Tensor, win_size: int) -> torch.Tensor:
    """Mean over every fully-inside ``win_size`` window of the last two axes (the cropped uniform filter)."""
    return box_sum(x, win_size).div_(win_size * win_size)


@dataclass(frozen=True)
class _Constants:
    """SSIM's constants rescaled to window *sums* ``M = Σx`` and ``S = Σxy`` over the ``n = win_size²`` pixels.

    With ``q = M_x·M_y / n``, scikit-image's per-pixel SSIM is ``4·(q + h1)(S − q + h2) / ((P_x + P_y)(V_x + V_y))``,
    where ``P = M²/n + h1`` and ``V = Σx² − M²/n + h2`` are per-map terms, ``h1 = C1·n/2`` and ``h2 = C2·(n − 1)/2``:
    the sample covariance ``(S − q)/(n − 1)`` and means ``M/n`` substituted into ``(2μxμy + C1)(2σxy + C2) /
    ((μx² + μy² + C1)(σx² + σy² + C2))``, the factors ``2/n²`` and ``2/(n − 1)`` cancelling to 4.
    """

    win_size: int
    h1: float
    h2: float

    @classmethod
    def of(cls, data_range: float, win_size: int, k1: float, k2: float) -> _Constants:
        n = win_size * win_size
        c1 = (float(k1) * float(data_range)) ** 2
        c2 = (float(k2) * float(data_range)) ** 2
        return cls(win_size, c1 * n / 2, c2 * (n - 1) / 2)


class _PairWork:
    """Preallocated scratch tensors for up to ``capacity`` elements of map pairs: reused for every chunk."""

    def __init__(self, capacity: int, height: int, width: int, win_size: int, device: torch.device) -> None:
        out_h, out_w = height - win_size + 1, width - win_size + 1
        self.shape = (height, width)
        self.maps_per_chunk = max(1, capacity // (height * width))
        self._flat = {
            name: torch.empty(self.maps_per_chunk * size, dtype=torch.float64, device=device)
            for name, size in (
                ("product", height * width),
                ("rows", height * out_w),
                ("sums", out_h * out_w),
                ("first", out_h * out_w),
                ("second", out_h * out_w),
            )
        }

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return self._flat[name][: math.prod(shape)].view(shape)


def _map_terms_into(x: torch.Tensor, k: _Constants, work: _PairWork, terms: tuple[torch.Tensor, ...]) -> None:
    """Per-map terms of the (M, C, H, W) float64 maps ``x``, computed once per map into ``terms`` (each
    (M, C, H', W')): ``M/√n``, ``P = M²/n + h1`` and ``V = Σx² − M²/n + h2``, a chunk of maps at a time."""
    root, square, variance = terms
    step = max(1, work.maps_per_chunk // x.shape[1])
    for m0 in range(0, x.shape[0], step):
        chunk = x[m0 : m0 + step]
        r, p, v = (t[m0 : m0 + step] for t in terms)
        _box_sum_into(chunk, k.win_size, work, r).div_(k.win_size)
        _box_sum_into(torch.mul(chunk, chunk, out=work.get("product", chunk.shape)), k.win_size, work, v)
        torch.mul(r, r, out=p)
        v.sub_(p).add_(k.h2)
        p.add_(k.h1)


def _map_terms(x: torch.Tensor, k: _Constants, work: _PairWork) -> tuple[torch.Tensor, ...]:
    """``_map_terms_into`` for (..., C, H, W) maps, into new tensors."""
    maps = x.reshape(-1, *x.shape[-3:])
    out_shape = (*maps.shape[:-2], maps.shape[-2] - k.win_size + 1, maps.shape[-1] - k.win_size + 1)
    terms = tuple(torch.empty(out_shape, dtype=torch.float64, device=x.device) for _ in range(3))
    _map_terms_into(maps, k, work, terms)
    return tuple(t.view(*x.shape[:-2], *out_shape[-2:]) for t in terms)


def _pair_ssim_sums(
    x_i: torch.Tensor,
    x_j: torch.Tensor,
    terms_i: tuple[torch.Tensor, ...],
    terms_j: tuple[torch.Tensor, ...],
    k: _Constants,
    work: _PairWork,
) -> torch.Tensor:
    """Sum over channels and pixels of the SSIM map of every pair ``(x_i, x_j[..., p])``; ``x_i`` broadcasts.

    Per pair only the cross term is new: one product and one window sum, then the per-pixel formula of
    ``_Constants`` in place, about twenty vectorised passes and no allocation.
    """
    shape = torch.broadcast_shapes(x_i.shape, x_j.shape)
    out_shape = (*shape[:-2], shape[-2] - k.win_size + 1, shape[-1] - k.win_size + 1)
    # The constant h1 + h2 spread over the window's pixels, so that the window sums come out as S + h1 + h2.
    spread = x_i.new_tensor((k.h1 + k.h2) / (k.win_size * k.win_size))
    product = torch.addcmul(spread, x_j, x_i, out=work.get("product", shape))
    s = _box_sum_into(product, k.win_size, work, work.get("sums", out_shape))
    root_i, p_i, v_i = terms_i
    root_j, p_j, v_j = terms_j
    first = torch.addcmul(s.new_tensor(k.h1), root_j, root_i, out=work.get("first", out_shape))  # q + h1
    s.sub_(first).mul_(first)  # (q + h1)(S − q + h2)
    second = torch.add(v_j, v_i, out=work.get("second", out_shape))
    torch.add(p_j, p_i, out=first).mul_(second)
    return s.div_(first).flatten(-3).sum(-1)


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float,
    win_size: int = 7,
    k1: float = _K_DEFAULTS[0],
    k2: float = _K_DEFAULTS[1],
    engine: Engine = "auto",
) -> torch.Tensor:
    """SSIM of each pair ``(a[n], b[n])`` of (N, C, H, W) images as (N,) float64 on the inputs' device.

    Equals ``skimage.metrics.structural_similarity(a[n], b[n], channel_axis=0, data_range=data_range)``.
    ``engine`` as for ``SimilarityAccumulator``.
    """
    _check_settings(data_range, win_size, k1, k2)
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.dim() != 4 or b.dim() != 4:
        raise LayercutError(f"ssim expects two (N, C, H, W) tensors; got shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.shape != b.shape:
        raise LayercutError(f"ssim needs images of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.device != b.device:
        raise LayercutError(f"ssim inputs are on different devices ({a.device} and {b.device}).")
    _check_spatial(tuple(a.shape), win_size, "The images")
    _check_finite(a, "The first images")
    _check_finite(b, "The second images")
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    k = _Constants.of(data_range, win_size, k1, k2)
    n, c, h, w = a.shape
    if _engine(engine, a.device) == "numba":
        return _numba_pairs(a, b, k).mul_(4 / (c * (h - win_size + 1) * (w - win_size + 1)))
    work = _PairWork(a.numel(), h, w, win_size, a.device)
    sums = _pair_ssim_sums(a, b, _map_terms(a, k, work), _map_terms(b, k, work), k, work)
    return sums.mul_(4 / (c * (h - win_size + 1) * (w - win_size + 1)))


def _numba_pairs(a: torch.Tensor, b: torch.Tensor, k: _Constants) -> torch.Tensor:
    """``_pair_ssim_sums`` of the pairs ``(a[n], b[n])`` (float64 CPU tensors) with the fused kernels."""
    from layercut.stages import ssim_kernels

    n, c, h, w = a.shape
    maps = torch.cat([a, b]).numpy()
    terms = tuple(np.empty((2 * n, c, h - k.win_size + 1, w - k.win_size + 1)) for _ in range(3))
    if not ssim_kernels.map_terms(maps, k.win_size, k.h1, k.h2, *terms):
        raise _not_finite("The images")
    out = np.empty(n)
    ssim_kernels.pair_sums(maps, *terms, np.arange(n), np.arange(n, 2 * n), k.win_size, k.h1, k.h2, out)
    return torch.from_numpy(out)


def _check_maps(maps: torch.Tensor, win_size: int) -> None:
    """A stack of maps must be (N images, L cut points, C, H, W) with at least one image."""
    if maps.dim() != 5:
        raise LayercutError(
            f"similarity_matrix expects maps of shape (N images, L cut points, C, H, W); got shape {tuple(maps.shape)}."
        )
    n, layers = maps.shape[0], maps.shape[1]
    if n < 1 or layers < 1:
        raise LayercutError(f"similarity_matrix needs at least one image and one cut point; got {n} and {layers}.")
    if maps.shape[2] < 1:
        raise LayercutError("similarity_matrix got maps with no channels.")
    _check_spatial(tuple(maps.shape), win_size, "The maps")


def _in_order(
    work: Callable[[tuple], object], items: Iterator[tuple], pool: ThreadPoolExecutor | None, depth: int
) -> Iterator[tuple[tuple, object]]:
    """``(item, work(item))`` in the order of ``items``: here when ``pool`` is None, else on the pool with at most
    ``depth`` items in flight; when the consumer stops (a cancellation), the items not started are dropped."""
    if pool is None:
        for item in items:
            yield item, work(item)
        return
    pending: deque[tuple[tuple, Future[object]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(work, item)))
            if len(pending) >= depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:
            future.cancel()
        for _, future in pending:
            if not future.cancelled():
                future.exception()  # wait: no kernel of this call still runs on the buffers when we return


class SimilarityAccumulator:
    """SSIM between every pair of cut points, summed over images that arrive in groups (see ``add``).

    The mean over images is a sum, so maps can be streamed: each group's maps are used once and dropped, and
    ``matrix()`` after the last group equals ``similarity_matrix`` of all the maps together. Local means and
    variances of every map are computed once per group; per pair only the filtered cross product is new.
    ``engine``: ``numba`` (the CPU's default) computes each tile of pairs in one fused kernel call, on
    ``torch.get_num_threads()`` threads; ``torch`` (a GPU's, and on the CPU the way to test the GPU's code) runs
    vectorised passes in which working tensors hold at most ``max_elements`` float64 elements each (``None``:
    ``CPU_MAX_ELEMENTS`` or ``GPU_MAX_ELEMENTS`` by device). A group of images (at most ``max_elements`` map
    elements, at least one image) is converted to float64 at a time, into buffers allocated once. Progress goes to
    ``reporter.update("analyze", fraction, "SSIM: …")``, the fraction of ``total_images`` (when given) done.
    """

    def __init__(
        self,
        layers: int,
        *,
        data_range: float,
        reporter: Reporter | None = None,
        total_images: int | None = None,
        max_elements: int | None = None,
        device: torch.device | str | None = None,
        win_size: int = 7,
        k1: float = _K_DEFAULTS[0],
        k2: float = _K_DEFAULTS[1],
        engine: Engine = "auto",
    ) -> None:
        _check_settings(data_range, win_size, k1, k2)
        self.device = torch.device(device or "cpu")
        self.engine = _engine(engine, self.device)
        if max_elements is None:
            max_elements = CPU_MAX_ELEMENTS if self.device.type == "cpu" else GPU_MAX_ELEMENTS
        if not isinstance(max_elements, numbers.Integral) or isinstance(max_elements, bool) or max_elements < 1:
            raise LayercutError(f"max_elements must be a positive integer (got {max_elements!r}).")
        self.layers = int(layers)
        self.images = 0
        self.max_elements = int(max_elements)
        self.reporter = reporter
        self.total_pairs = None if total_images is None else total_images * self.layers * (self.layers - 1) // 2
        self._constants = _Constants.of(data_range, win_size, k1, k2)
        self._sums = torch.zeros(self.layers, self.layers, dtype=torch.float64, device=self.device)
        self._work: _PairWork | None = None
        self._maps64: torch.Tensor | None = None
        self._terms: tuple[torch.Tensor, ...] = ()
        self._pixels = 0
        self._pairs_done = 0
        self._reported = -1

    def add(self, maps: torch.Tensor) -> None:
        """Add the (N, L, C, H, W) maps of N more images (any float dtype; computed in float64)."""
        maps = torch.as_tensor(maps)
        _check_maps(maps, self._constants.win_size)
        n, layers, channels, height, width = maps.shape
        if layers != self.layers:
            raise LayercutError(f"similarity maps have {layers} cut points; this matrix has {self.layers}.")
        win = self._constants.win_size
        pixels = channels * (height - win + 1) * (width - win + 1)
        if self._pixels and pixels != self._pixels:
            raise LayercutError("similarity maps must keep the same channels and size in every group.")
        self._pixels = pixels
        if self.engine == "torch" and (self._work is None or self._work.shape != (height, width)):
            capacity = max(self.max_elements, channels * height * width)  # at least one pair of maps
            self._work = _PairWork(capacity, height, width, win, self.device)
        group = max(1, min(n, self.max_elements // (layers * channels * height * width)))
        self._progress()
        self._reserve(group, maps.shape[1:])
        assert self._maps64 is not None
        threads = max(1, torch.get_num_threads()) if self.engine == "numba" else 1
        with ThreadPoolExecutor(threads, "layercut-ssim") if threads > 1 else nullcontext() as pool:
            for g0 in range(0, n, group):
                source = maps[g0 : g0 + group]
                x = self._maps64[: source.shape[0]]
                x.copy_(source)
                terms = tuple(t[: source.shape[0]] for t in self._terms)
                if self.engine == "numba":
                    self._add_group_numba(x, terms, pool, threads)
                else:
                    self._add_group_torch(source, x, terms)
                self.images += x.shape[0]
                del x

    def _add_group_torch(self, source: torch.Tensor, x: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> None:
        """One group's pairs as vectorised torch passes over blocks ``(i, j0:j1)`` of pairs."""
        assert self._work is not None
        _check_finite(source, "The maps")
        _, layers, channels, height, width = x.shape
        _map_terms_into(
            x.view(-1, *x.shape[2:]), self._constants, self._work, tuple(t.view(-1, *t.shape[2:]) for t in terms)
        )
        pair_chunk = max(1, self._work.maps_per_chunk // (x.shape[0] * channels))
        # Blocks (i, j0:j1) with j0 > i are slices, not gathers: no per-pair copies of the statistics.
        blocks = [
            (i, j0, min(j0 + pair_chunk, layers)) for i in range(layers - 1) for j0 in range(i + 1, layers, pair_chunk)
        ]
        # Tiles of rows: the maps of a few rows i stay in the cache while every later map j passes by once.
        rows_per_tile = max(1, CACHE_BYTES // (4 * 8 * x.shape[0] * channels * height * width))
        blocks.sort(key=lambda block: (block[0] // rows_per_tile, block[1], block[0]))
        for i, j0, j1 in blocks:
            sums = _pair_ssim_sums(
                x[:, i : i + 1],
                x[:, j0:j1],
                tuple(t[:, i : i + 1] for t in terms),
                tuple(t[:, j0:j1] for t in terms),
                self._constants,
                self._work,
            )
            self._sums[i, j0:j1] += sums.sum(0)
            self._pairs_done += (j1 - j0) * x.shape[0]
            self._progress()

    def _add_group_numba(
        self, x: torch.Tensor, terms: tuple[torch.Tensor, ...], pool: ThreadPoolExecutor | None, threads: int
    ) -> None:
        """One group's pairs with the fused CPU kernels: the per-map terms in ``threads`` slices of the maps, then
        tiles of pairs, one kernel call each; on ``pool`` when given (the kernels release the GIL), summed in the
        tiles' order, so the matrix does not depend on the thread count."""
        from layercut.stages import ssim_kernels

        k = self._constants
        maps_np = x.view(-1, *x.shape[2:]).numpy()
        terms_np = tuple(t.view(-1, *t.shape[2:]).numpy() for t in terms)
        bounds = np.linspace(0, maps_np.shape[0], min(threads, maps_np.shape[0]) + 1).astype(int)

        def terms_of(span: tuple[int, int]) -> bool:
            a, b = span
            return bool(ssim_kernels.map_terms(maps_np[a:b], k.win_size, k.h1, k.h2, *(t[a:b] for t in terms_np)))

        spans = iter(list(zip(bounds[:-1], bounds[1:])))
        with closing(_in_order(terms_of, spans, pool, threads)) as finished:
            if not all(finite for _, finite in finished):
                raise _not_finite("The maps")
        sums = self._sums.numpy()
        layers = self.layers

        def pairs_of(tile: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
            rows, cols, image = tile
            out = np.empty(rows.shape[0])
            ssim_kernels.pair_sums(
                maps_np, *terms_np, rows + image * layers, cols + image * layers, k.win_size, k.h1, k.h2, out
            )
            return out

        tiles = self._tiles(threads)
        work = ((rows, cols, image) for image in range(x.shape[0]) for rows, cols in tiles)
        with closing(_in_order(pairs_of, work, pool, 2 * threads)) as results:
            for (rows, cols, _), out in results:
                sums[rows, cols] += out
                self._pairs_done += rows.shape[0]
                self._progress()

    def _tiles(self, threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The pairs ``i < j`` of one image as tiles of a few rows ``i`` with every later ``j``, each sorted by ``j``
        (so a map ``j`` passes through the cache once per tile), of at most ``PAIR_PIXELS_PER_CALL`` pair pixels
        and, with several threads, small enough that each thread gets at least two tiles of every image."""
        pairs = self.layers * (self.layers - 1) // 2
        pairs_per_call = max(1, PAIR_PIXELS_PER_CALL // self._pixels)
        if threads > 1:
            pairs_per_call = max(1, min(pairs_per_call, -(-pairs // (2 * threads))))
        rows_per_tile = max(1, min(MAX_TILE_ROWS, pairs_per_call // max(1, self.layers - 1)))
        first, second = np.triu_indices(self.layers, 1)
        tiles = []
        for i0 in range(0, self.layers - 1, rows_per_tile):
            chosen = (first >= i0) & (first < i0 + rows_per_tile)
            rows, cols = first[chosen], second[chosen]
            order = np.lexsort((rows, cols))
            rows, cols = rows[order], cols[order]
            for p0 in range(0, rows.shape[0], pairs_per_call):
                tiles.append((rows[p0 : p0 + pairs_per_call], cols[p0 : p0 + pairs_per_call]))
        return tiles

    def _reserve(self, group: int, shape: tuple[int, ...]) -> None:
        """Float64 copies of a group's maps and their per-map terms, allocated once and reused for every group
        (fresh large tensors cost page faults that take longer than the arithmetic)."""
        if self._maps64 is not None and self._maps64.shape[0] >= group and self._maps64.shape[1:] == shape:
            return
        win = self._constants.win_size
        layers, channels, height, width = shape
        self._maps64 = torch.empty((group, *shape), dtype=torch.float64, device=self.device)
        terms_shape = (group, layers, channels, height - win + 1, width - win + 1)
        self._terms = tuple(torch.empty(terms_shape, dtype=torch.float64, device=self.device) for _ in range(3))

    def _progress(self) -> None:
        if self.reporter is None:
            return
        total = self.total_pairs or max(self._pairs_done, 1)
        step = self._pairs_done * PROGRESS_STEPS // total
        if step > self._reported or self._pairs_done == total:
            self._reported = step
            self.reporter.update("analyze", self._pairs_done / total, f"SSIM: {self._pairs_done} of {total} map pairs")
        else:
            self.reporter.check("analyze")  # a cancellation point after every block, whatever the progress step

    def matrix(self) -> np.ndarray:
        """(L, L) float64 mean SSIM over every image added so far: symmetric, ones on the diagonal."""
        if self.images == 0:
            raise LayercutError("similarity_matrix needs at least one image; none was added.")
        upper = torch.triu(self._sums, diagonal=1).cpu().numpy() * (4.0 / (self._pixels * self.images))
        return upper + upper.T + np.eye(self.layers, dtype=np.float64)


def similarity_matrix(
    maps: torch.Tensor,
    *,
    data_range: float,
    reporter: Reporter | None = None,
    max_elements: int | None = None,
    win_size: int = 7,
    k1: float = _K_DEFAULTS[0],
    k2: float = _K_DEFAULTS[1],
    engine: Engine = "auto",
) -> np.ndarray:
    """(L, L) float64 matrix of SSIM between every pair of cut points, averaged over the N images.

    ``maps`` is (N, L, C, H, W); see ``SimilarityAccumulator`` for how the work is chunked and reported.
    """
    _check_settings(data_range, win_size, k1, k2)
    maps = torch.as_tensor(maps)
    _check_maps(maps, win_size)
    accumulator = SimilarityAccumulator(
        maps.shape[1],
        data_range=data_range,
        reporter=reporter,
        total_images=maps.shape[0],
        max_elements=max_elements,
        device=maps.device,
        win_size=win_size,
        k1=k1,
        k2=k2,
        engine=engine,
    )
    accumulator.add(maps)
    return accumulator.matrix()
