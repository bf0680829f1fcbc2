"""The knee of an SSIM curve: where layers stop learning new features.

The knee is what ``kneed.KneeLocator(x, y, curve=..., direction=..., S=...)`` returns for
``x = 0, 1, …, len(y) - 1`` (defaults: ``curve="concave"``, ``direction="increasing"``, ``S=1.0``, as in
the paper). The returned ``index`` is an index into the curve.

When kneed finds no knee (it returns None, e.g. for a straight line or a too strict ``S``), a fallback
rule chooses the index instead, and the result says so (``found=False``, ``rule``, ``reason``):

- ``"fallback:rise-fraction"``: take the curve's largest rise, from a minimum to the highest value after
  it (for ``direction="decreasing"``: its largest fall, from a maximum to the lowest value after it). The
  index is the first one, from that minimum on, where the curve has covered ``fallback_fraction``
  (default 0.9, i.e. 90 %) of that rise. For a curve that rises overall this is the first depth at which
  the curve is 90 % of the way from its lowest to its highest value.
- ``"fallback:whole-network"``: if the curve has no rise at all (it is flat, or it only moves the other
  way), or it moves against ``direction`` overall (its last value is below its first, for an increasing
  curve), there is no depth where learning levels off: nothing should be cut, so the index is ``len(y)``,
  one past the curve's end — the last cut point, which keeps every layer and replaces only the head.
  kneed is not asked about such a curve (on a falling curve it would return its first point as a knee).

Changes smaller than ``1e-12`` times the curve's scale count as no change. The fallback never happens
silently: ``reason`` says, in a sentence, why it was used (including any warning kneed gave).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from layercut.contracts.errors import LayercutError

CURVES = ("concave", "convex")
DIRECTIONS = ("increasing", "decreasing")
RULE_KNEED = "kneed"
RULE_RISE_FRACTION = "fallback:rise-fraction"
RULE_WHOLE_NETWORK = "fallback:whole-network"
_FLAT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class KneeResult:
    """The chosen index into the curve, how it was chosen, and the kneed settings used."""

    index: int
    found: bool
    rule: str
    reason: str | None
    S: float
    curve: str
    direction: str
    fallback_fraction: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary of every field."""
        return asdict(self)


