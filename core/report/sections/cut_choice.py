"""Is this the right cut? What each rule points to (the SSIM knee, the depth probes, the accuracy budget), the auto
cut's verdict and every candidate it retrained, the sweep's whole trade-off, and what the other rules would have
chosen.

The section follows the select stage when the run has one, else the sweep, else the analysis (when it computed
depth probes), whichever is done first; it reads the others it finds as context and says which are still to come.
A run cut at the knee or at a named cut point, of a version without depth probes, has no such section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from markupsafe import Markup
from pydantic import BaseModel

from layercut.contracts.files import DEPTH_PROBES_PNG, TRADE_OFF_PNG
from layercut.contracts.results import (
    AnalyzeResult,
    Budget,
    Candidate,
    OtherRules,
    RunSummary,
    SelectResult,
    SweepResult,
    TruncateResult,
)
from layercut.contracts.spec import CutPointRef
from layercut.report.figures import Figure
from layercut.report.formats import MISSING, human, integer, ms, pct
from layercut.report.reading import first, is_number
from layercut.report.sections import MAX_TABLE_ROWS, pending
from layercut.report.stages import Stage
from layercut.report.templating import render_template

M = TypeVar("M", bound=BaseModel)

PROBE_FIGURES = [
    (
        DEPTH_PROBES_PNG,
        "Depth probes: validation accuracy of a linear classifier on each cut point's pooled features, beside the "
        "SSIM cut curve (right axis), with the knee and the probe's choice under the default budget (1 point) marked",
    )
]
BUDGET_PROBE_FIGURES = [
    (
        DEPTH_PROBES_PNG,
        "Depth probes: validation accuracy of a linear classifier on each cut point's pooled features, beside the "
        "SSIM cut curve (right axis), with this run's budget, the knee and the probe's choice under the budget",
    )
]
SELECT_FIGURES = [
    (TRADE_OFF_PNG, "The auto cut's candidates: validation and test accuracy against MACs and parameters"),
]
SWEEP_FIGURES = [
    (TRADE_OFF_PNG, "The sweep: accuracy against MACs and parameters, one retrained slim model per cut point"),
]
REASONS = {
    "knee": "the knee",
    "probe": "the probe choice",
    "neighbour": "a neighbour of the probe choice",
    "deeper": "one step deeper",
    "shallower": "one step shallower",
    "sweep": "swept",
}
"""Why a candidate was retrained, in words (``layercut.contracts.results.CandidateReason``)."""
RULE_NAMES = {"knee": "the knee", "user": "a cut point named by the user", "auto": "the accuracy budget (auto)"}


class Tag(NamedTuple):
    """A small label beside a cut point's name: which rule chose it ("knee", "probe choice", "chosen")."""

    text: str
    kind: str  # a CSS class suffix: knee, probe, chosen


class CandidateRow(NamedTuple):
    """One retrained slim model in a table of candidates."""

    index: Any
    name: Any
    tags: list[Tag]
    reasons: str
    params: str
    macs: str
    latency: str
    val_accuracy: str
    accuracy: str
    macro_f1: str
    probe_accuracy: str
    within: bool | None
    within_text: str
    highlight: bool


class RuleRow(NamedTuple):
    """One rule of "what the other rules would have chosen": its cut, why, and how that cut did when retrained."""

    rule: str
    cut: str
    note: str
    val_accuracy: str
    within: bool | None
    within_text: str
    decided: bool


def followed_stage(by_kind: Mapping[str, Stage]) -> Stage | None:
    """The stage the section follows: the first done of select, sweep and an analysis with depth probes (or their
    picture), so that what is known shows while the rest still runs; else a select or sweep stage not done yet (the
    section says so); None when the run has nothing for this section (an older run, cut at the knee)."""
    analyze = by_kind.get("analyze")
    if analyze is not None and analyze.ready:
        probed = analyze.read(AnalyzeResult).depth_probes is not None
        analyze = analyze if probed or any(p.name == DEPTH_PROBES_PNG for p in analyze.pngs) else None
    else:
        analyze = None
    present = [by_kind[kind] for kind in ("select", "sweep") if kind in by_kind]
    return next((stage for stage in present if stage.ready), None) or analyze or next(iter(present), None)


