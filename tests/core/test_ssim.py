"""The batched SSIM against scikit-image's structural_similarity (the independent truth), for both engines: the
fused CPU kernels (numba, the CPU's default) and the torch passes (a GPU's, tested here on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from skimage import data
from skimage.metrics import structural_similarity

from layercut.contracts.errors import Cancelled, LayercutError
from layercut.stages.progress import Reporter
from layercut.stages.ssim import SimilarityAccumulator, box_mean, box_sum, similarity_matrix, ssim
from layercut.stages.ssim_kernels import BAND_ROWS

TOL = 1e-6
ENGINES = ["numba", "torch"]


def skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float, **kwargs) -> float:
    """scikit-image's SSIM of two (C, H, W) float64 images, channels on axis 0."""
    return float(structural_similarity(a, b, channel_axis=0, data_range=data_range, **kwargs))


def assert_matches_skimage(a: np.ndarray, b: np.ndarray, data_range: float, **kwargs) -> float:
    """ssim on (N, C, H, W) arrays equals scikit-image pair by pair with both engines; returns the largest deviation."""
    sk_kwargs = {"win_size": kwargs.get("win_size", 7)}
    if "k1" in kwargs:
        sk_kwargs["K1"] = kwargs["k1"]
    if "k2" in kwargs:
        sk_kwargs["K2"] = kwargs["k2"]
    ref = np.array([skimage_ssim(a[n], b[n], data_range, **sk_kwargs) for n in range(a.shape[0])])
    deviation = 0.0
    for engine in ENGINES:
        ours = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range, engine=engine, **kwargs)
        assert ours.dtype == torch.float64 and ours.shape == (a.shape[0],)
        deviation = max(deviation, float(np.abs(ours.numpy() - ref).max()))
        assert deviation < TOL, (engine, deviation, ours, ref)
    return deviation