def _validate(
    values: Sequence[float] | np.ndarray, S: float, curve: str, direction: str, fallback_fraction: float
) -> np.ndarray:
    """Check the curve and the settings; return the curve as a 1-D float64 array."""
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LayercutError(f"The curve for the knee must be a list of numbers ({exc}).") from exc
    if y.ndim != 1:
        raise LayercutError(f"The curve for the knee must be one-dimensional; got shape {y.shape}.")
    if y.size < 2:
        raise LayercutError(
            f"Finding a knee needs a curve of at least 2 values; got {y.size}. A curve has one value "
            "fewer than there are cut points, so analyse at least 3 cut points, "
            "or name the cut point yourself."
        )
    if not np.isfinite(y).all():
        raise LayercutError("The curve for the knee contains NaN or infinite values.")
    if curve not in CURVES:
        raise LayercutError(f"Unknown knee curve {curve!r}; choose one of {', '.join(CURVES)}.")
    if direction not in DIRECTIONS:
        raise LayercutError(f"Unknown knee direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
    if isinstance(S, bool) or not isinstance(S, (int, float)) or not math.isfinite(S) or S < 0:
        raise LayercutError(f"The knee sensitivity S must be a non-negative number; got {S!r}.")
    if not isinstance(fallback_fraction, (int, float)) or not 0 < fallback_fraction <= 1:
        raise LayercutError(f"fallback_fraction must be in (0, 1]; got {fallback_fraction!r}.")
    return y


def _tolerance(y: np.ndarray) -> float:
    """Changes at or below this size are rounding noise, not a rise."""
    return _FLAT_TOLERANCE * max(1.0, float(np.max(np.abs(y))))


def _largest_rise(v: np.ndarray) -> tuple[int, int, float]:
    """(start, end, rise) of the largest ``v[end] - v[start]`` with start <= end (earliest on ties)."""
    low, start, end, best = 0, 0, 0, 0.0
    for j in range(1, v.size):
        if v[j] < v[low]:
            low = j
        if v[j] - v[low] > best:
            start, end, best = low, j, float(v[j] - v[low])
    return start, end, best


def rise_fraction_index(values: np.ndarray, fraction: float, direction: str) -> int | None:
    """First index where the curve has covered ``fraction`` of its largest rise (fall if decreasing).

    Returns None when the curve has no rise in that direction (flat, or monotone the other way).
    """
    y = np.asarray(values, dtype=np.float64)
    v = y if direction == "increasing" else -y
    start, end, rise = _largest_rise(v)
    if rise <= _tolerance(y):
        return None
    for k in range(start, end + 1):
        if v[k] - v[start] >= fraction * rise:
            return k
    return end  # unreachable: v[end] - v[start] == rise >= fraction * rise


def _run_kneed(y: np.ndarray, S: float, curve: str, direction: str) -> tuple[int | None, list[str]]:
    """kneed's knee as an index (or None) and the messages of any warnings or error it raised."""
    from kneed import KneeLocator

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            knee = KneeLocator(np.arange(y.size), y, S=S, curve=curve, direction=direction).knee
            failure = None
        except Exception as exc:  # kneed failing must end in the documented fallback, not a crash
            knee, failure = None, f"kneed failed: {exc}"
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    if failure is not None:
        messages.insert(0, failure)
    return (None if knee is None else int(knee)), messages


def find_knee(
    values: Sequence[float] | np.ndarray,
    *,
    S: float = 1.0,
    curve: str = "concave",
    direction: str = "increasing",
    fallback_fraction: float = 0.9,
) -> KneeResult:
    """Index of the curve's knee by kneed, or by the documented fallback rule (see the module docstring)."""
    y = _validate(values, S, curve, direction, fallback_fraction)
    settings = dict(S=float(S), curve=curve, direction=direction, fallback_fraction=float(fallback_fraction))
    whole = y.size  # the cut point after the curve's last value: every layer kept
    keep_all = f"so no depth levels off and the whole network is kept (cut point {whole}, only the head replaced)"

    if float(np.ptp(y)) <= _tolerance(y):
        reason = f"The curve is flat (all {y.size} values are {y[0]:.6g}), {keep_all}."
        return KneeResult(index=whole, found=False, rule=RULE_WHOLE_NETWORK, reason=reason, **settings)
    against = y[-1] < y[0] if direction == "increasing" else y[-1] > y[0]
    if against:
        moves = "falls" if direction == "increasing" else "rises"
        reason = (
            f"The curve {moves} overall (from {y[0]:.4g} to {y[-1]:.4g}) while a knee needs it to be {direction}, "
            f"{keep_all}."
        )
        return KneeResult(index=whole, found=False, rule=RULE_WHOLE_NETWORK, reason=reason, **settings)

    knee, messages = _run_kneed(y, float(S), curve, direction)
    if knee is not None:
        return KneeResult(index=knee, found=True, rule=RULE_KNEED, reason=None, **settings)

    why = f"kneed found no knee with S={S:g}, curve={curve!r}, direction={direction!r}"
    if messages:
        why += " (kneed said: " + "; ".join(messages) + ")"
    index = rise_fraction_index(y, fallback_fraction, direction)
    if index is None:
        way = "rises" if direction == "increasing" else "falls"
        reason = f"{why}, and the curve never {way}, {keep_all}."
        return KneeResult(index=whole, found=False, rule=RULE_WHOLE_NETWORK, reason=reason, **settings)
    change = "rise" if direction == "increasing" else "fall"
    reason = (
        f"{why}; index {index} was chosen instead, the first point where the curve has covered "
        f"{fallback_fraction:.0%} of its {change} (the curve may be nearly straight, or S too strict)."
    )
    return KneeResult(index=index, found=False, rule=RULE_RISE_FRACTION, reason=reason, **settings)
