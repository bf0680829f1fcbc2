"""The overview: the run's verdict (whether the slim model kept the accuracy budget), headline cards (accuracy, cut,
parameters, latency), facts about the run, and every stage's status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from markupsafe import Markup
from pydantic import BaseModel

from layercut.contracts.results import (
    AnalyzeResult,
    CompareResult,
    DataInfo,
    RetrainResult,
    RunSummary,
    SelectResult,
    SweepResult,
    TrainResult,
    TruncateResult,
)
from layercut.report.formats import dec, human, latency_label, ms, pct, speed
from layercut.report.reading import first, is_number
from layercut.report.sections.cut_choice import verdict_tone
from layercut.report.sections.data import training_result
from layercut.report.stages import STAGE_TITLES, Stage
from layercut.report.templating import render_template

M = TypeVar("M", bound=BaseModel)


class Card(NamedTuple):
    label: str
    value: str
    sub: str | None = None


class StageRow(NamedTuple):
    title: str
    state: str
    where: str
    detail: str


def result_of(by_kind: Mapping[str, Stage], kind: str, model: type[M]) -> M | None:
    """The result of the stage of ``kind`` when it is done, else None."""
    stage = by_kind.get(kind)
    return stage.read(model) if stage is not None and stage.ready else None


def data_description(by_kind: Mapping[str, Stage]) -> DataInfo | None:
    """The data description of the train result (else the retrain result), or None."""
    for kind in ("train", "retrain"):
        s = by_kind.get(kind)
        if s is not None and s.ready and (data := training_result(s).data) is not None:
            return data
    return None


def headline_cards(by_kind: Mapping[str, Stage]) -> list[Card]:
    """The few numbers that tell the story: accuracies, where it was cut, parameters kept, speed-up."""
    compare = result_of(by_kind, "compare", CompareResult)
    train = result_of(by_kind, "train", TrainResult)
    retrain = result_of(by_kind, "retrain", RetrainResult)
    truncate = result_of(by_kind, "truncate", TruncateResult)
    analyze = result_of(by_kind, "analyze", AnalyzeResult)
    select = result_of(by_kind, "select", SelectResult)
    base = compare.base if compare is not None else None
    slim = compare.slim if compare is not None else None
    cards: list[Card] = []
    base_acc = first(base and base.accuracy, train and train.accuracy)
    slim_acc = first(slim and slim.accuracy, retrain and retrain.accuracy)
    if is_number(base_acc):
        cards.append(Card("Base test accuracy", pct(base_acc)))
    if is_number(slim_acc):
        delta = f"{(slim_acc - base_acc) * 100:+.1f} pts vs base" if is_number(base_acc) else None
        cards.append(Card("Slim test accuracy", pct(slim_acc), delta))
    cut = (truncate and truncate.cut_point) or (select and select.cut_point) or (analyze and analyze.cut_point)
    if cut and cut.name is not None:
        total = (
            (truncate and truncate.cut_points_total)
            or (select and select.cut_points_total)
            or (len(analyze.cut_points) if analyze else 0)
            or None
        )
        where = f"cut point {cut.index}" + (f" of {total}" if is_number(total) else "")
        cards.append(Card("Cut after" if truncate or select else "Knee at", str(cut.name), where))
    base_params = first(
        base and base.params, truncate and truncate.base_params, select and select.base_params, train and train.params
    )
    slim_params = first(
        slim and slim.params,
        truncate and truncate.slim_params,
        select and select.slim_params,
        retrain and retrain.params,
    )
    if is_number(base_params) and is_number(slim_params) and base_params:
        cards.append(
            Card("Parameters kept", pct(slim_params / base_params), f"{human(slim_params)} of {human(base_params)}")
        )
    latency = compare.comparison.latency if compare is not None and compare.comparison is not None else {}
    if latency:
        key = "cpu_b1" if "cpu_b1" in latency else next(iter(latency))
        entry = latency[key]
        if is_number(entry.speedup) and entry.speedup > 0:
            label = f"{latency_label(key, entry.batch_size)} latency"
            detail = f"{ms(entry.base_ms)} → {ms(entry.slim_ms)}"
            if entry.speedup < 1:
                detail += "; " + slower_why(compare)
            cards.append(Card(label, speed(entry.speedup), detail))
    return cards


def slower_why(compare: CompareResult) -> str:
    """Why a slim model can time slower than its base, in a few words, from what the comparison measured."""
    saved = compare.comparison.reduction_percent.macs
    if is_number(saved) and saved > 0:
        return (
            f"slower although it does {pct(1 - saved / 100)} of the base's MACs: at this size the time is overhead "
            "and noise more than arithmetic (see Base vs slim)"
        )
    return "the slim model does no fewer MACs than the base here (see Base vs slim)"


def stage_brief(stage: Stage) -> str:
    """One line on what a finished stage found."""
    if stage.kind in ("train", "retrain"):
        x = training_result(stage)
        return f"test accuracy {pct(x.accuracy)}, macro-F1 {dec(x.macro_f1)}, {human(x.params)} parameters"
    if stage.kind == "analyze":
        analysis = stage.read(AnalyzeResult)
        knee = analysis.cut_point.name if analysis.cut_point else None
        return f"{len(analysis.cut_points)} cut points; knee at {knee or '—'}"
    if stage.kind == "truncate":
        truncate = stage.read(TruncateResult)
        cut = truncate.cut_point.name if truncate.cut_point else None
        return f"cut at {cut or '—'}; {pct(truncate.params_kept)} of the parameters kept"
    if stage.kind == "select":
        select = stage.read(SelectResult)
        cut = select.cut_point.name if select.cut_point else None
        kept = {True: "within the budget", False: "NOT within the budget"}.get(select.within_budget, "")
        return f"cut at {cut or '—'}, {kept or 'budget not recorded'}; {len(select.candidates)} candidate{'' if len(select.candidates) == 1 else 's'} retrained"
    if stage.kind == "sweep":
        sweep = stage.read(SweepResult)
        smallest = sweep.smallest_within_budget
        return (
            f"{len(sweep.candidates)} cut points retrained; smallest within the budget: "
            f"{smallest.name if smallest is not None else 'none'}"
        )
    if stage.kind == "compare":
        comparison = stage.read(CompareResult).comparison
        accuracy = comparison.metrics.accuracy if comparison is not None and comparison.metrics is not None else None
        return f"accuracy {pct(accuracy and accuracy.base)} → {pct(accuracy and accuracy.slim)}"
    if stage.kind == "explain":
        return f"{len(stage.pngs)} pictures"
    return "done"


def stage_row(stage: Stage) -> StageRow:
    """A stage's line in the overview's table: its status and what it did, is doing or waits for."""
    i = stage.input
    detail: Any = "—"
    if i.status in ("running", "cancelling"):
        percent = f"{i.percent:.0f}%" if is_number(i.percent) else None
        detail = " · ".join(x for x in (percent, i.stage, i.message) if x)
    elif i.status == "failed":
        detail = ": ".join(str(x) for x in (i.error_code, i.error_message) if x)
    elif i.status == "queued":
        detail = "waits for the step before" if i.step else "waits for a worker"
    elif stage.ready:
        detail = stage_brief(stage)
        if stage.partial:
            detail += " (its result did not validate: see below)"
    elif i.status is None:
        detail = f"no {stage.expected_output} yet"
    return StageRow(STAGE_TITLES.get(i.kind, i.kind), stage.state, i.label or "—", detail or "—")


def run_verdict(by_kind: Mapping[str, Stage], run: RunSummary | None) -> tuple[str | None, bool | None]:
    """The run's verdict in one sentence and whether the budget was kept (None: not known): run.json's, else the
    select result's."""
    select = result_of(by_kind, "select", SelectResult)
    selection = run.selection if run is not None else None
    within = first(selection and selection.within_budget, select and select.within_budget)
    text = first(run and run.verdict, selection and selection.verdict, select and select.verdict)
    return text, within