def probe_pictures(analyze: Stage | None, *budgeted: Stage | None) -> list[Figure]:
    """The depth-probe picture: the first drawn with the run's budget (select's, else the sweep's), else the
    analysis' own (with the default budget); the analysis' copy is claimed either way so that it is not shown
    twice, nor the sweep's beside select's."""
    own = analyze.take(PROBE_FIGURES) if analyze is not None and analyze.ready else []
    drawn = [stage.take(BUDGET_PROBE_FIGURES) for stage in budgeted if stage is not None]
    return next((pictures for pictures in drawn if pictures), own)


def done(stage: Stage | None, model: type[M]) -> M | None:
    """The result of ``stage`` as ``model`` when it is done, else None."""
    return stage.read(model) if stage is not None and stage.ready else None


def cut_text(ref: CutPointRef | None) -> str:
    """'layer3.1 (cut point 12)'."""
    if ref is None or ref.name is None:
        return MISSING
    return f"{ref.name} (cut point {ref.index})" if ref.index is not None else str(ref.name)


def within_text(candidate: Candidate, budget: Budget | None) -> str:
    """'yes', or '0.8 pts short' (of the budget's validation accuracy)."""
    if candidate.within_budget is None:
        return MISSING
    if candidate.within_budget:
        return "yes"
    threshold = budget.threshold if budget is not None else None
    if is_number(threshold) and is_number(candidate.val_accuracy):
        return f"{(threshold - candidate.val_accuracy) * 100:.1f} pts short"
    return "no"


def rule_tags(
    ref: CutPointRef | None, rules: OtherRules | None, chosen: CutPointRef | None, chosen_text: str
) -> list[Tag]:
    """The tags of the cut point ``ref``: chosen (the run's or the sweep's), knee, probe choice."""
    if ref is None or ref.index is None:
        return []
    tags = []
    if chosen is not None and chosen.index == ref.index:
        tags.append(Tag(chosen_text, "chosen"))
    if rules is not None and rules.knee is not None and rules.knee.index == ref.index:
        tags.append(Tag("knee", "knee"))
    if rules is not None and rules.probe is not None and rules.probe.index == ref.index:
        tags.append(Tag("probe choice", "probe"))
    return tags


def candidate_rows(
    candidates: Sequence[Candidate],
    budget: Budget | None,
    rules: OtherRules | None,
    chosen: CutPointRef | None,
    chosen_text: str,
) -> list[CandidateRow]:
    """One row per candidate, the chosen one highlighted."""
    rows = []
    for c in candidates[:MAX_TABLE_ROWS]:
        cut = c.cut_point
        reasons = ", ".join(REASONS.get(r, str(r)) for r in c.reasons) or MISSING
        probe = c.probe_accuracy
        rows.append(
            CandidateRow(
                index=cut.index if cut is not None else None,
                name=cut.name if cut is not None else MISSING,
                tags=rule_tags(cut, rules, chosen, chosen_text),
                reasons=reasons,
                params=integer(c.params),
                macs=human(c.macs),
                latency=ms(c.latency_ms),
                val_accuracy=pct(c.val_accuracy),
                accuracy=pct(c.accuracy),
                macro_f1=f"{c.macro_f1:.3f}" if is_number(c.macro_f1) else MISSING,
                probe_accuracy=pct(probe),
                within=c.within_budget,
                within_text=within_text(c, budget),
                highlight=chosen is not None and cut is not None and cut.index == chosen.index,
            )
        )
    return rows


def budget_text(budget: Budget | None) -> str | None:
    """'at most 1 point below the base: validation accuracy ≥ 94.2% (base 95.2%)'."""
    if budget is None:
        return None
    parts = [budget.description] if budget.description else []
    if is_number(budget.threshold):
        base = f" (base model {pct(budget.base_val_accuracy)})" if is_number(budget.base_val_accuracy) else ""
        parts.append(f"validation accuracy ≥ {pct(budget.threshold)}{base}")
    return ": ".join(parts) or None


