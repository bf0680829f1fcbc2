"""One self-contained HTML page from the outputs of a pipeline's stages.

A report is described by a list of ``StageInput``: one per stage (job kind) with the folder holding its
files and, where known, its summary dict and job status. Sections are drawn from what is there: a stage
that has not produced its outputs yet shows "not run yet" (with its status when it is a job), known
pictures get captions in a fixed order, and any other PNG in a stage's folder is shown under its file
name. Every string from data is escaped; pictures are embedded as base64 ``data:`` URIs; CSS is inline;
there are no scripts and no external references, so the page works offline and printed.

Torch-free and stdlib-only (the API imports this).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from layercut.report.markup import (
    HTML,
    as_list,
    as_mapping,
    badge,
    chips,
    dec,
    facts,
    figure,
    figures,
    get,
    human,
    inside,
    integer,
    is_number,
    ms,
    note,
    para,
    pct,
    png_files,
    read_json,
    table,
    tag,
    text,
)
from layercut.report.style import CSS

log = logging.getLogger("layercut.report")

STAGE_KINDS = ("train", "analyze", "truncate", "retrain", "compare", "explain")
KEY_FILES = {
    "train": "metrics.json",
    "retrain": "metrics.json",
    "analyze": "analysis.json",
    "truncate": "truncate.json",
    "compare": "compare.json",
    "explain": "explain.json",
}
STAGE_TITLES = {
    "train": "train the base model",
    "analyze": "analyze (GBP + SSIM)",
    "truncate": "truncate at the cut point",
    "retrain": "retrain the slim model",
    "compare": "compare base and slim",
    "explain": "explain base and slim",
}
ACTIVE_STATUSES = ("queued", "running", "cancelling")
MAX_TABLE_ROWS = 200
SUBTITLE = "base model → analysis → cut → slim model → comparison → explanations"

MODEL_FIGURES = [
    ("training_curves.png", "Training curves: loss and accuracy per epoch on the training and validation splits"),
    ("confusion_matrix.png", "Confusion matrix on the test split (counts and row percentages)"),
    ("roc_curves.png", "One-vs-rest ROC curves on the test split"),
    ("confused_pairs.png", "The most-confused class pairs, with example images"),
]
CLASS_COUNTS = ("class_counts.png", "Images per class in each split")
GBP_FIGURES = [
    (
        "gbp_grid.png",
        "Guided-backprop maps of probe images at every cut point, from shallow to deep (the knee is marked)",
    )
]
SSIM_FIGURES = [
    ("ssim_curve.png", "SSIM between depths, with the knee"),
    ("similarity_matrix.png", "SSIM of the GBP maps between every pair of cut points"),
]
COMPARE_FIGURES = [("compare.png", "Base vs slim: accuracy, parameters, MACs and latency")]


@dataclass
class StageInput:
    """One stage of a report: its kind, the folder with its files and what else is known about it.

    ``status`` is the job's status (queued, running, cancelling, succeeded, failed, cancelled), or None for
    a CLI run folder, where a stage counts as done when its key file (``KEY_FILES``) is there.
    ``summary`` is the stage's summary (a job's stored result), used when the folder has no key file.
    """

    kind: str
    folder: Path | None = None
    summary: Mapping[str, Any] | None = None
    status: str | None = None
    label: str | None = None  # how the page names the stage's place: "base/", "job 3f0c…"
    params: Mapping[str, Any] | None = None
    step: int | None = None
    percent: float | None = None
    stage: str | None = None
    message: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    expects: str | None = None  # for a CLI run: the file whose presence means the stage ran (default: its key file)


@dataclass
class _Stage:
    input: StageInput
    summary: dict | None
    pngs: list[Path]
    used: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return self.input.kind

    @property
    def ready(self) -> bool:
        if self.input.status not in (None, "succeeded"):
            return False
        return self.summary is not None or (self.kind == "explain" and bool(self.pngs))

    def take(self, known: Sequence[tuple[str, str]]) -> list[HTML]:
        """Figures for the known files present (in the given order) not shown yet."""
        out = []
        by_name = {p.name: p for p in self.pngs}
        for name, caption in known:
            if name in by_name and name not in self.used:
                self.used.add(name)
                out.append(figure(by_name[name], caption, self.input.folder))
        return out

    def rest(self) -> list[HTML]:
        """Figures for every PNG of the folder not shown yet, captioned by file name."""
        out = []
        for path in self.pngs:
            if path.name not in self.used:
                self.used.add(path.name)
                out.append(figure(path, _caption_from_name(path.stem), self.input.folder))
        return out


def _caption_from_name(stem: str) -> str:
    words = stem.replace("_", " ").strip()
    return (words[:1].upper() + words[1:]) if words else stem


def _resolve(stage: StageInput) -> _Stage:
    folder = stage.folder if stage.folder is not None and stage.folder.is_dir() else None
    # The key file is the stage's full record; a job's stored result is the same summary, used when the file is gone.
    summary = read_json(folder / KEY_FILES.get(stage.kind, f"{stage.kind}.json")) if folder is not None else None
    if summary is None and isinstance(stage.summary, Mapping) and stage.summary:
        summary = dict(stage.summary)
    return _Stage(stage, summary, png_files(folder))


# --------------------------------------------------------------------------------------------------
# the page


@dataclass
class _Section:
    ident: str
    title: str
    stage: _Stage | None  # the stage whose status the section follows (None: the overview)
    body: HTML


def render_report(
    stages: Sequence[StageInput],
    title: str,
    *,
    subtitle: str | None = None,
    details: Iterable[tuple[str, Any]] = (),
    status: str | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The HTML page for ``stages`` (one per kind; the first of a kind wins).

    Sections appear for the stages given: data and base model (train), GBP maps and SSIM/knee (analyze),
    what was cut and why (truncate), slim model (retrain), comparison (compare), explanations (explain);
    the data section follows retrain when there is no train stage. A stage not done shows "not run yet" with
    its status. ``details`` are (label, value) pairs shown in the overview (values are escaped); ``status`` is
    an overall status shown beside the title.
    """
    resolved: dict[str, _Stage] = {}
    ordered: list[_Stage] = []
    for stage in stages:
        item = _resolve(stage)
        ordered.append(item)
        resolved.setdefault(stage.kind, item)

    sections: list[_Section] = []
    data_stage = resolved.get("train") or resolved.get("retrain")
    plan: list[tuple[str, str, _Stage | None, Callable[[_Stage], HTML]]] = [
        ("data", "The data", data_stage, _data_body),
        ("base", "Base model", resolved.get("train"), lambda s: _model_body(s, "base")),
        ("gbp", "Guided-backprop maps across depth", resolved.get("analyze"), _gbp_body),
        ("ssim", "SSIM curve and knee", resolved.get("analyze"), _ssim_body),
        ("cut", "What was cut and why", resolved.get("truncate"), lambda s: _cut_body(s, resolved.get("analyze"))),
        ("slim", "Slim model", resolved.get("retrain"), lambda s: _model_body(s, "slim")),
        ("compare", "Base vs slim", resolved.get("compare"), _compare_body),
        ("explain", "Explanations", resolved.get("explain"), _explain_body),
    ]
    for ident, heading, stage, make in plan:
        if stage is None:
            continue
        try:
            body = make(stage) if stage.ready else _pending(stage)
        except Exception as exc:  # a malformed summary must not take the whole report down
            log.exception("report section %s could not be drawn", ident)
            body = note(
                f"This section could not be drawn from the stage's outputs ({type(exc).__name__}: {exc}).", "note warn"
            )
        sections.append(_Section(ident, heading, stage, body))

    try:
        overview_body = _overview_body(ordered, resolved, details)
    except Exception as exc:  # as above: say what went wrong instead of failing
        log.exception("the report's overview could not be drawn")
        overview_body = note(f"The overview could not be drawn ({type(exc).__name__}: {exc}).", "note warn")
    overview = _Section("overview", "Overview", None, overview_body)
    return _page(title, subtitle, status, [overview, *sections], generated_at or datetime.now(timezone.utc))


