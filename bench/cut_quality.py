"""Benchmark: how good is each rule's cut? The knee of the SSIM curve against the auto cut's accuracy budget,
measured against a full sweep of the same base model (one slim model retrained at every cut point).

Not a test: it prints a table per case and writes the sweep charts. For each case (a data set, an architecture):

1. train a base model (--epochs, default settings otherwise) and analyse it (GBP, SSIM, knee, depth probes);
2. sweep: cut at every cut point and retrain each slim model with the same budget as the base (--epochs);
3. the rules, each judged on the sweep's retrained models (same seeds and settings, so the same models they would
   retrain; --confirm also runs the auto cut for real and checks it picks the same cut):
   - knee: the slim model cut at the knee (the paper's rule);
   - auto: the search of ``layercut.stages.cut_search`` replayed on the sweep's validation accuracies: the cut it
     picks, and how many retrains it needed (its time as a multiple of one retrain);
   - best: the sweep's smallest model (fewest MACs) within the budget on validation accuracy: what auto aims at.

Per rule it prints test accuracy minus the base model's, the gap to the best test accuracy of the sweep, and its
MACs relative to the smallest sweep model within the budget. Targets (issue 9): auto within the budget on every
case, and no larger than one cut point beyond the smallest model within the budget.

With ``--cuts`` other than ``all`` the sweep retrains only those cut points (a partial trade-off for cases whose
full sweep takes hours); the auto rule is then replayed only if every cut point its search asks for was swept.
``--resume`` reuses a base model and an analysis already in the case's folder (an interrupted run, or a second
``--cuts``), and gathers the cut points of the earlier partial sweeps of that base with this run's (as the
service's fan-in gathers parallel cut points), so two partial runs together judge the rules like one full sweep.

Run:  .venv/bin/python bench/cut_quality.py                      # digits+resnet18, scenes+resnet18, scenes+vgg11
      .venv/bin/python bench/cut_quality.py --cases digits:resnet18 --epochs 6 --confirm
      .venv/bin/python bench/cut_quality.py --cases scenes:vgg11 --image-size 64 --cuts 0,6
      .venv/bin/python bench/cut_quality.py --cases scenes:vgg11 --image-size 64 --cuts 1,2,3,4,5,7 --resume
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import time
from pathlib import Path

import environment  # noqa: F401  (bench/environment.py: the versions and settings header)
import torch

import layercut as lc
from layercut.contracts.configs import SelectConfig
from layercut.contracts.results import AnalyzeResult, Candidate, SweepResult, TrainResult
from layercut.stages.cut_search import Trial, search_cut
from layercut.stages.select import SweepPlan, gather_sweep

DEFAULT_CASES = "digits:resnet18,scenes:resnet18,scenes:vgg11"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"data:arch,… (default {DEFAULT_CASES})")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=6, help="epochs of the base model and of every retrain")
    p.add_argument("--max-drop", type=float, default=1.0, help="the budget, in points of validation accuracy")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("layercut-data/bench/cut_quality"))
    p.add_argument("--confirm", action="store_true", help="also run the auto cut for real (more retraining)")
    p.add_argument("--json", type=Path, default=None, help="write every number as JSON")
    p.add_argument("--head-init", default="probe", choices=["probe", "random"], help="how each slim head starts")
    p.add_argument(
        "--cuts",
        default="all",
        help="the cut points to sweep: all (default), every:K, 0,2,4,7, or none (with --resume: only gather the "
        "earlier partial sweeps)",
    )
    p.add_argument("--resume", action="store_true", help="reuse the base model and analysis already in --out")
    return p.parse_args()


class NotSwept(Exception):
    """The auto rule's search asked for a cut point a partial sweep did not retrain."""


def replay_auto(sweep: SweepResult, knee_index: int, probe: list[float] | None, config: SelectConfig) -> dict:
    """The auto cut's search, its retraining looked up in the sweep: which cut it picks and what it retrains."""
    by_index = {c.cut_point.index: c for c in sweep.candidates}
    retrained: list[Candidate] = []

    def swept(index: int) -> Candidate:
        if index not in by_index:
            raise NotSwept(index)
        return by_index[index]

    def retrain(index: int, reasons: list[str]) -> Trial:
        candidate = swept(index)
        retrained.append(candidate)
        return Trial(index, candidate.macs, candidate.params, candidate.val_accuracy)

    outcome = search_cut(
        points=len(sweep.candidates),
        threshold=sweep.budget.threshold,
        knee_index=knee_index,
        probe=probe,
        size_of=lambda i: (swept(i).macs, swept(i).params),
        retrain=retrain,
        max_retrains=config.max_retrains,
    )
    return {
        "chosen": by_index[outcome.chosen.index],
        "retrained": [c.cut_point.index for c in retrained],
        "seconds": sum(c.seconds for c in retrained),
        "within_budget": outcome.within_budget,
        "stopped": outcome.stopped,
    }


