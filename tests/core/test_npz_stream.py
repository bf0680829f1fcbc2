"""An npz written piece by piece reads back with numpy exactly as np.savez would have written it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layercut.contracts.errors import LayercutError
from layercut.stages.npz_stream import NpzWriter


def test_streamed_and_whole_arrays_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((5, 3, 2, 4, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 0])
    path = tmp_path / "maps.npz"
    with NpzWriter(path) as npz:
        npz.add("labels", labels)
        npz.add("names", np.array(["conv1", "layer1.0"]))
        stream = npz.stream("maps", maps.shape, np.float32)
        for start in (0, 2, 3):
            stream.write(maps[start : {0: 2, 2: 3, 3: 5}[start]])
    with np.load(path) as loaded:
        assert sorted(loaded.files) == ["labels", "maps", "names"]
        assert np.array_equal(loaded["maps"], maps) and loaded["maps"].dtype == np.float32
        assert np.array_equal(loaded["labels"], labels)
        assert loaded["names"].tolist() == ["conv1", "layer1.0"]
    assert not list(tmp_path.glob("*.partial"))


def test_an_incomplete_or_failed_archive_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "maps.npz"
    with pytest.raises(LayercutError, match="1 of 3 rows"):
        with NpzWriter(path) as npz:
            npz.stream("maps", (3, 2), np.float32).write(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="boom"):
        with NpzWriter(path) as npz:
            npz.stream("maps", (3, 2), np.float32).write(np.zeros((2, 2), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_piece_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LayercutError, match="does not continue"):
        with NpzWriter(tmp_path / "maps.npz") as npz:
            stream = npz.stream("maps", (2, 3), np.float32)
            stream.write(np.zeros((2, 4), np.float32))
    with pytest.raises(LayercutError, match="still being written"):
        with NpzWriter(tmp_path / "other.npz") as npz:
            npz.stream("maps", (2, 3), np.float32)
            npz.add("labels", np.zeros(2))