def _page(title: str, subtitle: str | None, status: str | None, sections: list[_Section], when: datetime) -> str:
    toc_items = []
    blocks = []
    for number, section in enumerate(sections, start=1):
        state = _section_state(section.stage)
        toc_items.append(
            tag("li", HTML(tag("a", section.title, href=f"#{section.ident}") + (" " + badge(state) if state else "")))
        )
        heading = tag(
            "h2",
            HTML(f'<span class="num">{number}</span> {text(section.title)}' + (" " + badge(state) if state else "")),
        )
        where = _where(section.stage)
        blocks.append(tag("section", HTML(heading + where + section.body), id=section.ident))
    version = _version()
    heading = tag("h1", HTML(text(title) + (" " + badge(status) if status else "")))
    header = HTML(
        tag("p", "layercut report", cls="kicker") + heading + (tag("p", subtitle, cls="subtitle") if subtitle else "")
    )
    nav = tag(
        "nav", HTML(tag("h2", "Contents") + tag("ol", HTML("".join(toc_items)))), cls="toc", aria_label="Contents"
    )
    footer = tag(
        "footer",
        f"Made by layercut {version} on {when.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC. "
        "Self-contained: every picture is embedded in this file.",
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{tag('header', header)}{nav}{''.join(blocks)}{footer}</main></body></html>\n"
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("layercut")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "(development)"


def _section_state(stage: _Stage | None) -> str | None:
    if stage is None:
        return None
    if stage.input.status is not None:
        return stage.input.status
    return "done" if stage.ready else "not run yet"


def _where(stage: _Stage | None) -> HTML:
    if stage is None or not stage.input.label:
        return HTML("")
    return tag("p", f"from {stage.input.label}", cls="where")


def _expected(s: StageInput) -> str:
    return f"{s.label or ''}{s.expects or KEY_FILES.get(s.kind, 'its outputs')}"


def _pending(stage: _Stage) -> HTML:
    s = stage.input
    what = f"the {s.kind} step"
    if s.status is None:
        return note(
            f"Not run yet: {_expected(s)} is not there (the run is still going, or it stopped before this stage).",
            "note pending",
        )
    if s.status == "queued":
        return note(
            f"Not run yet: {what} is queued" + (" (it starts when the step before it succeeds)." if s.step else "."),
            "note pending",
        )
    if s.status in ("running", "cancelling"):
        detail = []
        if is_number(s.percent):
            detail.append(f"{s.percent:.0f}%")
        if s.stage:
            detail.append(str(s.stage))
        if s.message:
            detail.append(str(s.message))
        verb = "is running" if s.status == "running" else "is being cancelled"
        return note(f"Not run yet: {what} {verb}" + (f" ({' · '.join(detail)})." if detail else "."), "note pending")
    if s.status == "failed":
        reason = ": ".join(str(x) for x in (s.error_code, s.error_message) if x) or "no error recorded"
        return note(f"{what.capitalize()} failed — {reason}", "note error")
    if s.status == "cancelled":
        return note(f"Not run: {what} was cancelled.", "note pending")
    if s.status == "succeeded":
        return note(
            f"{what.capitalize()} succeeded, but its outputs ({KEY_FILES.get(s.kind, 'files')}) are missing "
            "from the artifact volume.",
            "note warn",
        )
    return note(f"Not run yet: {what} is {s.status}.", "note pending")


# --------------------------------------------------------------------------------------------------
# overview


def _overview_body(ordered: list[_Stage], by_kind: dict[str, _Stage], extra: Iterable[tuple[str, Any]]) -> HTML:
    parts: list[str] = []
    cards = _headline_cards(by_kind)
    if cards:
        parts.append(cards)
    pairs = list(extra)
    known = {k for k, _ in pairs}
    summaries = [s.summary for s in ordered if s.ready and s.summary]
    arch = next((get(x, "architecture") for x in summaries if get(x, "architecture")), None)
    if arch is None:
        arch = next((get(x, "base", "architecture") for x in summaries if get(x, "base", "architecture")), None)
    data = _data_info(by_kind)
    derived = [
        ("Architecture", arch),
        ("Dataset", get(data, "name") or get(data, "source")),
        ("Classes", len(get(data, "classes")) if isinstance(get(data, "classes"), list) else None),
        ("Image size", f"{get(data, 'image_size')} px" if get(data, "image_size") else None),
    ]
    pairs += [(k, v) for k, v in derived if k not in known]
    parts.append(facts(pairs))
    parts.append(tag("h3", "Stages"))
    rows, classes = [], []
    for s in ordered:
        i = s.input
        detail: Any = "—"
        if i.status in ("running", "cancelling"):
            percent = f"{i.percent:.0f}%" if is_number(i.percent) else None
            detail = " · ".join(x for x in (percent, i.stage, i.message) if x)
        elif i.status == "failed":
            detail = ": ".join(str(x) for x in (i.error_code, i.error_message) if x)
        elif i.status == "queued":
            detail = "waits for the step before" if i.step else "waits for a worker"
        elif s.ready:
            detail = _stage_brief(s)
        elif i.status is None:
            detail = f"no {_expected(i)} yet"
        state = i.status if i.status is not None else ("done" if s.ready else "not run yet")
        rows.append([STAGE_TITLES.get(i.kind, i.kind), badge(state), i.label or "—", detail or "—"])
        classes.append(None)
    parts.append(table(["Stage", "Status", "Where", "Detail"], rows, row_classes=classes, cls="stages"))
    return HTML("".join(parts))


def _stage_brief(s: _Stage) -> str:
    x = s.summary or {}
    if s.kind in ("train", "retrain"):
        return (
            f"test accuracy {pct(x.get('accuracy'))}, macro-F1 {dec(x.get('macro_f1'))}, "
            f"{human(x.get('params'))} parameters"
        )
    if s.kind == "analyze":
        cut = as_mapping(x.get("cut_point"))
        return f"{len(as_list(x.get('cut_points')))} cut points; knee at {cut.get('name', '—')}"
    if s.kind == "truncate":
        cut = as_mapping(x.get("cut_point"))
        return f"cut at {cut.get('name', '—')}; {pct(x.get('params_kept'))} of the parameters kept"
    if s.kind == "compare":
        acc = get(x, "comparison", "metrics", "accuracy") or {}
        return f"accuracy {pct(acc.get('base'))} → {pct(acc.get('slim'))}"
    if s.kind == "explain":
        return f"{len(s.pngs)} pictures"
    return "done"


def _headline_cards(by_kind: dict[str, _Stage]) -> HTML:
    def ready(kind: str) -> dict | None:
        s = by_kind.get(kind)
        return s.summary if s is not None and s.ready else None

    compare, train, retrain, truncate, analyze = (
        ready(k) for k in ("compare", "train", "retrain", "truncate", "analyze")
    )
    cards: list[tuple[str, str, str | None]] = []
    base_acc = get(compare, "base", "accuracy", default=get(train, "accuracy"))
    slim_acc = get(compare, "slim", "accuracy", default=get(retrain, "accuracy"))
    if is_number(base_acc):
        cards.append(("Base test accuracy", pct(base_acc), None))
    if is_number(slim_acc):
        delta = f"{(slim_acc - base_acc) * 100:+.1f} pts vs base" if is_number(base_acc) else None
        cards.append(("Slim test accuracy", pct(slim_acc), delta))
    cut = get(truncate, "cut_point") or get(analyze, "cut_point")
    if isinstance(cut, Mapping) and cut.get("name") is not None:
        total = get(truncate, "cut_points_total") or (len(as_list(get(analyze, "cut_points"))) or None)
        where = f"cut point {cut.get('index')}" + (f" of 0–{total - 1}" if is_number(total) else "")
        cards.append(("Cut after" if truncate else "Knee at", str(cut["name"]), where))
    base_params = get(compare, "base", "params", default=get(truncate, "base_params", default=get(train, "params")))
    slim_params = get(compare, "slim", "params", default=get(truncate, "slim_params", default=get(retrain, "params")))
    if is_number(base_params) and is_number(slim_params) and base_params:
        cards.append(
            ("Parameters kept", pct(slim_params / base_params), f"{human(slim_params)} of {human(base_params)}")
        )
    latency = get(compare, "comparison", "latency")
    if isinstance(latency, Mapping) and latency:
        key = "cpu_b1" if "cpu_b1" in latency else next(iter(latency))
        entry = as_mapping(latency[key])
        speed = entry.get("speedup")
        if is_number(speed) and speed > 0:
            cards.append(
                (
                    f"{_latency_label(key, entry)} latency",
                    _speed(speed),
                    f"{ms(entry.get('base_ms'))} → {ms(entry.get('slim_ms'))}",
                )
            )
    if not cards:
        return HTML("")
    items = "".join(
        tag(
            "div",
            HTML(
                tag("div", label, cls="label")
                + tag("div", value, cls="value")
                + (tag("div", sub, cls="sub") if sub else "")
            ),
            cls="card",
        )
        for label, value, sub in cards
    )
    return tag("div", HTML(items), cls="cards")


def _speed(speedup: float) -> str:
    return f"{speedup:.2f}× faster" if speedup >= 1 else f"{1 / speedup:.2f}× slower"


def _latency_label(key: str, entry: Mapping) -> str:
    device, _, batch = str(key).partition("_b")
    batch = entry.get("batch_size", batch)
    return f"{device.upper()}, batch {batch}"


# --------------------------------------------------------------------------------------------------
# data


def _data_info(by_kind: dict[str, _Stage]) -> dict:
    for kind in ("train", "retrain"):
        s = by_kind.get(kind)
        if s is not None and s.ready and isinstance(get(s.summary, "data"), Mapping):
            return dict(s.summary["data"])
    return {}


def _data_body(stage: _Stage) -> HTML:
    data = as_mapping(get(stage.summary, "data"))
    parts: list[str] = []
    classes = as_list(data.get("classes")) or as_list(get(stage.summary, "classes"))
    split = as_mapping(data.get("split"))
    split_text = None
    if split:
        seed = f"(seed {split['seed']})" if "seed" in split else None
        split_text = " ".join(str(x) for x in (split.get("method"), seed) if x)
        if split.get("note"):
            split_text += f" — {split['note']}"
    skipped = as_mapping(data.get("skipped"))
    image_size = data.get("image_size")
    parts.append(
        facts(
            [
                ("Dataset", data.get("name")),
                ("Source", data.get("source")),
                ("Kind", data.get("kind")),
                (
                    "Classes",
                    HTML(f"{len(classes)} " + chips(classes[:MAX_TABLE_ROWS]) + _more(len(classes)))
                    if classes
                    else None,
                ),
                ("Image size", f"{image_size} × {image_size} px" if image_size else None),
                ("Channels in the source", data.get("source_channels")),
                ("Split", split_text),
                ("Unreadable files skipped", skipped.get("count") if skipped else None),
            ]
        )
    )
    sizes = as_mapping(data.get("sizes"))
    per_class = as_mapping(data.get("per_class"))
    split_names = [k for k in ("train", "val", "test") if k in sizes or k in per_class] or list(sizes)
    if per_class and classes:
        rows = []
        for name in classes[:MAX_TABLE_ROWS]:
            counts = [get(per_class, sp, name) for sp in split_names]
            total = sum(c for c in counts if is_number(c))
            rows.append([name, *(integer(c) for c in counts), integer(total)])
        totals = [
            sizes.get(sp)
            if is_number(sizes.get(sp))
            else sum(v for v in as_mapping(per_class.get(sp)).values() if is_number(v))
            for sp in split_names
        ]
        rows.append(
            [
                HTML("<strong>all classes</strong>"),
                *(integer(t) for t in totals),
                integer(sum(t for t in totals if is_number(t))),
            ]
        )
        caption = "Images per class and split" + (
            f" (first {MAX_TABLE_ROWS} classes)" if len(classes) > MAX_TABLE_ROWS else ""
        )
        parts.append(
            table(
                ["Class", *split_names, "total"],
                rows,
                numeric=range(1, len(split_names) + 2),
                caption=caption,
                row_classes=[None] * (len(rows) - 1) + ["total"],
            )
        )
    elif sizes:
        parts.append(
            table(
                ["Split", "Images"],
                [[k, integer(v)] for k, v in sizes.items()],
                numeric=[1],
                caption="Images per split",
            )
        )
    warnings = [w for w in as_list(data.get("warnings")) if w]
    if warnings:
        parts.append(tag("h3", "Warnings") + tag("ul", HTML("".join(tag("li", w) for w in warnings[:50]))))
    files = as_list(skipped.get("files"))
    if files:
        shown = "".join(
            tag("li", f if not isinstance(f, Mapping) else " — ".join(str(v) for v in f.values())) for f in files[:20]
        )
        more = tag("li", f"… and {len(files) - 20} more") if len(files) > 20 else ""
        parts.append(tag("h3", "Skipped files") + tag("ul", HTML(shown + more)))
    figs = stage.take([CLASS_COUNTS])
    parts.append(figures(figs))
    if not data:
        parts.append(note("The stage recorded no description of its data.", "note warn"))
    return HTML("".join(parts))


# --------------------------------------------------------------------------------------------------
# models


def _more(n: int) -> HTML:
    return text(f" … and {n - MAX_TABLE_ROWS} more") if n > MAX_TABLE_ROWS else HTML("")


def _training_settings(config: Mapping) -> str | None:
    if not config:
        return None
    bits = []
    if config.get("optimizer"):
        bits.append(str(config["optimizer"]))
    bits.append(f"lr {config['lr']}" if config.get("lr") is not None else "lr (the optimizer's default)")
    for key, label in (
        ("batch_size", "batch"),
        ("epochs", "max epochs"),
        ("schedule", "{} schedule"),
        ("weight_decay", "weight decay"),
        ("label_smoothing", "label smoothing"),
        ("patience", "patience"),
        ("seed", "seed"),
    ):
        if config.get(key) is not None:
            bits.append(label.format(config[key]) if "{}" in label else f"{label} {config[key]}")
    if "augment" in config:
        bits.append("augmentation on" if config["augment"] else "no augmentation")
    return ", ".join(bits)


def _model_body(stage: _Stage, role: str) -> HTML:
    x = stage.summary or {}
    parts: list[str] = []
    cut = as_mapping(x.get("cut_point"))
    epochs = x.get("epochs_run")
    epoch_text = None
    if epochs is not None:
        epoch_text = f"{epochs} (best epoch {x.get('best_epoch', '—')}"
        epoch_text += ", stopped early)" if x.get("stopped_early") else ")"
    how = None
    if role == "slim":
        how = "from scratch (weights re-initialised)" if x.get("from_scratch") else "fine-tuned from the kept weights"
    parts.append(
        facts(
            [
                ("Architecture", x.get("architecture")),
                ("Cut after", f"{cut.get('name')} (cut point {cut.get('index')})" if cut else None),
                ("Trained", how),
                ("Pretrained weights", ("yes" if x.get("pretrained") else "no") if "pretrained" in x else None),
                (
                    "Parameters",
                    f"{integer(x.get('params'))} ({human(x.get('params'))})" if is_number(x.get("params")) else None,
                ),
                ("Epochs run", epoch_text),
                (
                    "Best validation accuracy",
                    pct(x.get("best_val_accuracy")) if is_number(x.get("best_val_accuracy")) else None,
                ),
                (
                    "Training throughput",
                    f"{x['images_per_second']:.0f} images/s on {x.get('device', '?')}"
                    if is_number(x.get("images_per_second"))
                    else x.get("device"),
                ),
                ("Settings", _training_settings(as_mapping(x.get("config")))),
            ]
        )
    )
    val, test = as_mapping(x.get("val")), as_mapping(x.get("test"))
    if not test:
        test = {"accuracy": x.get("accuracy"), "macro_f1": x.get("macro_f1")}
    rows = []
    for key, label, fmt in (
        ("accuracy", "Accuracy", pct),
        ("macro_f1", "Macro-F1", dec),
        ("macro_precision", "Macro precision", dec),
        ("macro_recall", "Macro recall", dec),
        ("weighted_f1", "Weighted F1", dec),
        ("roc_auc_macro", "ROC AUC (macro, one-vs-rest)", dec),
    ):
        if key in test or key in val:
            rows.append([label, fmt(val.get(key)) if val else "—", fmt(test.get(key))])
    parts.append(table(["Metric", "validation", "test"], rows, numeric=[1, 2], caption="Metrics", cls="metrics"))
    per_class = as_mapping(test.get("per_class"))
    if per_class:
        auc = as_mapping(test.get("roc_auc_per_class"))
        rows = []
        for name, value in list(per_class.items())[:MAX_TABLE_ROWS]:
            v = as_mapping(value)
            rows.append(
                [
                    name,
                    dec(v.get("precision")),
                    dec(v.get("recall")),
                    dec(v.get("f1")),
                    integer(v.get("support")),
                    dec(auc.get(name)),
                ]
            )
        caption = f"Per-class metrics on the test split ({len(per_class)} classes" + (
            f", first {MAX_TABLE_ROWS} shown)" if len(per_class) > MAX_TABLE_ROWS else ")"
        )
        parts.append(
            table(
                ["Class", "precision", "recall", "F1", "support", "ROC AUC"], rows, numeric=range(1, 6), caption=caption
            )
        )
    confused = [c for c in as_list(test.get("most_confused")) if isinstance(c, Mapping)]
    if confused:
        rows = [
            [c.get("true"), c.get("predicted"), integer(c.get("count")), pct(c.get("share_of_true"))]
            for c in confused[:10]
        ]
        parts.append(
            table(
                ["True class", "predicted as", "images", "share of the true class"],
                rows,
                numeric=[2, 3],
                caption="Most-confused pairs (test split)",
            )
        )
    elif per_class:
        parts.append(para("No class was confused with another on the test split.", "muted"))
    known = MODEL_FIGURES + ([CLASS_COUNTS] if role == "slim" else [])
    parts.append(figures(stage.take(known) + stage.rest()))
    return HTML("".join(parts))


# --------------------------------------------------------------------------------------------------
# analysis


def _cut_point_table(analysis: Mapping) -> HTML:
    points = [p for p in as_list(analysis.get("cut_points")) if isinstance(p, Mapping)]
    if not points:
        return HTML("")
    curves = as_mapping(analysis.get("curves"))
    cut_curve, adjacent = as_list(curves.get("cut")), as_list(curves.get("adjacent"))
    knee = get(analysis, "cut_point", "index", default=get(analysis, "knee", "index"))
    rows, classes = [], []
    shown = points[:MAX_TABLE_ROWS]
    for i, p in enumerate(shown):
        index = p.get("index", i)
        shape = " × ".join(str(p[k]) for k in ("channels", "height", "width") if p.get(k) is not None) or "—"
        name = HTML(text(p.get("name")) + (' <span class="knee-mark">knee</span>' if index == knee else ""))
        rows.append([index, name, p.get("module", "—"), shape, dec(get(cut_curve, index)), dec(get(adjacent, index))])
        classes.append("knee" if index == knee else None)
    caption = "Cut points, shallow to deep. Cut curve k: mean SSIM over pairs i ≤ k < j; adjacent k: SSIM(k, k+1)" + (
        f" (first {MAX_TABLE_ROWS} of {len(points)})" if len(points) > MAX_TABLE_ROWS else ""
    )
    return table(
        ["#", "Cut point", "Module", "Output (C × H × W)", "cut curve", "adjacent"],
        rows,
        numeric=[0, 4, 5],
        row_classes=classes,
        caption=caption,
    )


def _gbp_body(stage: _Stage) -> HTML:
    a = stage.summary or {}
    probes, gbp, image = as_mapping(a.get("probes")), as_mapping(a.get("gbp")), as_mapping(a.get("map_image"))
    parts: list[str] = []
    intro = (
        "Each map is the gradient of the sum of all activations at a cut point with respect to the input image, "
        "where every ReLU below it passes only positive gradient where its input was positive "
        "(guided backpropagation). Maps that stop changing with depth mean the deeper layers add little."
    )
    parts.append(para(intro))
    probe_text = None
    if probes:
        probe_text = (
            f"{probes.get('count', '—')} images of the {probes.get('split', '—')} split "
            f"({probes.get('per_class', '—')} per class, seed {probes.get('seed', '—')})"
        )
    parts.append(
        facts(
            [
                ("Probe images", probe_text),
                ("Gradient rule", gbp.get("rule")),
                ("Map image", image.get("normalisation")),
                ("Cut points", len(as_list(a.get("cut_points"))) or None),
            ]
        )
    )
    parts.append(figures(stage.take(GBP_FIGURES)))
    parts.append(_cut_point_table(a))
    return HTML("".join(parts))


def _knee_text(knee: Mapping) -> HTML:
    if not knee:
        return HTML("")
    if knee.get("found"):
        return text(
            f"found by kneed.KneeLocator (S={knee.get('S')}, curve='{knee.get('curve')}', "
            f"direction='{knee.get('direction')}')"
        )
    rule = f" (rule {knee['rule']})" if knee.get("rule") else ""
    return text(f"no knee found — {knee.get('reason') or 'no reason recorded'}{rule}")


def _ssim_body(stage: _Stage) -> HTML:
    a = stage.summary or {}
    knee, ssim, cut = as_mapping(a.get("knee")), as_mapping(a.get("ssim")), as_mapping(a.get("cut_point"))
    mode = knee.get("curve_mode") or get(a, "config", "curve")
    mode_text = {
        "cut": "cut curve: mean SSIM over the pairs of maps on either side of each depth (the paper's SSIM cut curve)",
        "adjacent": "adjacent curve: SSIM between the maps of neighbouring cut points",
    }.get(mode, mode)
    seconds = as_mapping(a.get("seconds"))
    ssim_text = None
    if ssim:
        ssim_text = (
            f"data range {ssim.get('data_range')}, {ssim.get('win_size')}×{ssim.get('win_size')} "
            f"{'Gaussian' if ssim.get('gaussian_weights') else 'uniform'} window, K1 {ssim.get('k1')}, "
            f"K2 {ssim.get('k2')}, {ssim.get('covariance')} covariance, "
            f"border of {ssim.get('border_cropped')} cropped, mean over {ssim.get('channels')} channel(s)"
        )
    timing = None
    if seconds:
        timing = " · ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if is_number(v))
        timing += f" on {a['device']}" if a.get("device") else ""
    parts = [
        facts(
            [
                ("Curve", mode_text),
                (
                    "Knee",
                    HTML(text(f"{cut.get('name')} (cut point {cut.get('index')})") if cut else text(knee.get("index"))),
                ),
                ("How", _knee_text(knee)),
                ("Curve value at the knee", dec(cut.get("curve_value")) if is_number(cut.get("curve_value")) else None),
                ("SSIM", ssim_text),
                ("Time", timing),
            ]
        )
    ]
    if knee and not knee.get("found"):
        parts.append(
            note(
                HTML(
                    text(
                        "kneed found no knee on this curve; the cut point was chosen by the documented "
                        "fallback rule above."
                    )
                ),
                "note warn",
            )
        )
    parts.append(figures(stage.take(SSIM_FIGURES) + stage.rest()))
    return HTML("".join(parts))


# --------------------------------------------------------------------------------------------------
# the cut


def _cut_body(stage: _Stage, analyze: _Stage | None) -> HTML:
    t = stage.summary or {}
    a = analyze.summary if analyze is not None and analyze.ready else None
    cut = as_mapping(t.get("cut_point"))
    index = cut.get("index")
    points = [p for p in as_list(get(a, "cut_points")) if isinstance(p, Mapping)]
    total = t.get("cut_points_total") or (len(points) or None)
    chosen = t.get("chosen_by")
    requested = get(stage.input.params, "truncate", "cut")
    knee = as_mapping(get(a, "knee"))
    if chosen == "knee":
        why: Any = f"at the knee of the analysis's {knee.get('curve_mode', '')} SSIM curve".replace("  ", " ")
        if knee:
            why = HTML(text(why + " — ") + _knee_text(knee))
    elif chosen == "user":
        why = "named by the user" + (f" (cut = {requested!r})" if requested not in (None, "knee") else "")
        analysis_cut = as_mapping(get(a, "cut_point"))
        if analysis_cut.get("name") and analysis_cut.get("name") != cut.get("name"):
            why += f"; the analysis's knee was {analysis_cut.get('name')}"
    else:
        why = chosen or "not recorded"
    base_p, slim_p = t.get("base_params"), t.get("slim_params")
    kept = t.get("params_kept")
    if not is_number(kept) and is_number(base_p) and is_number(slim_p) and base_p:
        kept = slim_p / base_p
    params_text = None
    if is_number(base_p) and is_number(slim_p):
        params_text = f"{integer(base_p)} → {integer(slim_p)} ({pct(kept)} kept, {human(base_p - slim_p)} removed)"
    dropout = t.get("head_dropout", get(stage.input.params, "truncate", "dropout"))
    classes = get(a, "classes") or t.get("classes")
    head = (
        "global average pooling, dropout"
        + (f" p={dropout}" if is_number(dropout) else "")
        + ", one linear layer"
        + (f" to {len(classes)} classes" if isinstance(classes, list) else " to the classes")
    )
    parts = [
        facts(
            [
                (
                    "Cut after",
                    f"{cut.get('name', '—')} — cut point {index}" + (f" of 0–{total - 1}" if is_number(total) else ""),
                ),
                ("Why", why),
                ("Parameters", params_text),
                ("New head", head + " (untrained until the retrain step)"),
            ]
        )
    ]
    if points and isinstance(index, int):
        kept_names = [p.get("name") for p in points if isinstance(p.get("index"), int) and p["index"] <= index]
        dropped = [p.get("name") for p in points if isinstance(p.get("index"), int) and p["index"] > index]
        parts.append(
            facts(
                [
                    ("Cut points kept", HTML(chips(kept_names[:MAX_TABLE_ROWS])) if kept_names else None),
                    ("Cut points dropped", HTML(chips(dropped[:MAX_TABLE_ROWS])) if dropped else "none"),
                ]
            )
        )
    parts.append(figures(stage.take([]) + stage.rest()))
    return HTML("".join(parts))


# --------------------------------------------------------------------------------------------------
# comparison


def _compare_body(stage: _Stage) -> HTML:
    c = stage.summary or {}
    base, slim = as_mapping(c.get("base")), as_mapping(c.get("slim"))
    metrics = as_mapping(get(c, "comparison", "metrics"))

    def pair(key: str) -> tuple[Any, Any]:
        m = as_mapping(metrics.get(key))
        return (base.get(key, m.get("base")), slim.get(key, m.get("slim")))

    def kept(b: Any, s: Any) -> str:
        if not (is_number(b) and is_number(s)) or not b:
            return "—"
        return f"{s / b:.1%} kept ({(s / b - 1) * 100:+.1f}%)"

    rows = []
    b, s = pair("accuracy")
    rows.append(
        ["Test accuracy", pct(b), pct(s), f"{(s - b) * 100:+.1f} pts" if is_number(b) and is_number(s) else "—"]
    )
    b, s = pair("macro_f1")
    rows.append(["Macro-F1", dec(b), dec(s), f"{s - b:+.3f}" if is_number(b) and is_number(s) else "—"])
    b, s = pair("params")
    rows.append(["Parameters", f"{integer(b)}", f"{integer(s)}", kept(b, s)])
    b, s = pair("macs")
    rows.append(["MACs per image", human(b), human(s), kept(b, s)])
    b, s = pair("checkpoint_bytes")
    rows.append(["Checkpoint size", human(b, "B"), human(s, "B"), kept(b, s)])
    latency = as_mapping(get(c, "comparison", "latency"))
    keys = list(latency) or [k for k in as_mapping(base.get("latency")) if k in as_mapping(slim.get("latency"))]
    for key in keys:
        entry = as_mapping(latency.get(key))
        b_ms = entry.get("base_ms", get(base, "latency", key, "median_ms"))
        s_ms = entry.get("slim_ms", get(slim, "latency", key, "median_ms"))
        speed = (
            entry.get("speedup")
            if is_number(entry.get("speedup"))
            else (b_ms / s_ms if is_number(b_ms) and is_number(s_ms) and s_ms else None)
        )
        spread_b = _spread(get(base, "latency", key))
        spread_s = _spread(get(slim, "latency", key))
        rows.append(
            [
                f"Latency, {_latency_label(key, entry or as_mapping(get(base, 'latency', key)))}",
                HTML(text(ms(b_ms)) + spread_b),
                HTML(text(ms(s_ms)) + spread_s),
                _speed(speed) if is_number(speed) and speed > 0 else "—",
            ]
        )
    cut = as_mapping(slim.get("cut_point"))
    caption = "Base vs slim on the same test split" + (
        f" (slim cut after {cut.get('name')})" if cut.get("name") else ""
    )
    parts = [table(["", "base", "slim", "change"], rows, numeric=[1, 2, 3], caption=caption, cls="compare")]
    notes = []
    if get(c, "comparison", "latency_statistic"):
        notes.append(f"Latency: {get(c, 'comparison', 'latency_statistic')} (10th–90th percentile in brackets)")
    if c.get("threads"):
        notes.append(f"{c['threads']} CPU threads")
    if c.get("test_images"):
        notes.append(f"{c['test_images']} test images")
    if notes:
        parts.append(para("; ".join(notes) + ".", "muted"))
    parts.append(figures(stage.take(COMPARE_FIGURES) + stage.rest()))
    return HTML("".join(parts))


def _spread(entry: Any) -> HTML:
    p10, p90 = get(entry, "p10_ms"), get(entry, "p90_ms")
    if is_number(p10) and is_number(p90):
        return HTML(f' <span class="spread">({p10:.2f}–{p90:.2f})</span>')
    return HTML("")


# --------------------------------------------------------------------------------------------------
# explanations


EXPLAIN_FAMILIES = [  # (figure name prefix, heading, caption) of core.pipeline.explain's pictures, in report order
    ("cams", "Class activation maps", "class activation maps at {layer}"),
    ("class_cams", "Grad-CAM for every class", "Grad-CAM at {layer} for every class"),
    ("gradients", "Input gradients", "saliency, guided backprop and guided Grad-CAM of the explained class"),
    ("feature_maps", "Most active feature maps", "the most active channels of {feature_layer}"),
    ("receptive_field", "Receptive fields", "receptive field of the most active unit of {field_layer}"),
]
MAX_PREDICTION_ROWS = 64


def _explain_body(stage: _Stage) -> HTML:
    e = stage.summary or {}
    folder = stage.input.folder
    models = {str(k): as_mapping(v) for k, v in as_mapping(e.get("models")).items()}
    parts: list[str] = []
    target = e.get("target")
    target_text = {"predicted": "each model's predicted class", "all": "every class"}.get(target, target)
    if is_number(target) and isinstance(get(e, "classes", int(target)), str):
        target_text = f"class {target}: {e['classes'][int(target)]}"
    images = [i for i in as_list(e.get("images")) if isinstance(i, Mapping)]
    agreement = e.get("agreement")
    parts.append(
        facts(
            [
                ("Methods", HTML(chips(as_list(e.get("methods")))) if as_list(e.get("methods")) else None),
                ("Explained class", target_text),
                ("Images", f"{len(images)} images of the {e.get('split', 'test')} split" if images else None),
                (
                    "Agreement",
                    f"the models predict the same class on {pct(agreement, 0)} of these images"
                    if is_number(agreement)
                    else None,
                ),
                ("Time", f"{e['seconds']:.1f} s on {e.get('device', '?')}" if is_number(e.get("seconds")) else None),
            ]
        )
    )
    if models:
        rows = []
        for key, m in models.items():
            field_ = as_mapping(m.get("receptive_field"))
            size, stride = as_list(field_.get("size")), as_list(field_.get("stride"))
            rf = (
                f"{size[0]}×{size[1]} px, stride {stride[0]}"
                if len(size) == 2 and stride
                else (field_.get("error") or "—")
            )
            rows.append([key, m.get("label", "—"), m.get("layer", "—"), pct(m.get("accuracy_on_these_images"), 0), rf])
        parts.append(
            table(
                ["Model", "label", "explained layer", "accuracy on these images", "receptive field"],
                rows,
                numeric=[3],
                caption="The models explained",
            )
        )
        parts.append(_prediction_table(images, models))

    listed = e.get("figures")
    items: list[tuple[str, Any]] = (
        list(listed.items())
        if isinstance(listed, Mapping)
        else ([(None, v) for v in listed] if isinstance(listed, list) else [])
    )
    paths: dict[str, Path] = {}
    captions: dict[str, str] = {}
    problems: list[HTML] = []
    for name, value in items:
        file = value if isinstance(value, str) else (get(value, "file") or get(value, "path"))
        if not isinstance(file, str):
            continue
        path = folder / file if folder is not None else None
        if path is None or path.suffix.lower() != ".png" or not inside(path, folder):
            problems.append(
                note(f"{name or file}: {file} is listed in explain.json but is not a PNG in the folder", "note warn")
            )
            continue
        key = str(name) if name is not None else path.stem
        paths[key] = path
        if isinstance(value, Mapping) and (value.get("caption") or value.get("title")):
            captions[key] = str(value.get("caption") or value.get("title"))

    def show(key: str, default_caption: str) -> HTML | None:
        path = paths.pop(key, None)
        if path is None:
            return None
        ident = path.resolve().relative_to(folder.resolve()).as_posix()
        if ident in stage.used:
            return None
        stage.used.add(ident)
        return figure(path, captions.get(key, default_caption), folder, label=ident)

    shown_any = False
    pair = show(
        "base_vs_slim",
        "The same test images, base vs slim: Grad-CAM for each model's own prediction, with both predictions",
    )
    if pair is not None:
        parts.append(tag("h3", "Base vs slim, side by side") + figures([pair], "figs single"))
        shown_any = True
    keys = list(models) or sorted({k.rsplit("_", 1)[-1] for k in paths if "_" in k})
    for prefix, heading, caption in EXPLAIN_FAMILIES:
        group = []
        for key in keys:
            m = models.get(key, {})
            who = f"{key.capitalize()} model" + (f" ({m['label']})" if m.get("label") else "")
            fmt = {
                "layer": m.get("layer", "the explained layer"),
                "feature_layer": get(m, "feature_maps", "layer") or m.get("layer", "the layer"),
                "field_layer": get(m, "receptive_field", "layer") or m.get("layer", "the layer"),
            }
            item = show(f"{prefix}_{key}", f"{who}: {caption.format(**fmt)}")
            if item is not None:
                group.append(item)
        if group:
            parts.append(tag("h3", heading) + figures(group, "figs pairs"))
            shown_any = True
    others = [item for key in list(paths) if (item := show(key, _caption_from_name(key))) is not None] + stage.rest()
    if others:
        parts.append((tag("h3", "Other pictures") if shown_any else "") + figures(others))
    parts += problems
    if not shown_any and not others:
        parts.append(note("The explain step recorded no pictures.", "note warn"))
    return HTML("".join(parts))


def _prediction_table(images: list[Mapping], models: dict[str, Mapping]) -> HTML:
    if not images:
        return HTML("")
    keys = list(models)
    rows, classes = [], []
    for i, image in enumerate(images[:MAX_PREDICTION_ROWS]):
        cells: list[Any] = [image.get("index", i), image.get("true_class", image.get("true_label", "—"))]
        wrong = False
        for key in keys:
            p = as_mapping(get(models[key], "predictions", i))
            if not p:
                cells.append("—")
                continue
            ok = p.get("correct")
            wrong = wrong or ok is False
            mark = HTML(' <span class="ok">✓</span>' if ok else ' <span class="bad">✗</span>' if ok is False else "")
            cells.append(HTML(text(f"{p.get('class_name', p.get('class'))} ({pct(p.get('probability'), 0)})") + mark))
        rows.append(cells)
        classes.append("miss" if wrong else None)
    caption = "Predictions on the explained images" + (
        f" (first {MAX_PREDICTION_ROWS} of {len(images)})" if len(images) > MAX_PREDICTION_ROWS else ""
    )
    return table(
        ["Test image", "true class", *(f"{k} prediction" for k in keys)],
        rows,
        numeric=[0],
        row_classes=classes,
        caption=caption,
    )