def sweep_folder(cuts: str) -> str:
    """Where a sweep of ``cuts`` is written: sweep/ for all of them, sweep-<cuts>/ for a partial one."""
    return "sweep" if cuts == "all" else "sweep-" + re.sub(r"[^A-Za-z0-9.]+", "_", cuts)


def gather_partial_sweeps(out: Path, sweep: SweepResult | None, arch: str) -> SweepResult:
    """This sweep (None: no new one) and every earlier partial sweep of the same base model (sweep-*/ of the case),
    gathered into sweep-gathered/ as the service's fan-in gathers its cut points (``gather_sweep``); this run's own
    cut points win."""
    earlier = [
        SweepResult.model_validate_json(path.read_text())
        for path in sorted(out.glob("sweep*/sweep.json"))
        if path.parent.name != "sweep-gathered"
    ]
    runs = ([sweep] if sweep is not None else []) + [e for e in earlier if sweep is None or e != sweep]
    if not runs:
        raise SystemExit(f"--cuts none: no earlier sweep in {out} to gather")
    first = runs[0]
    runs = [run for run in runs if Path(run.base_checkpoint).resolve() == Path(first.base_checkpoint).resolve()]
    found: dict[int, Candidate] = {}
    for run in runs:
        for candidate in run.candidates:
            found.setdefault(candidate.cut_point.index, candidate)
    if sweep is not None and len(found) == len(sweep.candidates):
        return sweep
    swept = sorted(found.values(), key=lambda c: c.cut_point.index)
    plan = SweepPlan(
        cut_points=[c.cut_point for c in swept],
        base=first.base,
        budget=first.budget,
        probe={c.cut_point.index: c.probe_accuracy for c in swept if c.probe_accuracy is not None},
    )
    print(f"gathered the cut points of {len(runs)} partial sweeps: {[c.cut_point.index for c in swept]}")
    return gather_sweep(
        first.base_checkpoint,
        arch,
        plan,
        swept,
        out / "analysis" / "analysis.json",
        first.config,
        first.retrain,
        out / "sweep-gathered",
        sum(c.seconds for c in swept),
    )


def rule_row(name: str, chosen: Candidate, base_accuracy: float, best_test: float, smallest: Candidate | None) -> dict:
    return {
        "rule": name,
        "cut": f"{chosen.cut_point.index} {chosen.cut_point.name}",
        "test_accuracy": chosen.accuracy,
        "vs_base_points": (chosen.accuracy - base_accuracy) * 100,
        "gap_to_best_points": (chosen.accuracy - best_test) * 100,
        "macs_vs_smallest_within": chosen.macs / smallest.macs if smallest else None,
        "cut_points_beyond_smallest": chosen.cut_point.index - smallest.cut_point.index if smallest else None,
        "within_budget": chosen.within_budget,
        "params": chosen.params,
        "macs": chosen.macs,
    }