def rules_sentence(
    analysis: AnalyzeResult | None, rules: OtherRules | None, budget: Budget | None, run_cut: str | None
) -> str | None:
    """One sentence on what the knee and the depth probes point to, and which rule cut this run."""
    knee = (rules.knee if rules is not None else None) or (analysis.cut_point if analysis is not None else None)
    total = len(analysis.cut_points) if analysis is not None and analysis.cut_points else None
    if knee is None or knee.name is None:
        return None
    whole = total is not None and knee.index == total - 1 and analysis is not None and analysis.knee is not None
    whole = whole and analysis.knee.rule == "fallback:whole-network"
    sentence = f"The knee of the SSIM curve points to {cut_text(knee)}"
    sentence += " — the whole network, as the curve never levels off" if whole else ""
    probes = analysis.depth_probes if analysis is not None else None
    threshold = budget.threshold if budget is not None else None
    if rules is not None and rules.probe is not None:
        at = f" ({pct(threshold)} validation accuracy)" if is_number(threshold) else ""
        sentence += f"; the depth probes point to {cut_text(rules.probe)}, the shallowest cut whose probe reaches "
        sentence += f"the budget{at}"
    elif rules is not None and budget is not None and probes is not None:
        sentence += f"; no cut point's depth probe reaches the budget ({pct(threshold)} validation accuracy)"
    elif probes is not None and probes.points:
        best = max(probes.points, key=lambda p: p.val_accuracy if is_number(p.val_accuracy) else -1.0)
        sentence += (
            f"; with no accuracy budget there is no probe choice: the depth probes read the classes best at "
            f"{best.name} ({pct(best.val_accuracy)})"
        )
    sentence += "."
    if run_cut:
        sentence += f" This run was cut by {run_cut}."
    return sentence


def other_rule_rows(
    rules: OtherRules | None, candidates: Sequence[Candidate], budget: Budget | None, decided_by: str | None
) -> list[RuleRow]:
    """What each rule chose or would have chosen, and how its cut did when it was retrained here (the last of
    ``candidates`` retrained at a cut point counts)."""
    if rules is None:
        return []
    retrained = {c.cut_point.index: c for c in candidates if c.cut_point is not None}

    def row(rule: str, key: str, ref: CutPointRef | None, how: str, none: str) -> RuleRow:
        c = retrained.get(ref.index) if ref is not None else None
        return RuleRow(
            rule=rule,
            cut=cut_text(ref) if ref is not None else none,
            note=how,
            val_accuracy=pct(c.val_accuracy) if c is not None else ("not retrained" if ref is not None else MISSING),
            within=c.within_budget if c is not None else None,
            within_text=within_text(c, budget) if c is not None else MISSING,
            decided=decided_by == key,
        )

    knee_how = "the knee of the SSIM curve (the paper's rule)"
    knee_how += f": {rules.knee_reason}" if rules.knee_reason else ", found by kneed"
    return [
        row("SSIM knee", "knee", rules.knee, knee_how, "none recorded"),
        row(
            "Depth probes", "probe", rules.probe, "the shallowest cut whose probe reaches the budget", "none reaches it"
        ),
        row("Auto", "auto", rules.auto, "the smallest retrained slim model within the budget", "not run"),
    ]


def run_rule(run: RunSummary | None, select: SelectResult | None, by_kind: Mapping[str, Stage]) -> str | None:
    """The rule that cut this run: auto, knee or user (run.json, else the select or truncate result)."""
    if run is not None and run.cut_point is not None and run.cut_point.chosen_by:
        return run.cut_point.chosen_by
    if select is not None:
        return "auto"
    truncate = done(by_kind.get("truncate"), TruncateResult)
    return truncate.chosen_by if truncate is not None else None


def verdict_tone(within: bool | None) -> str:
    """How a verdict is styled: kept (within the budget), shortfall (not: impossible to miss), or plain."""
    return "plain" if within is None else "kept" if within else "shortfall"


def select_context(stage: Stage, rules: OtherRules | None) -> dict[str, Any]:
    """The auto cut: its verdict, budget, why it stopped, its chart and its candidates."""
    select = stage.read(SelectResult)
    budget = select.budget
    chosen = select.cut_point
    total = select.cut_points_total
    where = cut_text(chosen)
    if chosen is not None and chosen.index is not None and is_number(total):
        where = f"{chosen.name} (cut point {chosen.index} of {total})"
    params = None
    if is_number(select.base_params) and is_number(select.slim_params):
        params = f"{integer(select.slim_params)} of {integer(select.base_params)} ({pct(select.params_kept)} kept)"
    return {
        "verdict": select.verdict,
        "tone": verdict_tone(select.within_budget),
        "shortfall": f"{select.shortfall:.1f}" if is_number(select.shortfall) else None,
        "facts": [
            ("Budget", budget_text(budget)),
            ("Chosen cut", where),
            ("Parameters", params),
            ("Why the search stopped", select.stopped),
            ("Candidates retrained", len(select.candidates) or None),
            ("Time", f"{select.seconds:.1f} s" if is_number(select.seconds) else None),
        ],
        "rows": candidate_rows(select.candidates, budget, rules or select.rules, chosen, "chosen"),
        "rows_total": len(select.candidates),
        "pictures": stage.take(SELECT_FIGURES),  # the chosen model's own pictures are the slim section's
    }


