"""find_knee against kneed itself, and the documented fallback rule computed by hand."""

from __future__ import annotations

import dataclasses
import warnings

import kneed
import numpy as np
import pytest

from layercut.contracts.errors import LayercutError
from layercut.stages.knee import KneeResult, find_knee, rise_fraction_index

X = np.arange(12, dtype=np.float64)
# The paper authors' SSIM-cut curve (fixtures/paper_ssim_cut/ssim_cut_expected.csv), written out.
PAPER_CUT = np.array(
    [
        0.408512,
        0.474048,
        0.5297,
        0.514759,
        0.572826,
        0.610474,
        0.618291,
        0.644553,
        0.679047,
        0.703123,
        0.715669,
        0.725765,
        0.751708,
    ]
)


def kneed_knee(y: np.ndarray, **kwargs) -> int | None:
    """kneed's own answer on x = 0 .. len-1."""
    knee = kneed.KneeLocator(np.arange(len(y)), y, **kwargs).knee
    return None if knee is None else int(knee)


@pytest.mark.parametrize(
    "y",
    [np.sqrt(X), np.log1p(X), 1 - np.exp(-X / 3), np.minimum(X, 4) + 0.05 * X, PAPER_CUT],
    ids=["sqrt", "log1p", "saturating-exp", "bent-line", "paper-cut-curve"],
)
def test_concave_increasing_equals_kneed(y: np.ndarray) -> None:
    expected = kneed_knee(y, curve="concave", direction="increasing", S=1.0)
    assert expected is not None
    result = find_knee(y)
    assert (result.index, result.found, result.rule, result.reason) == (expected, True, "kneed", None)


def test_paper_cut_curve_knee() -> None:
    assert find_knee(PAPER_CUT).index == 2


@pytest.mark.parametrize(
    ("y", "curve", "direction", "S"),
    [
        (np.sqrt(X), "concave", "increasing", 0.5),
        (np.sqrt(X), "concave", "increasing", 2.0),
        (np.exp(X / 3), "convex", "increasing", 1.0),
        (X**2, "convex", "increasing", 0.5),
        (np.exp(-X / 3), "convex", "decreasing", 1.0),
        (-(X**2), "concave", "decreasing", 1.0),
        (PAPER_CUT[::-1].copy(), "concave", "decreasing", 1.0),
        (-np.sqrt(X), "convex", "decreasing", 2.0),
    ],
)
def test_other_settings_equal_kneed(y: np.ndarray, curve: str, direction: str, S: float) -> None:
    expected = kneed_knee(y, curve=curve, direction=direction, S=S)
    assert expected is not None
    result = find_knee(y, S=S, curve=curve, direction=direction)
    assert result.index == expected and result.found and result.rule == "kneed"
    assert (result.S, result.curve, result.direction) == (S, curve, direction)


def test_straight_line_falls_back_to_rise_fraction() -> None:
    y = 2 * X + 1  # 1, 3, …, 23: kneed finds no knee on a straight line
    assert kneed_knee(y) is None
    result = find_knee(y)
    # rise 23 - 1 = 22; 90 % of it is reached at 1 + 19.8 = 20.8: y[9] = 19 < 20.8 <= y[10] = 21
    assert (result.index, result.found, result.rule) == (10, False, "fallback:rise-fraction")
    assert "kneed found no knee" in result.reason and "index 10" in result.reason and "90%" in result.reason
    # with half the rise: 1 + 11 = 12, y[5] = 11 < 12 <= y[6] = 13
    assert find_knee(y, fallback_fraction=0.5).index == 6


def test_paper_curve_with_strict_S_falls_back() -> None:
    assert kneed_knee(PAPER_CUT, S=3.0) is None
    result = find_knee(PAPER_CUT, S=3.0)
    # min 0.408512 (index 0), max 0.751708 (index 12): target 0.408512 + 0.9 * 0.343196 = 0.7173884;
    # y[10] = 0.715669 < target <= y[11] = 0.725765
    assert (result.index, result.found, result.rule) == (11, False, "fallback:rise-fraction")
    assert "S=3" in result.reason


def test_decreasing_line_falls_back_on_its_fall() -> None:
    y = -(2 * X + 1)
    assert kneed_knee(y, direction="decreasing") is None
    result = find_knee(y, direction="decreasing")
    assert (result.index, result.rule) == (10, "fallback:rise-fraction") and "fall" in result.reason


@pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
def test_flat_curve_keeps_the_whole_network(value: float) -> None:
    # 7 curve values = 8 cut points: index 7 is the last cut point (every layer kept, the head replaced)
    result = find_knee(np.full(7, value))
    assert (result.index, result.found, result.rule) == (7, False, "fallback:whole-network")
    assert "flat" in result.reason and "whole network is kept (cut point 7" in result.reason


