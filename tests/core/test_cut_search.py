"""The auto cut's search with stubbed retraining: which candidates it retrains, in which order, and what it picks."""

from __future__ import annotations

import random

import pytest

from layercut.stages.cut_search import Trial, first_candidates, probe_choice, search_cut

# Retrained validation accuracy at each of 9 cut points (ResNet-18-like: shallow cuts lose, deep ones keep).
RETRAINED = [0.40, 0.78, 0.85, 0.90, 0.95, 0.975, 0.985, 0.99, 0.98]
PROBE = [0.30, 0.60, 0.70, 0.80, 0.90, 0.95, 0.975, 0.98, 0.98]


def size_of(index: int) -> tuple[int, int]:
    return (index + 1) * 1000, (index + 1) * 10


class StubRetrain:
    """Returns the given accuracy per cut point and records what was retrained, with why."""

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = accuracies
        self.calls: list[tuple[int, list[str]]] = []

    def __call__(self, index: int, reasons: list[str]) -> Trial:
        self.calls.append((index, list(reasons)))
        macs, params = size_of(index)
        return Trial(index, macs, params, self.accuracies[index])

    @property
    def order(self) -> list[int]:
        return [index for index, _ in self.calls]


def search(accuracies: list[float], *, threshold: float, knee: int, probe: list[float] | None, max_retrains: int = 6):
    retrain = StubRetrain(accuracies)
    outcome = search_cut(
        points=len(accuracies),
        threshold=threshold,
        knee_index=knee,
        probe=probe,
        size_of=size_of,
        retrain=retrain,
        max_retrains=max_retrains,
    )
    return outcome, retrain


def test_first_candidates_are_the_knee_the_probe_choice_and_its_neighbours() -> None:
    assert probe_choice(PROBE, 0.97) == 6
    assert first_candidates(9, 0.97, 2, PROBE) == {2: ["knee"], 6: ["probe"], 5: ["neighbour"], 7: ["neighbour"]}
    # no probe reaches the threshold: start from the best probe (the shallower on a tie)
    assert first_candidates(9, 0.99, 2, PROBE) == {2: ["knee"], 7: ["probe"], 6: ["neighbour"], 8: ["neighbour"]}
    # no probes at all: the knee and the cut point after it
    assert first_candidates(9, 0.97, 2, None) == {2: ["knee"], 3: ["neighbour"]}


def test_picks_the_smallest_candidate_within_the_budget_and_stops_once_the_next_shallower_one_fails() -> None:
    outcome, retrain = search(RETRAINED, threshold=0.97, knee=2, probe=PROBE)
    # smallest first: the knee (fails), the probe's shallower neighbour 5 (passes), then 4 to rule it out (fails)
    assert retrain.order == [2, 5, 4]
    assert (
        retrain.calls[0][1] == ["knee"]
        and retrain.calls[1][1] == ["neighbour"]
        and retrain.calls[2][1] == ["shallower"]
    )
    assert (outcome.chosen.index, outcome.within_budget, outcome.certain) == (5, True, True)
    assert "(4)" in outcome.stopped and "95.0%" in outcome.stopped
    assert [t.index for t in outcome.trials] == [2, 5, 4]  # 6 and 7 are never retrained: 5 is smaller and passes


def test_a_pass_at_the_first_cut_point_is_certain_at_once() -> None:
    outcome, retrain = search([0.99] * 5, threshold=0.97, knee=0, probe=[0.99] * 5)
    assert retrain.order == [0]
    assert (outcome.chosen.index, outcome.certain) == (0, True) and "first cut point" in outcome.stopped


def test_when_nothing_reaches_the_budget_it_goes_deeper_then_reports_the_best_with_a_shortfall() -> None:
    accuracies = [0.2, 0.3, 0.5, 0.6, 0.8]
    outcome, retrain = search(accuracies, threshold=0.9, knee=1, probe=[0.1, 0.2, 0.3, 0.4, 0.5], max_retrains=10)
    assert sorted(retrain.order) == [1, 3, 4]  # knee; best probe 4 and its neighbour 3; nothing deeper exists
    assert retrain.order == [1, 3, 4]
    assert (outcome.chosen.index, outcome.within_budget, outcome.certain) == (4, False, False)
    assert "every cut point up to the last" in outcome.stopped


def test_probes_that_are_too_optimistic_make_it_step_deeper_until_one_passes() -> None:
    accuracies = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99]
    probe = [0.97] * 9  # every probe says "cut at 0"
    outcome, retrain = search(accuracies, threshold=0.97, knee=0, probe=probe, max_retrains=20)
    assert retrain.order == [0, 1, 2, 3, 4, 5, 6, 7]
    assert [reasons for _, reasons in retrain.calls][2:] == [["deeper"]] * 6
    assert (outcome.chosen.index, outcome.certain) == (7, True)


def test_the_retrain_budget_bounds_the_search_and_the_answer_says_it_is_uncertain() -> None:
    accuracies = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99]
    outcome, retrain = search(accuracies, threshold=0.97, knee=0, probe=[0.97] * 9, max_retrains=3)
    assert len(retrain.calls) == 3
    assert (outcome.within_budget, outcome.certain) == (False, False) and "retrain budget (3)" in outcome.stopped
    assert outcome.chosen.index == 2  # the best one retrained


def test_a_pass_found_late_is_kept_but_said_to_be_uncertain_when_the_budget_runs_out() -> None:
    outcome, retrain = search(RETRAINED, threshold=0.97, knee=2, probe=PROBE, max_retrains=2)
    assert retrain.order == [2, 5]
    assert (outcome.chosen.index, outcome.within_budget, outcome.certain) == (5, True, False)
    assert "before a shallower cut point was ruled out" in outcome.stopped


@pytest.mark.parametrize("seed", range(40))
def test_on_any_monotone_accuracy_curve_it_finds_the_true_smallest_cut_within_budget(seed: int) -> None:
    rng = random.Random(seed)
    points = rng.randint(3, 20)
    accuracies = sorted(rng.uniform(0.3, 1.0) for _ in range(points))
    threshold = rng.uniform(0.3, 1.0)
    probe = [min(1.0, max(0.0, a + rng.uniform(-0.1, 0.1))) for a in accuracies]
    knee = rng.randrange(points - 1)
    outcome, retrain = search(accuracies, threshold=threshold, knee=knee, probe=probe, max_retrains=points)
    truth = next((i for i, a in enumerate(accuracies) if a >= threshold), None)
    if truth is None:
        assert not outcome.within_budget and outcome.chosen.index == points - 1
    else:
        assert (outcome.chosen.index, outcome.within_budget, outcome.certain) == (truth, True, True)
    assert len(set(retrain.order)) == len(retrain.order)  # nothing is retrained twice
