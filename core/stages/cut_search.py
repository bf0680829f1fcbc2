"""The auto cut's search: which cut points to retrain, in which order, and when the answer is certain.

The rule (docs/design.md §1, "Choosing the cut"): return the smallest slim model (fewest MACs, parameters on a tie)
whose validation accuracy after retraining reaches the budget's threshold. Retraining is the only evidence that
counts; the depth probes and the knee only say where to look first:

1. The first candidates are the knee, the shallowest cut point whose probe accuracy reaches the threshold (or the
   best probe when none does) and that cut's two neighbours.
2. They are retrained smallest first. A candidate that reaches the threshold is the answer once the cut point just
   shallower than it has been retrained and missed it (or it is the first cut point): accuracy is taken to grow
   with depth, so nothing smaller would pass. Until then the next shallower cut point is tried.
3. While nothing has passed and the first candidates are spent, the next deeper cut point is tried, down to the
   last one (which keeps every layer and replaces only the head).
4. The search stops at ``max_retrains``; then the answer is the smallest candidate that passed (said to be
   uncertain), or, when none did, the one with the best validation accuracy, with its shortfall.

This module is the rule alone (no torch): ``search_cut`` calls ``retrain(index, reasons)`` for each candidate it
decides to try, so tests drive it with stubbed results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from layercut.contracts.results import CandidateReason

SizeOf = Callable[[int], tuple[int, int]]
"""(MACs, parameters) of the slim model cut at a cut point index."""


@dataclass(frozen=True)
class Trial:
    """One retrained candidate as the search sees it: where it is cut, its size and its validation accuracy."""

    index: int
    macs: int
    params: int
    val_accuracy: float


Retrain = Callable[[int, list[CandidateReason]], Trial]
"""Retrain the slim model cut at an index (the reasons say why it is tried) and return what it scored."""


@dataclass
class SearchOutcome:
    """The chosen trial, every trial in the order run, and why the search stopped."""

    chosen: Trial
    trials: list[Trial]
    within_budget: bool
    certain: bool
    stopped: str


@dataclass
class _Search:
    points: int
    threshold: float
    size_of: SizeOf
    retrain: Retrain
    max_retrains: int
    trials: dict[int, Trial] = field(default_factory=dict)
    order: list[Trial] = field(default_factory=list)
    reasons: dict[int, list[CandidateReason]] = field(default_factory=dict)

    def propose(self, index: int, reason: CandidateReason) -> None:
        if 0 <= index < self.points and index not in self.trials:
            listed = self.reasons.setdefault(index, [])
            if reason not in listed:
                listed.append(reason)

    def size_key(self, index: int) -> tuple[int, int, int]:
        macs, params = self.size_of(index)
        return macs, params, index

    def run(self, index: int) -> Trial:
        trial = self.retrain(index, self.reasons.pop(index, []) or ["shallower"])
        self.trials[index] = trial
        self.order.append(trial)
        return trial

    def deepest_failure(self) -> int:
        """The deepest cut point retrained without reaching the threshold (-1 when none)."""
        return max((t.index for t in self.trials.values() if t.val_accuracy < self.threshold), default=-1)

    def best_scoring(self) -> Trial:
        """The trial with the best validation accuracy (the smaller on a tie): the answer when none passed."""
        return max(self.order, key=lambda t: (t.val_accuracy, -t.macs, -t.params))

    def next_candidate(self, best: Trial | None) -> int | None:
        """The smallest proposed cut point still worth retraining: not shallower than a cut point that missed the
        threshold (it would miss too) and, once one passed, smaller than it."""
        floor = self.deepest_failure()
        open_ = [i for i in self.reasons if i not in self.trials and i > floor]
        if best is not None:
            open_ = [i for i in open_ if self.size_key(i) < self.size_key(best.index)]
        return min(open_, key=self.size_key) if open_ else None

    def passing(self) -> list[Trial]:
        return sorted(
            (t for t in self.trials.values() if t.val_accuracy >= self.threshold),
            key=lambda t: (t.macs, t.params, t.index),
        )


def first_candidates(
    points: int, threshold: float, knee_index: int, probe: Sequence[float] | None
) -> dict[int, list[CandidateReason]]:
    """The cut points the probes and the knee point to, with why: the knee, the shallowest probe within the
    threshold (else the best probe) and its neighbours."""
    candidates: dict[int, list[CandidateReason]] = {}

    def add(index: int, reason: CandidateReason) -> None:
        if 0 <= index < points:
            candidates.setdefault(index, [])
            if reason not in candidates[index]:
                candidates[index].append(reason)

    add(min(max(knee_index, 0), points - 1), "knee")
    if probe:
        start = probe_choice(probe, threshold)
        if start is None:
            start = max(range(len(probe)), key=lambda i: (probe[i], -i))
        add(start, "probe")
        add(start - 1, "neighbour")
        add(start + 1, "neighbour")
    else:
        add(knee_index + 1, "neighbour")
    return candidates


def probe_choice(probe: Sequence[float], threshold: float) -> int | None:
    """The shallowest cut point whose probe accuracy reaches ``threshold``; None when none does."""
    return next((i for i, value in enumerate(probe) if value >= threshold), None)


def search_cut(
    *,
    points: int,
    threshold: float,
    knee_index: int,
    probe: Sequence[float] | None,
    size_of: SizeOf,
    retrain: Retrain,
    max_retrains: int,
) -> SearchOutcome:
    """Retrain candidates smallest first until the smallest one within ``threshold`` is certain (module docstring)."""
    if points < 1:
        raise ValueError("the search needs at least one cut point")
    search = _Search(points, threshold, size_of, retrain, max(1, max_retrains))
    for index, reasons in first_candidates(points, threshold, knee_index, probe).items():
        for reason in reasons:
            search.propose(index, reason)

    while True:
        passing = search.passing()
        best = passing[0] if passing else None
        if best is not None:
            below = search.trials.get(best.index - 1)
            if best.index == 0:
                return _outcome(search, best, True, "it is the first cut point: no smaller cut exists")
            if below is not None and below.val_accuracy < threshold:
                return _outcome(
                    search,
                    best,
                    True,
                    f"the next shallower cut point ({below.index}) scored {below.val_accuracy:.1%} after retraining, "
                    f"below the threshold of {threshold:.1%}",
                )
            search.propose(best.index - 1, "shallower")
        next_index = search.next_candidate(best)
        if next_index is None and best is None:
            deeper = search.deepest_failure() + 1
            if deeper >= points:
                return _outcome(search, search.best_scoring(), False, "every cut point up to the last was retrained")
            search.propose(deeper, "deeper")
            next_index = deeper
        if len(search.order) >= search.max_retrains:
            budget = f"the retrain budget ({search.max_retrains}) ran out"
            if best is not None:
                return _outcome(search, best, False, f"{budget} before a shallower cut point was ruled out")
            return _outcome(search, search.best_scoring(), False, budget)
        if next_index is None:
            assert best is not None  # without a passing trial, a deeper cut point was proposed above
            return _outcome(search, best, True, "every smaller candidate missed the threshold")
        search.run(next_index)


def _outcome(search: _Search, chosen: Trial, certain: bool, stopped: str) -> SearchOutcome:
    within = chosen.val_accuracy >= search.threshold
    return SearchOutcome(chosen, list(search.order), within, certain and within, stopped)