def context(
    ordered: list[Stage],
    by_kind: Mapping[str, Stage],
    details: Iterable[tuple[str, Any]],
    run: RunSummary | None = None,
) -> dict[str, Any]:
    """The verdict, the cards, the facts (the caller's ``details`` first, then what the results say) and the stage
    rows."""
    facts = list(details)
    given = {label for label, _ in facts}
    results = [s.result for s in ordered if s.ready and s.result is not None]
    arch = next(
        (
            r.architecture
            for r in results
            if isinstance(r, (TrainResult, RetrainResult, AnalyzeResult)) and r.architecture
        ),
        None,
    )
    if arch is None:
        arch = next(
            (r.base.architecture for r in results if isinstance(r, CompareResult) and r.base and r.base.architecture),
            None,
        )
    data = data_description(by_kind)
    derived = [
        ("Architecture", arch),
        ("Dataset", data and (data.name or data.source)),
        ("Classes", len(data.classes) if data is not None and data.classes else None),
        ("Image size", f"{data.image_size} px" if data is not None and data.image_size else None),
    ]
    facts += [(label, value) for label, value in derived if label not in given]
    verdict, within = run_verdict(by_kind, run)
    return {
        "verdict": verdict,
        "verdict_tone": verdict_tone(within),
        "cards": headline_cards(by_kind),
        "facts": facts,
        "stages": [stage_row(s) for s in ordered],
    }


def render(
    ordered: list[Stage],
    by_kind: Mapping[str, Stage],
    details: Iterable[tuple[str, Any]],
    run: RunSummary | None = None,
) -> Markup:
    return render_template("overview.html", **context(ordered, by_kind, details, run))
