"""The overview: headline cards (accuracy, cut, parameters, latency), facts about the run, and every stage's status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from markupsafe import Markup

from layercut.report.formats import dec, human, latency_label, ms, pct, speed
from layercut.report.reading import as_list, as_mapping, get, is_number
from layercut.report.stages import STAGE_TITLES, Stage
from layercut.report.templating import render_template


class Card(NamedTuple):
    label: str
    value: str
    sub: str | None = None


class StageRow(NamedTuple):
    title: str
    state: str
    where: str
    detail: str


def data_description(by_kind: Mapping[str, Stage]) -> dict:
    """The data description of the train result (else the retrain result), or an empty dict."""
    for kind in ("train", "retrain"):
        s = by_kind.get(kind)
        if s is not None and s.ready and isinstance(get(s.summary, "data"), Mapping):
            return dict(s.summary["data"])
    return {}


def headline_cards(by_kind: Mapping[str, Stage]) -> list[Card]:
    """The few numbers that tell the story: accuracies, where it was cut, parameters kept, speed-up."""

    def result(kind: str) -> dict | None:
        s = by_kind.get(kind)
        return s.summary if s is not None and s.ready else None

    compare, train, retrain, truncate, analyze = (
        result(k) for k in ("compare", "train", "retrain", "truncate", "analyze")
    )
    cards: list[Card] = []
    base_acc = get(compare, "base", "accuracy", default=get(train, "accuracy"))
    slim_acc = get(compare, "slim", "accuracy", default=get(retrain, "accuracy"))
    if is_number(base_acc):
        cards.append(Card("Base test accuracy", pct(base_acc)))
    if is_number(slim_acc):
        delta = f"{(slim_acc - base_acc) * 100:+.1f} pts vs base" if is_number(base_acc) else None
        cards.append(Card("Slim test accuracy", pct(slim_acc), delta))
    cut = get(truncate, "cut_point") or get(analyze, "cut_point")
    if isinstance(cut, Mapping) and cut.get("name") is not None:
        total = get(truncate, "cut_points_total") or (len(as_list(get(analyze, "cut_points"))) or None)
        where = f"cut point {cut.get('index')}" + (f" of 0–{total - 1}" if is_number(total) else "")
        cards.append(Card("Cut after" if truncate else "Knee at", str(cut["name"]), where))
    base_params = get(compare, "base", "params", default=get(truncate, "base_params", default=get(train, "params")))
    slim_params = get(compare, "slim", "params", default=get(truncate, "slim_params", default=get(retrain, "params")))
    if is_number(base_params) and is_number(slim_params) and base_params:
        cards.append(
            Card("Parameters kept", pct(slim_params / base_params), f"{human(slim_params)} of {human(base_params)}")
        )
    latency = get(compare, "comparison", "latency")
    if isinstance(latency, Mapping) and latency:
        key = "cpu_b1" if "cpu_b1" in latency else next(iter(latency))
        entry = as_mapping(latency[key])
        speedup = entry.get("speedup")
        if is_number(speedup) and speedup > 0:
            label = f"{latency_label(key, entry)} latency"
            cards.append(Card(label, speed(speedup), f"{ms(entry.get('base_ms'))} → {ms(entry.get('slim_ms'))}"))
    return cards


def stage_brief(stage: Stage) -> str:
    """One line on what a finished stage found."""
    x = stage.summary or {}
    if stage.kind in ("train", "retrain"):
        return (
            f"test accuracy {pct(x.get('accuracy'))}, macro-F1 {dec(x.get('macro_f1'))}, "
            f"{human(x.get('params'))} parameters"
        )
    if stage.kind == "analyze":
        cut = as_mapping(x.get("cut_point"))
        return f"{len(as_list(x.get('cut_points')))} cut points; knee at {cut.get('name', '—')}"
    if stage.kind == "truncate":
        cut = as_mapping(x.get("cut_point"))
        return f"cut at {cut.get('name', '—')}; {pct(x.get('params_kept'))} of the parameters kept"
    if stage.kind == "compare":
        accuracy = get(x, "comparison", "metrics", "accuracy") or {}
        return f"accuracy {pct(accuracy.get('base'))} → {pct(accuracy.get('slim'))}"
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
    elif i.status is None:
        detail = f"no {stage.expected_output} yet"
    return StageRow(STAGE_TITLES.get(i.kind, i.kind), stage.state, i.label or "—", detail or "—")


def context(ordered: list[Stage], by_kind: Mapping[str, Stage], details: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The cards, the facts (the caller's ``details`` first, then what the results say) and the stage rows."""
    facts = list(details)
    given = {label for label, _ in facts}
    results = [s.summary for s in ordered if s.ready and s.summary]
    arch = next((get(x, "architecture") for x in results if get(x, "architecture")), None)
    if arch is None:
        arch = next((get(x, "base", "architecture") for x in results if get(x, "base", "architecture")), None)
    data = data_description(by_kind)
    classes = get(data, "classes")
    derived = [
        ("Architecture", arch),
        ("Dataset", get(data, "name") or get(data, "source")),
        ("Classes", len(classes) if isinstance(classes, list) else None),
        ("Image size", f"{get(data, 'image_size')} px" if get(data, "image_size") else None),
    ]
    facts += [(label, value) for label, value in derived if label not in given]
    return {"cards": headline_cards(by_kind), "facts": facts, "stages": [stage_row(s) for s in ordered]}


def render(ordered: list[Stage], by_kind: Mapping[str, Stage], details: Iterable[tuple[str, Any]]) -> Markup:
    return render_template("overview.html", **context(ordered, by_kind, details))
