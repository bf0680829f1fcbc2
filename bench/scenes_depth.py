"""Experiment: on the built-in ``scenes`` set, shallow cuts of a CNN lose accuracy and deep cuts keep it.

Not a test: it prints a table. For each architecture it trains a base model with the public Python API
(``layercut.load_data``, ``layercut.train``; TrainConfig defaults: AdamW, cosine schedule, random flips and
shifts, early stopping) and then, for a few cut points from shallow to deep, cuts the base model there
(``layercut.truncate``: the kept layers plus a new head of global average pool, dropout and a linear layer) and
fine-tunes the slim model with the same budget (``layercut.retrain``). It prints the test accuracy of the base
model and of every slim one, and how far each slim model falls below the base.

The ``scenes`` class is how many of three dots lie inside a closed fence, and every dot keeps a clearance
from the fence line, so a slim model whose last layer sees a few pixels around a dot should fall towards
chance (25 %), and one whose last layer sees a dot together with the fence around it should keep the base
accuracy. The script exits with status 1 when a base model scores below 90 %, its shallowest cut loses
less than 15 points or its deepest cut loses more than 2.

Run:  .venv/bin/python bench/scenes_depth.py [--archs resnet18 vgg11] [--image-size 64] [--epochs 6]
      [--cuts resnet18=1,3,5,7 vgg11=1,3,5,7] [--threads N] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import environment  # noqa: E402  (bench/environment.py)
import torch  # noqa: E402

import layercut  # noqa: E402
from layercut.stages.architectures import build_model  # noqa: E402
from layercut.stages.cutpoints import cut_points  # noqa: E402
from layercut.stages.data import Dataset  # noqa: E402
from layercut.stages.progress import SILENT, Reporter  # noqa: E402

DEFAULT_CUTS: dict[str, list[int]] = {"resnet18": [1, 3, 5, 7], "vgg11": [1, 3, 5, 7]}
BASE_AT_LEAST = 90.0  # test accuracy (%) a base model should reach
SHALLOW_LOSS_AT_LEAST = 15.0  # points the shallowest cut should lose
DEEP_LOSS_AT_MOST = 2.0  # points the deepest cut may lose


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archs", nargs="+", default=["resnet18", "vgg11"], metavar="ARCH")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6, help="epochs of the base model and of every slim model")
    p.add_argument(
        "--cuts",
        nargs="*",
        default=[],
        metavar="ARCH=I,J,…",
        help="cut point indices per architecture (default: resnet18=1,3,5,7 vgg11=1,3,5,7)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, default=None, help="where the checkpoints go (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--verbose", action="store_true", help="print the training loss at the end of every epoch")
    return p.parse_args(argv)


class EpochPrinter:
    """Prints the last progress message of every training epoch (its mean training loss) with --verbose."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.pending = label, enabled, ""

    def reporter(self) -> Reporter:
        return Reporter(callback=self.show) if self.enabled else SILENT

    def show(self, stage: str, fraction: float, message: str) -> None:
        same_epoch = message.startswith("epoch ") and self.pending.split(" loss")[0] == message.split(" loss")[0]
        if self.pending and not same_epoch:
            self.flush()
        self.pending = message if message.startswith("epoch ") else ""

    def flush(self) -> None:
        if self.pending:
            print(f"    {self.label} {self.pending}", flush=True)
        self.pending = ""


def cuts_for(args: argparse.Namespace) -> dict[str, list[int]]:
    """The cut point indices of every architecture asked for: --cuts where given, the defaults otherwise."""
    cuts = {arch: list(DEFAULT_CUTS.get(arch, [1, -2])) for arch in args.archs}
    for item in args.cuts:
        arch, _, indices = item.partition("=")
        cuts[arch] = [int(i) for i in indices.split(",") if i]
    return cuts