def run_case(source: str, arch: str, args: argparse.Namespace) -> dict:
    out = args.out / f"{source}-{arch}-{args.image_size}px-{args.epochs}ep-{args.head_init}-head"
    started = time.perf_counter()
    data = lc.load_data(source, image_size=args.image_size)
    train = dict(epochs=args.epochs, seed=args.seed, head_init=args.head_init)
    trained, analysed = out / "base" / "metrics.json", out / "analysis" / "analysis.json"
    if args.resume and trained.is_file():
        base = TrainResult.model_validate_json(trained.read_text())
    else:
        base = lc.train(data, arch, out / "base", **train)
    if args.resume and analysed.is_file():
        analysis = AnalyzeResult.model_validate_json(analysed.read_text())
    else:
        analysis = lc.analyze(out / "base" / "model.safetensors", data, out / "analysis")
    folder = sweep_folder(args.cuts)
    swept = None
    if args.cuts != "none":
        swept = lc.sweep(
            out / "base" / "model.safetensors",
            data,
            out / folder,
            cuts=args.cuts,
            analysis=out / "analysis" / "analysis.json",
            max_drop=args.max_drop,
            **train,
        )
    sweep = gather_partial_sweeps(out, swept, arch) if args.resume or swept is None else swept
    if sweep is not swept:
        folder = "sweep-gathered"
    probe = analysis.depth_probes.curve if analysis.depth_probes else None
    config = SelectConfig(max_drop=args.max_drop)
    try:
        auto = replay_auto(sweep, analysis.cut_point.index, probe, config)
    except NotSwept as missing:
        auto = None
        print(f"auto: its search asks for cut point {missing}, which --cuts {args.cuts} did not sweep: not replayed")
    by_index = {c.cut_point.index: c for c in sweep.candidates}
    smallest = by_index[sweep.smallest_within_budget.index] if sweep.smallest_within_budget else None
    best_test = max(c.accuracy for c in sweep.candidates)
    one_retrain = sum(c.seconds for c in sweep.candidates) / len(sweep.candidates)
    sweep_seconds = sum(c.seconds for c in sweep.candidates)
    knee = by_index.get(analysis.cut_point.index)
    rows = [rule_row("knee", knee, base.accuracy, best_test, smallest)] if knee else []
    if auto is not None:
        rows.append(rule_row("auto", auto["chosen"], base.accuracy, best_test, smallest))
    if smallest is not None:
        rows.append(rule_row("smallest within budget (val)", smallest, base.accuracy, best_test, smallest))
    confirmed = None
    if args.confirm:
        real = lc.select(
            out / "base" / "model.safetensors",
            data,
            out / "analysis" / "analysis.json",
            out / "select",
            max_drop=args.max_drop,
            **train,
        )
        confirmed = {
            "cut": real.cut_point.name,
            "same_as_replay": None if auto is None else real.cut_point.index == auto["chosen"].cut_point.index,
            "retrained": [c.cut_point.index for c in real.candidates],
            "seconds": real.seconds,
        }
    return {
        "case": f"{source} + {arch} at {args.image_size} px, {args.epochs} epochs, {args.head_init} head",
        "base": {"test_accuracy": base.accuracy, "val_accuracy": sweep.base.val_accuracy, "params": sweep.base.params},
        "budget": sweep.budget.description,
        "threshold": sweep.budget.threshold,
        "knee": {"index": analysis.cut_point.index, "name": analysis.cut_point.name, "rule": analysis.knee.rule},
        "probe_curve": probe,
        "sweep": [
            {
                "cut": f"{c.cut_point.index} {c.cut_point.name}",
                "val": c.val_accuracy,
                "test": c.accuracy,
                "probe": c.probe_accuracy,
                "params": c.params,
                "macs": c.macs,
                "seconds": c.seconds,
            }
            for c in sweep.candidates
        ],
        "rules": rows,
        "auto": None
        if auto is None
        else {
            "retrained": auto["retrained"],
            "retrains": len(auto["retrained"]),
            "time_in_retrains": auto["seconds"] / one_retrain,
            "time_vs_chosen_retrain": auto["seconds"] / auto["chosen"].seconds,
            "time_vs_sweep": auto["seconds"] / sweep_seconds,
            "stopped": auto["stopped"],
        },
        "confirmed": confirmed,
        "chart": str(out / folder / "trade_off.png"),
        "seconds": time.perf_counter() - started,
    }


def print_case(case: dict) -> None:
    base = case["base"]
    print(f"\n## {case['case']}")
    print(
        f"base: test {base['test_accuracy']:.1%}, val {base['val_accuracy']:.1%}, {base['params']:,} params; "
        f"budget: {case['budget']} (val ≥ {case['threshold']:.1%}); knee at {case['knee']['name']} "
        f"({case['knee']['rule']})"
    )
    print("\n| cut point | probe (val) | retrained val | retrained test | params | MACs |")
    print("|---|---|---|---|---|---|")
    for row in case["sweep"]:
        probe = "–" if row["probe"] is None else f"{row['probe']:.1%}"
        print(
            f"| {row['cut']} | {probe} | {row['val']:.1%} | {row['test']:.1%} | {row['params']:,} | {row['macs']:,} |"
        )
    print("\n| rule | cut | test − base (pts) | gap to best (pts) | MACs / smallest within | within budget |")
    print("|---|---|---|---|---|---|")
    for row in case["rules"]:
        ratio = "–" if row["macs_vs_smallest_within"] is None else f"{row['macs_vs_smallest_within']:.2f}×"
        print(
            f"| {row['rule']} | {row['cut']} | {row['vs_base_points']:+.1f} | {row['gap_to_best_points']:+.1f} | "
            f"{ratio} | {'yes' if row['within_budget'] else 'NO'} |"
        )
    auto = case["auto"]
    print(
        f"knee at {case['knee']['name']}" + ("" if any(r["rule"] == "knee" for r in case["rules"]) else ": not swept")
    )
    if auto is not None:
        print(
            f"\nauto retrained cut points {auto['retrained']} ({auto['retrains']} retrains: "
            f"{auto['time_in_retrains']:.1f}× one average retrain of the sweep, {auto['time_vs_chosen_retrain']:.1f}× "
            f"the retrain of the chosen cut, {auto['time_vs_sweep']:.0%} of the full sweep); stopped: {auto['stopped']}"
        )
    if case["confirmed"]:
        c = case["confirmed"]
        print(f"confirmed by a real run: cut at {c['cut']}, same as the replay: {c['same_as_replay']}")
    print(f"chart: {case['chart']}; case took {case['seconds'] / 60:.1f} min")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; settings: {vars(args)}")
    cases = []
    for item in args.cases.split(","):
        source, arch = item.split(":")
        cases.append(run_case(source, arch, args))
        print_case(cases[-1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak:.0f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(cases, indent=2, default=str))


if __name__ == "__main__":
    main()
