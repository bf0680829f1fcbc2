"""Curves from the similarity matrix, the map-folder reader, and the paper authors' own SSIM-cut result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from PIL import Image

from layercut.contracts.errors import LayercutError
from layercut.stages.curves import (
    CURVE_MODES,
    adjacent_curve,
    curve_from_matrix,
    cut_curve,
    read_map_folder,
)
from layercut.stages.ssim import similarity_matrix

# A small explicit similarity matrix (symmetric, unit diagonal) for hand-computed curves.
MATRIX = np.array(
    [
        [1.0, 0.8, 0.6, 0.5],
        [0.8, 1.0, 0.7, 0.4],
        [0.6, 0.7, 1.0, 0.9],
        [0.5, 0.4, 0.9, 1.0],
    ]
)


def fixture_dir() -> Path:
    """The paper fixture: the copy in tests/fixtures, else ``shared/fixtures`` beside the repository, else $LAYERCUT_FIXTURES."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "fixtures", here.parents[2].parent / "shared" / "fixtures"]
    if os.environ.get("LAYERCUT_FIXTURES"):
        candidates.append(Path(os.environ["LAYERCUT_FIXTURES"]))
    for root in candidates:
        if (root / "paper_ssim_cut" / "ssim_cut_expected.csv").is_file():
            return root / "paper_ssim_cut"
    pytest.fail(f"paper fixture not found in {', '.join(map(str, candidates))}; set LAYERCUT_FIXTURES")


def test_adjacent_curve_by_hand() -> None:
    np.testing.assert_allclose(adjacent_curve(MATRIX), [0.8, 0.7, 0.9], rtol=0, atol=1e-15)


def test_cut_curve_by_hand() -> None:
    expected = [
        (0.8 + 0.6 + 0.5) / 3,  # k=0: pairs (0,1) (0,2) (0,3)             = 0.6333…
        (0.6 + 0.5 + 0.7 + 0.4) / 4,  # k=1: pairs (0,2) (0,3) (1,2) (1,3) = 0.55
        (0.5 + 0.4 + 0.9) / 3,  # k=2: pairs (0,3) (1,3) (2,3)             = 0.6
    ]
    np.testing.assert_allclose(expected, [0.6333333333333333, 0.55, 0.6], atol=1e-15)
    np.testing.assert_allclose(cut_curve(MATRIX), expected, rtol=0, atol=1e-15)


def test_cut_curve_equals_brute_force_on_random_matrix() -> None:
    rng = np.random.default_rng(0)
    size = 11
    m = rng.random((size, size))
    expected = [np.mean([m[i, j] for i in range(k + 1) for j in range(k + 1, size)]) for k in range(size - 1)]
    np.testing.assert_allclose(cut_curve(m), expected, rtol=0, atol=1e-13)
    assert len(adjacent_curve(m)) == size - 1


def test_curve_from_matrix_modes() -> None:
    assert CURVE_MODES == ("cut", "adjacent")
    np.testing.assert_array_equal(curve_from_matrix(MATRIX, "cut"), cut_curve(MATRIX))
    np.testing.assert_array_equal(curve_from_matrix(MATRIX, "adjacent"), adjacent_curve(MATRIX))
    with pytest.raises(LayercutError, match="cut, adjacent"):
        curve_from_matrix(MATRIX, "diagonal")


@pytest.mark.parametrize("bad", [np.ones((3, 4)), np.ones(4), np.ones((1, 1)), np.full((3, 3), np.nan)])
def test_curves_reject_bad_matrices(bad: np.ndarray) -> None:
    for curve in (adjacent_curve, cut_curve):
        with pytest.raises(LayercutError):
            curve(bad)


# --- the paper authors' own maps and SSIM-cut CSV --------------------------------------------------


@pytest.fixture(scope="module")
def paper_maps() -> torch.Tensor:
    return read_map_folder(fixture_dir() / "maps")


@pytest.fixture(scope="module")
def paper_curve() -> np.ndarray:
    return np.loadtxt(fixture_dir() / "ssim_cut_expected.csv", delimiter=",")


def test_paper_maps_are_read_as_rgba_floats(paper_maps: torch.Tensor) -> None:
    assert paper_maps.shape == (1, 14, 4, 224, 224)
    assert paper_maps.dtype == torch.float64
    assert 0.0 <= float(paper_maps.min()) and float(paper_maps.max()) <= 1.0
    assert bool((paper_maps[:, :, 3] == 1.0).all())  # plt.imsave's constant alpha
    first = mpimg.imread(fixture_dir() / "maps" / "1.png")  # the authors' reader, channels last
    np.testing.assert_array_equal(paper_maps[0, 0].numpy(), first.transpose(2, 0, 1).astype(np.float64))