def sweep_context(stage: Stage, rules: OtherRules | None) -> dict[str, Any]:
    """The sweep: its budget, its chart and one row per swept cut point, the smallest within the budget marked."""
    sweep = stage.read(SweepResult)
    smallest = sweep.smallest_within_budget
    chart = [(sweep.chart, SWEEP_FIGURES[0][1])] if sweep.chart else []
    base = sweep.base
    base_text = None
    if base is not None:
        base_text = (
            f"validation {pct(base.val_accuracy)}, test {pct(base.accuracy)}, {human(base.params)} parameters, "
            f"{human(base.macs)} MACs, {ms(base.latency_ms)} on the CPU"
        )
    return {
        "facts": [
            ("Budget", budget_text(sweep.budget)),
            ("Cut points swept", len(sweep.candidates) or None),
            ("Smallest within the budget", cut_text(smallest) if smallest is not None else "none of them"),
            ("Base model", base_text),
            ("Time", f"{sweep.seconds:.1f} s" if is_number(sweep.seconds) else None),
        ],
        "rows": candidate_rows(
            sweep.candidates, sweep.budget, rules or sweep.rules, smallest, "smallest within budget"
        ),
        "rows_total": len(sweep.candidates),
        "pictures": stage.take(chart + SWEEP_FIGURES) + stage.rest(),
    }


def context(by_kind: Mapping[str, Stage], followed: Stage, run: RunSummary | None = None) -> dict[str, Any]:
    """What the section shows: the probe curve and what each rule points to, the select and sweep results when
    they ran, and what the other rules would have chosen."""
    analyze = by_kind.get("analyze")
    select_stage, sweep_stage = by_kind.get("select"), by_kind.get("sweep")
    analysis = done(analyze, AnalyzeResult)
    select = done(select_stage, SelectResult)
    sweep = done(sweep_stage, SweepResult)
    rules = first(
        select.rules if select is not None else None,
        run.rules if run is not None else None,
        sweep.rules if sweep is not None else None,
    )
    budget = first(select and select.budget, sweep and sweep.budget)
    decided_by = run_rule(run, select, by_kind)
    probes = analysis.depth_probes if analysis is not None else None
    probe_facts = None
    if probes is not None:
        probe_facts = (
            f"{probes.method}; fitted on {integer(probes.train_images)} training images, "
            f"scored on {integer(probes.val_images)} validation images"
        )
    # the select stage's retraining of a cut point wins over the sweep's: it is the one the run's verdict rests on
    candidates = [*(sweep.candidates if sweep is not None else []), *(select.candidates if select is not None else [])]
    notes = [
        stage.problem
        for stage in (select_stage, sweep_stage)
        if stage is not None and stage is not followed and stage.ready and stage.problem
    ]
    return {
        "sentence": rules_sentence(analysis, rules, budget, RULE_NAMES.get(decided_by or "", decided_by)),
        "probe_method": probe_facts,
        "probe_pictures": probe_pictures(analyze, select_stage if select else None, sweep_stage if sweep else None),
        "select": select_context(select_stage, rules) if select is not None else None,
        "select_pending": pending.render(select_stage) if select_stage is not None and select is None else None,
        "sweep": sweep_context(sweep_stage, rules) if sweep is not None else None,
        "sweep_pending": pending.render(sweep_stage) if sweep_stage is not None and sweep is None else None,
        "rules": other_rule_rows(rules, candidates, budget, decided_by),
        "notes": notes,
        "max_rows": MAX_TABLE_ROWS,
    }


def render(by_kind: Mapping[str, Stage], followed: Stage, run: RunSummary | None = None) -> Markup:
    return render_template("cut_choice.html", **context(by_kind, followed, run))