@pytest.mark.parametrize("curve", [-np.sqrt(X), -(2 * X + 1), -(X**2), 1 - np.sqrt(X) + 0.05 * np.sin(3 * X)])
def test_a_falling_curve_is_reported_as_falling_never_as_a_found_knee(curve: np.ndarray) -> None:
    assert kneed_knee(curve) == 0 or kneed_knee(curve) is None  # kneed alone would call the first point a knee
    result = find_knee(curve)
    assert (result.index, result.found, result.rule) == (len(curve), False, "fallback:whole-network")
    assert "falls overall" in result.reason and "whole network is kept" in result.reason


def test_a_rising_curve_with_decreasing_settings_is_reported_as_rising() -> None:
    result = find_knee(np.sqrt(X), direction="decreasing")
    assert (result.index, result.found, result.rule) == (X.size, False, "fallback:whole-network")
    assert "rises overall" in result.reason


def test_no_warning_escapes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        find_knee(np.ones(5))
        find_knee(2 * X + 1)
        find_knee(np.sqrt(X))


class _NoKnee:
    """Stands in for kneed.KneeLocator: finds nothing and warns the way upstream kneed does."""

    def __init__(self, *args, **kwargs) -> None:
        warnings.warn("No knee/elbow found", UserWarning, stacklevel=2)
        self.knee = None


class _Broken:
    def __init__(self, *args, **kwargs) -> None:
        raise ValueError("boom")


def test_kneed_finding_none_is_said_with_its_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kneed, "KneeLocator", _NoKnee)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = find_knee(np.array([0.2, 0.5, 0.2]))  # rises, then comes back: not falling overall
    assert (result.index, result.found, result.rule) == (1, False, "fallback:rise-fraction")
    assert "No knee/elbow found" in result.reason


def test_kneed_failure_ends_in_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kneed, "KneeLocator", _Broken)
    result = find_knee(2 * X + 1)
    assert (result.index, result.found, result.rule) == (10, False, "fallback:rise-fraction")
    assert "kneed failed: boom" in result.reason


def test_rise_fraction_uses_the_largest_rise() -> None:
    y = np.array([5.0, 0.0, 2.0, 4.0, 10.0, 3.0])
    # largest rise: 0 (index 1) -> 10 (index 4); 90 % = 9 first reached at index 4, 30 % = 3 at index 3
    assert rise_fraction_index(y, 0.9, "increasing") == 4
    assert rise_fraction_index(y, 0.3, "increasing") == 3
    assert rise_fraction_index(y, 1.0, "increasing") == 4
    assert rise_fraction_index(-y, 0.3, "decreasing") == 3
    assert rise_fraction_index(np.array([3.0, 2.0, 1.0]), 0.9, "increasing") is None
    assert rise_fraction_index(np.array([1.0, 2.0, 3.0]), 0.9, "decreasing") is None
    assert rise_fraction_index(np.array([0.0, 1.0]), 0.9, "increasing") == 1


def test_result_is_frozen_and_serialisable() -> None:
    result = find_knee(np.sqrt(X))
    assert isinstance(result, KneeResult)
    assert result.to_dict() == {
        "index": 3,
        "found": True,
        "rule": "kneed",
        "reason": None,
        "S": 1.0,
        "curve": "concave",
        "direction": "increasing",
        "fallback_fraction": 0.9,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.index = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "kwargs", "needle"),
    [
        ([0.5], {}, "at least 2 values; got 1.*at least 3 cut points"),
        ([], {}, "at least 2 values; got 0"),
        ([0.1, float("nan"), 0.3], {}, "NaN or infinite"),
        ([0.1, float("inf")], {}, "NaN or infinite"),
        ([[0.1, 0.2], [0.3, 0.4]], {}, "one-dimensional"),
        (["a", "b"], {}, "list of numbers"),
        ([0.1, 0.2, 0.3], {"curve": "wavy"}, "Unknown knee curve 'wavy'; choose one of concave, convex"),
        ([0.1, 0.2, 0.3], {"direction": "up"}, "Unknown knee direction 'up'"),
        ([0.1, 0.2, 0.3], {"S": -1.0}, "sensitivity S"),
        ([0.1, 0.2, 0.3], {"S": float("nan")}, "sensitivity S"),
        ([0.1, 0.2, 0.3], {"fallback_fraction": 0.0}, "fallback_fraction"),
        ([0.1, 0.2, 0.3], {"fallback_fraction": 1.5}, "fallback_fraction"),
    ],
)
def test_bad_input_is_refused(values, kwargs: dict, needle: str) -> None:
    with pytest.raises(LayercutError, match=needle):
        find_knee(values, **kwargs)