def camera_crops(n: int, h: int, w: int) -> np.ndarray:
    """n (1, h, w) crops of scikit-image's camera picture, floats in [0, 1]."""
    image = data.camera().astype(np.float64) / 255.0
    starts = [(37 * k % (image.shape[0] - h), 53 * k % (image.shape[1] - w)) for k in range(n)]
    return np.stack([image[None, r : r + h, c : c + w] for r, c in starts])


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("data_range", [1.0, 2.0, 0.37])
@pytest.mark.parametrize("size", [(7, 7), (24, 24), (19, 41), (40, 13)])
def test_random_maps_match_skimage(channels: int, data_range: float, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(channels * 1000 + size[0] * 7 + size[1])
    a = rng.random((3, channels, *size))
    b = np.clip(a + 0.25 * rng.standard_normal(a.shape), 0, 1)
    assert_matches_skimage(a, b, data_range)
    assert_matches_skimage(a, rng.random(a.shape), data_range)  # unrelated images: low SSIM


def test_structured_maps_match_skimage() -> None:
    h, w = 32, 45
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    gradient = np.stack([xx / w, yy / h, (xx + yy) / (h + w)])
    checker = np.stack([((yy // 4 + xx // 4) % 2), ((yy // 3 + xx // 5) % 2), np.full((h, w), 0.5)])
    stripes = np.stack([np.sin(xx / 3) * 0.5 + 0.5, np.cos(yy / 2) * 0.5 + 0.5, (xx % 7) / 7])
    constant = np.full((3, h, w), 0.25)
    a = np.stack([gradient, checker, stripes, constant, gradient])
    b = np.stack([checker, stripes, gradient, constant, gradient[::-1].copy()])
    for data_range in (1.0, 2.0):
        assert_matches_skimage(a, b, data_range)


@pytest.mark.parametrize("data_range", [1.0, 2.0, 255.0])
def test_camera_crops_grayscale_and_channel_last(data_range: float) -> None:
    crops = camera_crops(6, 50, 61) * (data_range if data_range == 255.0 else 1.0)
    assert_matches_skimage(crops[:3], crops[3:], data_range)
    ours = ssim(torch.from_numpy(crops[:1]), torch.from_numpy(crops[1:2]), data_range=data_range)
    ref = structural_similarity(crops[0, 0], crops[1, 0], data_range=data_range)  # plain 2-D call
    assert abs(float(ours[0]) - ref) < TOL
    colour = np.repeat(crops, 3, axis=1) * np.array([1.0, 0.8, 0.6])[None, :, None, None]
    ours = ssim(torch.from_numpy(colour[:1]), torch.from_numpy(colour[4:5]), data_range=data_range)
    ref = structural_similarity(
        colour[0].transpose(1, 2, 0), colour[4].transpose(1, 2, 0), channel_axis=-1, data_range=data_range
    )
    assert abs(float(ours[0]) - ref) < TOL


@pytest.mark.parametrize("win_size", [3, 5, 9, 11, 15])
def test_other_window_sizes_and_constants_match_skimage(win_size: int) -> None:
    rng = np.random.default_rng(win_size)
    a = rng.random((2, 3, 30, 27))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    assert_matches_skimage(a, b, 1.0, win_size=win_size)
    assert_matches_skimage(a, b, 1.0, win_size=win_size, k1=0.05, k2=0.1)


def test_float32_inputs_are_computed_in_float64() -> None:
    rng = np.random.default_rng(5)
    a = rng.random((2, 4, 20, 20)).astype(np.float32)
    b = rng.random((2, 4, 20, 20)).astype(np.float32)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=2.0)
    assert ours.dtype == torch.float64
    ref = [skimage_ssim(a[n].astype(np.float64), b[n].astype(np.float64), 2.0) for n in range(2)]
    assert np.abs(ours.numpy() - ref).max() < 1e-12


def test_valid_average_pool_is_the_cropped_uniform_filter() -> None:
    """avg_pool2d without padding gives exactly what skimage keeps after filtering and cropping."""
    rng = np.random.default_rng(11)
    x = rng.random((3, 17, 23))
    for win in (3, 7, 9):
        pad = (win - 1) // 2
        ref = np.stack([uniform_filter(plane, size=win)[pad:-pad, pad:-pad] for plane in x])
        ours = box_mean(torch.from_numpy(x), win).numpy()
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-14


def reference_matrix(maps: np.ndarray, data_range: float) -> np.ndarray:
    """Plain double loop of scikit-image calls, averaged over images."""
    n, layers = maps.shape[:2]
    out = np.empty((layers, layers))
    for i in range(layers):
        for j in range(layers):
            out[i, j] = np.mean([skimage_ssim(maps[k, i], maps[k, j], data_range) for k in range(n)])
    return out


@pytest.fixture(scope="module")
def small_maps() -> np.ndarray:
    """3 images x 5 cut points x 3 channels of related 16x19 maps (deeper maps drift away)."""
    rng = np.random.default_rng(3)
    base = rng.random((3, 1, 3, 16, 19))
    drift = np.cumsum(0.15 * rng.standard_normal((3, 5, 3, 16, 19)), axis=1)
    return np.clip(base + drift, 0, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_similarity_matrix_equals_double_loop(small_maps: np.ndarray, engine: str) -> None:
    for data_range in (1.0, 2.0):
        ours = similarity_matrix(torch.from_numpy(small_maps), data_range=data_range, engine=engine)
        assert ours.dtype == np.float64 and ours.shape == (5, 5)
        assert np.abs(ours - reference_matrix(small_maps, data_range)).max() < TOL
        assert np.array_equal(ours, ours.T)
        assert np.array_equal(np.diag(ours), np.ones(5))


@pytest.mark.parametrize("engine", ENGINES)
def test_similarity_matrix_grayscale_and_single_image(engine: str) -> None:
    maps = camera_crops(8, 21, 30).reshape(2, 4, 1, 21, 30)
    ours = similarity_matrix(torch.from_numpy(maps), data_range=1.0, engine=engine)
    assert np.abs(ours - reference_matrix(maps, 1.0)).max() < TOL
    one = similarity_matrix(torch.from_numpy(maps[:1]), data_range=1.0, engine=engine)
    assert np.abs(one - reference_matrix(maps[:1], 1.0)).max() < TOL


@pytest.mark.parametrize("engine", ENGINES)
def test_chunk_boundaries_do_not_change_the_matrix(small_maps: np.ndarray, engine: str) -> None:
    """Chunks of pairs (torch) and groups of images (both engines: several images per group with the largest)."""
    maps = torch.from_numpy(small_maps)
    per_map = 3 * 16 * 19
    full = similarity_matrix(maps, data_range=1.0, max_elements=10**9, engine=engine)  # everything in one chunk
    assert np.abs(full - reference_matrix(small_maps, 1.0)).max() < TOL
    for max_elements in (1, per_map, 2 * per_map + 1, 4 * per_map, 5 * per_map, 7 * per_map, 16 * per_map):
        chunked = similarity_matrix(maps, data_range=1.0, max_elements=max_elements, engine=engine)
        assert np.abs(chunked - full).max() < 1e-13, max_elements


@pytest.mark.parametrize("engine", ENGINES)
def test_progress_is_reported_and_cancellation_stops(small_maps: np.ndarray, engine: str) -> None:
    updates: list[tuple[str, float, str]] = []
    reporter = Reporter(callback=lambda stage, fraction, message: updates.append((stage, fraction, message)))
    similarity_matrix(torch.from_numpy(small_maps), data_range=1.0, reporter=reporter, max_elements=1, engine=engine)
    fractions = [f for _, f, _ in updates]
    assert all(stage == "analyze" for stage, _, _ in updates)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert len(updates) > 3 and "SSIM" in updates[-1][2]
    with pytest.raises(Cancelled):
        similarity_matrix(
            torch.from_numpy(small_maps), data_range=1.0, reporter=Reporter(should_cancel=lambda: True), engine=engine
        )


def test_single_cut_point_gives_unit_matrix() -> None:
    assert np.array_equal(similarity_matrix(torch.rand(2, 1, 1, 8, 8), data_range=1.0), np.ones((1, 1)))


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "needle"),
    [
        ((2, 3, 16), (2, 3, 16), "(N, C, H, W)"),
        ((2, 3, 16, 16), (2, 3, 16, 17), "same shape"),
        ((1, 1, 6, 30), (1, 1, 6, 30), "smaller than the 7x7"),
    ],
)
def test_ssim_rejects_bad_shapes(a_shape: tuple, b_shape: tuple, needle: str) -> None:
    with pytest.raises(LayercutError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        ssim(torch.rand(a_shape), torch.rand(b_shape), data_range=1.0)


@pytest.mark.parametrize("data_range", [0.0, -1.0, float("nan"), float("inf"), None])
def test_ssim_requires_a_positive_data_range(data_range) -> None:
    with pytest.raises(LayercutError, match="data_range"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), data_range=data_range)


def test_ssim_rejects_bad_window_and_non_finite_values() -> None:
    a = torch.rand(1, 1, 9, 9)
    with pytest.raises(LayercutError, match="odd"):
        ssim(a, a, data_range=1.0, win_size=4)
    bad = a.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(LayercutError, match="NaN"):
        ssim(a, bad, data_range=1.0)


@pytest.mark.parametrize("engine", ENGINES)
def test_similarity_matrix_rejects_bad_maps(engine: str) -> None:
    with pytest.raises(LayercutError, match="N images, L cut points"):
        similarity_matrix(torch.rand(3, 1, 8, 8), data_range=1.0)
    with pytest.raises(LayercutError, match="smaller than"):
        similarity_matrix(torch.rand(1, 3, 1, 5, 8), data_range=1.0)
    with pytest.raises(LayercutError, match="at least one image"):
        similarity_matrix(torch.rand(0, 3, 1, 8, 8), data_range=1.0)
    with pytest.raises(LayercutError, match="data_range"):
        similarity_matrix(torch.rand(1, 3, 1, 8, 8), data_range=0)
    with pytest.raises(LayercutError, match="max_elements"):
        similarity_matrix(torch.rand(1, 3, 1, 8, 8), data_range=1.0, max_elements=0)
    for bad in (float("inf"), float("-inf"), float("nan")):
        maps = torch.rand(2, 3, 1, 8, 8)
        maps[1, 2, 0, 7, 7] = bad  # the last pixel of the last map: only one window holds it
        with pytest.raises(LayercutError, match="NaN or infinite"):
            similarity_matrix(maps, data_range=1.0, engine=engine)
    with pytest.raises(LayercutError, match="engine must be one of"):
        similarity_matrix(torch.rand(1, 3, 1, 8, 8), data_range=1.0, engine="fast")
    with pytest.raises(LayercutError, match="CPU only"):
        SimilarityAccumulator(3, data_range=1.0, device="cuda", engine="numba")


def test_window_sums_are_the_uniform_filter_times_the_window() -> None:
    rng = np.random.default_rng(12)
    x = rng.random((2, 3, 17, 23))
    for win in (3, 5, 7, 9):
        pad = (win - 1) // 2
        ref = np.stack([[uniform_filter(p, size=win)[pad:-pad, pad:-pad] * win * win for p in img] for img in x])
        ours = box_sum(torch.from_numpy(x), win).numpy()
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-12


@pytest.mark.parametrize("engine", ENGINES)
def test_streamed_groups_give_the_matrix_of_all_images(small_maps: np.ndarray, engine: str) -> None:
    """The analysis adds its maps batch by batch: any split of the images gives the same matrix."""
    maps = torch.from_numpy(small_maps).float()
    whole = similarity_matrix(maps, data_range=1.0, engine=engine)
    for split in ([1, 1, 1], [2, 1], [1, 2], [3]):
        accumulator = SimilarityAccumulator(5, data_range=1.0, total_images=3, max_elements=700, engine=engine)
        start = 0
        for size in split:
            accumulator.add(maps[start : start + size])
            start += size
        assert accumulator.images == 3
        assert np.abs(accumulator.matrix() - whole).max() < 1e-13, split
    assert np.abs(whole - reference_matrix(maps.double().numpy(), 1.0)).max() < TOL


def test_accumulator_refuses_other_cut_points_and_no_images() -> None:
    accumulator = SimilarityAccumulator(3, data_range=1.0)
    with pytest.raises(LayercutError, match="at least one image"):
        accumulator.matrix()
    with pytest.raises(LayercutError, match="4 cut points; this matrix has 3"):
        accumulator.add(torch.rand(1, 4, 1, 8, 8))
    accumulator.add(torch.rand(1, 3, 1, 8, 8))
    with pytest.raises(LayercutError, match="same channels and size"):
        accumulator.add(torch.rand(1, 3, 1, 9, 8))


@pytest.mark.parametrize("engine", ENGINES)
def test_large_maps_match_skimage_with_many_pairs(engine: str) -> None:
    """224 px colour maps (the size users run; seven bands of rows), chunked one pair at a time: the folded
    constants, the window sums and the buffer reuse stay within 1e-12 of scikit-image for every pair."""
    rng = np.random.default_rng(21)
    base = rng.random((1, 1, 3, 224, 224))
    maps = np.clip(base + np.cumsum(0.2 * rng.standard_normal((1, 4, 3, 224, 224)), axis=1), 0, 1)
    ours = similarity_matrix(torch.from_numpy(maps), data_range=1.0, max_elements=1, engine=engine)
    assert np.abs(ours - reference_matrix(maps, 1.0)).max() < 1e-12


@pytest.mark.parametrize(
    "height", [7, 8, BAND_ROWS + 5, BAND_ROWS + 6, BAND_ROWS + 7, 2 * BAND_ROWS + 6, 2 * BAND_ROWS + 7]
)
def test_band_boundaries_match_skimage(height: int) -> None:
    """The fused kernels restart their column sums every BAND_ROWS output rows: maps whose output rows end just
    before, at and just after a band boundary, and one-row outputs, all equal scikit-image."""
    rng = np.random.default_rng(height)
    a = rng.random((2, 2, height, 11))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    assert_matches_skimage(a, b, 1.0)
    assert_matches_skimage(a.transpose(0, 1, 3, 2).copy(), b.transpose(0, 1, 3, 2).copy(), 1.0)  # wide maps


def test_running_sums_stay_within_their_error_bound_where_the_covariance_cancels() -> None:
    """The worst case for the running column sums: maps far from 0 relative to their data range (values in
    [0.9, 1], data_range 0.1), so ``S ≈ 44`` while ``S − q + h2`` is ~1e-3. The kernels' rounding error per window
    sum, at most 2 (BAND_ROWS + win) ε · max Σ|x·y|, relative to ``h2 = (0.03 · 0.1)² · 48 / 2`` bounds the error of
    every pixel's SSIM; the SSIM equals scikit-image (and the torch engine's direct sums) within that bound."""
    rng = np.random.default_rng(8)
    u = rng.random((3, 3, 96, 80))
    a = 0.9 + 0.1 * u
    b = 0.9 + 0.1 * np.clip(0.7 * u + 0.3 * rng.random(u.shape), 0, 1)
    data_range, win = 0.1, 7
    h2 = (0.03 * data_range) ** 2 * (win * win - 1) / 2
    bound = 2 * (BAND_ROWS + win) * np.finfo(np.float64).eps * win * win / h2
    assert bound < 1e-8
    ref = np.array([skimage_ssim(a[n], b[n], data_range) for n in range(3)])
    fused = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range, engine="numba").numpy()
    direct = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=data_range, engine="torch").numpy()
    assert np.abs(fused - ref).max() < bound
    assert np.abs(fused - direct).max() < bound
    assert 0.2 < ref.min() and ref.max() < 0.9  # the covariance matters: a wrong one would show


def test_threads_give_the_same_matrix_and_stop_on_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused kernels run tiles on torch's thread count and sum them in a fixed order: bit-identical to one
    thread. A cancellation stops the pool: no SSIM thread is left running."""
    import threading

    import layercut.stages.ssim as ssim_module

    monkeypatch.setattr(ssim_module, "PAIR_PIXELS_PER_CALL", 1)  # one pair per call: many tiles in flight
    rng = np.random.default_rng(4)
    maps = torch.from_numpy(np.clip(rng.random((2, 1, 2, 20, 24)) + 0.2 * rng.standard_normal((2, 9, 2, 20, 24)), 0, 1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = similarity_matrix(maps, data_range=1.0)
        torch.set_num_threads(3)
        three = similarity_matrix(maps, data_range=1.0)
        checks = iter(range(10**6))
        with pytest.raises(Cancelled):
            similarity_matrix(maps, data_range=1.0, reporter=Reporter(should_cancel=lambda: next(checks) > 20))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, three)
    assert np.abs(one - reference_matrix(maps.numpy(), 1.0)).max() < TOL
    assert not [t for t in threading.enumerate() if t.name.startswith("layercut-ssim")]