def test_paper_ssim_cut_curve_is_reproduced(paper_maps: torch.Tensor, paper_curve: np.ndarray) -> None:
    ours = cut_curve(similarity_matrix(paper_maps, data_range=2.0))
    assert ours.shape == (13,)
    deviation = np.abs(ours - paper_curve).max()
    assert deviation < 1e-5, deviation  # the CSV has 6 decimals; measured ~5e-7


def test_other_settings_do_not_reproduce_the_paper(paper_maps: torch.Tensor, paper_curve: np.ndarray) -> None:
    """Why the compatibility settings matter: data_range=1 or dropping alpha moves the curve by 0.05+."""
    range_one = cut_curve(similarity_matrix(paper_maps, data_range=1.0))
    no_alpha = cut_curve(similarity_matrix(paper_maps[:, :, :3], data_range=2.0))
    assert np.abs(range_one - paper_curve).min() > 0.05
    assert np.abs(no_alpha - paper_curve).min() > 0.05


# --- read_map_folder errors -------------------------------------------------------------------------


def write_map(path: Path, height: int = 10, width: int = 12, mode: str = "RGBA", seed: int = 0) -> np.ndarray:
    """Save a random 8-bit PNG and return what matplotlib reads back."""
    rng = np.random.default_rng(seed)
    channels = {"RGBA": 4, "RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)
    return mpimg.imread(path)


def test_reads_numbered_maps_in_numeric_order(tmp_path: Path) -> None:
    expected = [write_map(tmp_path / f"{n}.png", seed=n) for n in range(1, 12)]
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "overview.png").write_bytes(b"not numbered, ignored")
    maps = read_map_folder(tmp_path)
    assert maps.shape == (1, 11, 4, 10, 12) and maps.dtype == torch.float64
    for n in range(11):  # 10.png and 11.png come after 9.png, not after 1.png
        np.testing.assert_array_equal(maps[0, n].numpy(), expected[n].transpose(2, 0, 1))


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_reads_rgb_and_grayscale_maps(tmp_path: Path, mode: str, channels: int) -> None:
    expected = [write_map(tmp_path / f"{n}.png", mode=mode, seed=n) for n in (1, 2)]
    maps = read_map_folder(tmp_path)
    assert maps.shape == (1, 2, channels, 10, 12)
    for n, read in enumerate(expected):  # matplotlib gives (H, W, 3) for RGB and (H, W) for grayscale
        chw = read.transpose(2, 0, 1) if read.ndim == 3 else read[None]
        np.testing.assert_array_equal(maps[0, n].numpy(), chw)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(LayercutError, match="does not exist"):
        read_map_folder(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no maps here")
    with pytest.raises(LayercutError, match=r"no map images; name them 1\.png"):
        read_map_folder(tmp_path)


def test_gap_in_numbering_names_the_missing_file(tmp_path: Path) -> None:
    for n in (1, 2, 4, 5):
        write_map(tmp_path / f"{n}.png", seed=n)
    with pytest.raises(LayercutError, match=r"3\.png missing"):
        read_map_folder(tmp_path)


def test_mismatched_shape_names_the_file(tmp_path: Path) -> None:
    write_map(tmp_path / "1.png")
    write_map(tmp_path / "2.png", height=11)
    with pytest.raises(LayercutError, match=r"2\.png has shape \(4, 11, 12\)"):
        read_map_folder(tmp_path)


def test_mismatched_channels_names_the_file(tmp_path: Path) -> None:
    write_map(tmp_path / "1.png")
    write_map(tmp_path / "2.png")
    write_map(tmp_path / "3.png", mode="RGB")
    with pytest.raises(LayercutError, match=r"3\.png has shape \(3, 10, 12\)"):
        read_map_folder(tmp_path)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    write_map(tmp_path / "1.png")
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(LayercutError, match=r"Cannot read map image .*2\.png"):
        read_map_folder(tmp_path)


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    write_map(tmp_path / "1.png")
    write_map(tmp_path / "01.png")
    with pytest.raises(LayercutError, match="numbered 1"):
        read_map_folder(tmp_path)