def run_architecture(arch: str, dataset: Dataset, cuts: list[int], args: argparse.Namespace, out: Path) -> dict:
    """Train the base model of ``arch``, then cut and retrain it at every index in ``cuts``; their results."""
    settings = {"epochs": args.epochs, "seed": args.seed, "device": args.device}
    names = [point.name for point in cut_points(build_model(arch, dataset.num_classes))]
    started = time.perf_counter()
    printer = EpochPrinter(f"{arch} base", args.verbose)
    base = layercut.train(dataset, arch, out / arch / "base", reporter=printer.reporter(), **settings)
    printer.flush()
    row = {
        "arch": arch,
        "base": {"accuracy": base.accuracy, "epochs_run": base.epochs_run, "seconds": time.perf_counter() - started},
        "cuts": [],
    }
    seconds = row["base"]["seconds"]
    print(f"  {arch:9s} base             test {100 * base.accuracy:5.1f} %  ({seconds:.0f} s)", flush=True)
    for index in cuts:
        started = time.perf_counter()
        cut = layercut.truncate(base.checkpoint, out / arch / f"cut{index}" / "slim.safetensors", cut=index)
        printer = EpochPrinter(f"{arch} cut {index}", args.verbose)
        slim = layercut.retrain(
            cut.checkpoint, dataset, out / arch / f"cut{index}", reporter=printer.reporter(), **settings
        )
        printer.flush()
        seconds = time.perf_counter() - started
        entry = {
            "index": cut.cut_point.index,
            "name": cut.cut_point.name,
            "of": len(names),
            "accuracy": slim.accuracy,
            "params_kept": cut.params_kept,
            "seconds": seconds,
        }
        row["cuts"].append(entry)
        print(
            f"  {arch:9s} cut {entry['index']} {entry['name']:12s} test {100 * slim.accuracy:5.1f} %  "
            f"({seconds:.0f} s)",
            flush=True,
        )
    return row


def print_table(rows: list[dict]) -> None:
    """Base and per-cut test accuracy, and each cut's loss against its base, in points."""
    print()
    print(f"| {'arch':9s} | {'model':20s} | test acc. | vs base | params kept | seconds |")
    print(f"| {'-' * 9} | {'-' * 20} | --------: | ------: | ----------: | ------: |")
    for row in rows:
        base = 100 * row["base"]["accuracy"]
        print(
            f"| {row['arch']:9s} | {'base':20s} | {base:7.1f} % | {'':7s} | {'1.000':>11s} | {row['base']['seconds']:7.0f} |"
        )
        for cut in row["cuts"]:
            label = f"cut {cut['index']}/{cut['of'] - 1} {cut['name']}"
            accuracy = 100 * cut["accuracy"]
            print(
                f"| {row['arch']:9s} | {label:20s} | {accuracy:7.1f} % | {accuracy - base:+7.1f} | "
                f"{cut['params_kept']:11.3f} | {cut['seconds']:7.0f} |"
            )


def check(rows: list[dict]) -> list[str]:
    """What the set is meant to show, per architecture: a good base, the shallowest cut loses, the deepest keeps."""
    problems = []
    for row in rows:
        base = 100 * row["base"]["accuracy"]
        if base < BASE_AT_LEAST:
            problems.append(f"{row['arch']}: the base model scores below {BASE_AT_LEAST:g} %")
        if not row["cuts"]:
            continue
        shallowest = min(row["cuts"], key=lambda c: c["index"])
        deepest = max(row["cuts"], key=lambda c: c["index"])
        if base - 100 * shallowest["accuracy"] < SHALLOW_LOSS_AT_LEAST:
            problems.append(f"{row['arch']}: the shallowest cut loses less than {SHALLOW_LOSS_AT_LEAST:g} points")
        if base - 100 * deepest["accuracy"] > DEEP_LOSS_AT_MOST:
            problems.append(f"{row['arch']}: the deepest cut loses more than {DEEP_LOSS_AT_MOST:g} points")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuts = cuts_for(args)
    print("scenes depth experiment")
    print(environment.describe(torch.device(args.device)))
    print(f"  image size {args.image_size} | epochs {args.epochs} | seed {args.seed} | cuts {cuts}")
    started = time.perf_counter()
    dataset = layercut.load_data("scenes", image_size=args.image_size, seed=args.seed)
    print(f"  data: {dataset.info['sizes']} in {time.perf_counter() - started:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        rows = [run_architecture(arch, dataset, cuts[arch], args, out) for arch in args.archs]
    total = time.perf_counter() - started
    print_table(rows)
    print(f"\n  wall time {total:.0f} s")
    problems = check(rows)
    for problem in problems:
        print(f"  NOT AS EXPECTED: {problem}")
    if args.json:
        payload = environment.record("scenes_depth", torch.device(args.device), args)
        payload.update({"rows": rows, "wall_seconds": total, "problems": problems})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
