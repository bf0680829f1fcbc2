"""Benchmark: training images per second of our train stage against a plain PyTorch DataLoader loop.

Not a test: it prints both rates and their ratio, measured in the same run.

ours      layercut.stages.training.train_model on the decoded in-memory split (uint8 tensors; batches are
          normalised and augmented — random flip and shift — on the training device; mixed precision and
          channels_last on CUDA), TrainConfig(epochs, batch_size, patience=None, device) otherwise default
          (AdamW with TrainConfig's learning rate and weight decay, cosine schedule).
baseline  the textures train split written once as PNG files in an ImageFolder layout (not timed), then
          torchvision.datasets.ImageFolder + Compose([RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])
          + DataLoader(batch_size, shuffle=True, num_workers=--workers, pin_memory on CUDA), fp32,
          contiguous format, the same architecture built with the same seed, AdamW with the same lr and weight
          decay, the same cosine schedule, cross-entropy; per step it reads the loss and the number correct
          (as our loop does, and as most hand-written loops do).

Timing, the same on both sides: training time only (no validation), summed over all epochs, each epoch from
its first batch request to its last optimizer step (GPU synchronised), DataLoader start-up and PNG decoding
included; images/s = training images seen / that time. Ours is TrainResult.images_per_second (measured
exactly this way inside train_model); the baseline is timed the same way here. Before the timed runs each side
trains a throw-away copy of the model for --warmup-batches batches (allocator, kernels, thread pools, page cache).

Run:  .venv/bin/python bench/train.py [--arch vgg11 --image-size 64 --epochs 2 --batch-size 32]
      [--device cuda] [--workers N] [--json result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import environment  # noqa: E402  (bench/environment.py)
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from layercut.contracts.configs import TrainConfig  # noqa: E402
from layercut.stages.architectures import ARCHITECTURES, build_model  # noqa: E402
from layercut.stages.data import Split, dataset_statistics, load_dataset  # noqa: E402
from layercut.stages.training import train_model  # noqa: E402

TARGET_CPU = 1.0
TARGET_GPU = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--arch",
        default="vgg11",
        choices=ARCHITECTURES,
        metavar="ARCH",
        help="smallcnn, vgg11..vgg19 (and _bn), resnet18..resnet152, efficientnet_b0..b3, mobilenet_v2, mobilenet_v3_small/large",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="baseline DataLoader num_workers (default: 2 on the CPU — PNG decoding of small images is cheap and more "
        "workers only take cores from training; min(8, CPU cores) on CUDA)",
    )
    p.add_argument("--warmup-batches", type=int, default=3, help="untimed warm-up batches per side (0 to skip)")
    p.add_argument(
        "--repeats", type=int, default=1, help="timed runs per side, order alternating; the best rate counts"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.warmup_batches < 0 or args.repeats < 1:
        p.error("--epochs and --repeats must be >= 1, --batch-size >= 2, --warmup-batches >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA GPU")
    if args.workers is None:
        args.workers = 2 if args.device == "cpu" else min(8, os.cpu_count() or 1)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# Baseline: PNG files + ImageFolder + DataLoader + a plain loop
# ------------------------------------------------------------------------------------------------


def write_image_folder(split: Split, classes: list[str], root: Path) -> None:
    """Each image of ``split`` as root/<class>/<i>.png (RGB), the layout ImageFolder reads."""
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(split.images, split.labels.tolist())):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / classes[label] / f"{i:05d}.png")


def make_loader(
    root: Path, mean: list[float], std: list[float], batch_size: int, workers: int, device: torch.device, seed: int
):
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(dataset) % batch_size == 1,  # as ours: BatchNorm cannot train on a trailing batch of one
    )


def baseline_train(
    model: nn.Module,
    loader,
    device: torch.device,
    epochs: int,
    lr: float,
    weight_decay: float,
    max_batches: int | None = None,
) -> tuple[int, float]:
    """The plain loop; returns (training images seen, training seconds summed over epochs)."""
    model.to(device).train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # the per-step learning-rate update costs nothing measurable; cosine mirrors TrainConfig's default schedule
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    seen, seconds = 0, 0.0
    for _ in range(epochs):
        sync(device)
        started = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for b, (images, labels) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = model(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        sync(device)
        seconds += time.perf_counter() - started
    return seen, seconds


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def resolved_lr(config: TrainConfig) -> float:
    """The learning rate train_model will use (TrainConfig.lr may be None: the optimizer's default then)."""
    try:
        from layercut.contracts.configs import learning_rate
    except ImportError:  # older TrainConfig: lr is always a number
        return float(config.lr)
    return float(learning_rate(config))


def fresh_model(arch: str, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes)


def subset(split: Split, count: int) -> Split:
    return Split(split.images[:count], split.labels[:count], split.sources[:count])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dataset = load_dataset("textures", image_size=args.image_size)
    mean, std = dataset_statistics(dataset.train)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patience=None, device=args.device, seed=args.seed
    )
    n_train = len(dataset.train)
    lr = resolved_lr(config)

    print("layercut train benchmark — train_model vs ImageFolder + DataLoader + plain loop")
    print(environment.describe(device))
    print(
        f"  arch {args.arch} | image {args.image_size} px | textures train split: {n_train} images, "
        f"{dataset.num_classes} classes | epochs {args.epochs} | batch {args.batch_size} | seed {args.seed}"
    )
    print(f"  optimiser AdamW lr {lr:g} wd {config.weight_decay:g}; schedule: ours {config.schedule}, baseline cosine")
    ours_extra = "mixed precision + channels_last" if device.type == "cuda" else "fp32"
    print(f"  ours: in-memory uint8 tensors, flip + shift augmentation on the device, {ours_extra}")
    print(
        f"  baseline: PNG ImageFolder, RandomHorizontalFlip + ToTensor + Normalize, DataLoader num_workers "
        f"{args.workers}, fp32"
    )
    print(
        f"  timing: training only (validation excluded), summed over all epochs; warm-up {args.warmup_batches} "
        "untimed batches per side on a throw-away model"
    )
    print()

    with tempfile.TemporaryDirectory(prefix="layercut-bench-") as tmp:
        root = Path(tmp) / "train"
        t0 = time.perf_counter()
        write_image_folder(dataset.train, dataset.classes, root)
        print(f"  (wrote {n_train} PNG files in {time.perf_counter() - t0:.1f} s — not timed)")
        loader = make_loader(root, mean, std, args.batch_size, args.workers, device, args.seed)

        if args.warmup_batches:
            warm_images = min(n_train, args.warmup_batches * args.batch_size)
            warm_cfg = config.model_copy(update={"epochs": 1})
            train_model(
                fresh_model(args.arch, dataset.num_classes, args.seed),
                subset(dataset.train, warm_images),
                subset(dataset.val, min(len(dataset.val), args.batch_size)),
                mean,
                std,
                warm_cfg,
            )
            baseline_train(
                fresh_model(args.arch, dataset.num_classes, args.seed),
                loader,
                device,
                1,
                lr,
                config.weight_decay,
                max_batches=args.warmup_batches,
            )

        # Repeats alternate the order (baseline first, then ours first, ...) so a busy machine hits both alike;
        # every run starts from a freshly seeded model. The best (highest) rate of each side counts.
        base_runs: list[tuple[int, float]] = []
        ours_runs: list[tuple[int, float]] = []

        def run_baseline() -> None:
            base_runs.append(
                baseline_train(
                    fresh_model(args.arch, dataset.num_classes, args.seed),
                    loader,
                    device,
                    args.epochs,
                    lr,
                    config.weight_decay,
                )
            )

        def run_ours() -> None:
            result = train_model(
                fresh_model(args.arch, dataset.num_classes, args.seed), dataset.train, dataset.val, mean, std, config
            )
            # train_model reports the rate; it sees every image each epoch except a trailing batch of one (dropped)
            seen = len(result.history) * (
                n_train - (1 if n_train % args.batch_size == 1 and n_train > args.batch_size else 0)
            )
            ours_runs.append((seen, seen / max(result.images_per_second, 1e-12)))

        for r in range(args.repeats):
            for run in (run_baseline, run_ours) if r % 2 == 0 else (run_ours, run_baseline):
                run()

    base_rates = [seen / max(sec, 1e-9) for seen, sec in base_runs]
    ours_rates = [seen / max(sec, 1e-9) for seen, sec in ours_runs]
    b, o = (
        max(range(len(base_rates)), key=base_rates.__getitem__),
        max(range(len(ours_rates)), key=ours_rates.__getitem__),
    )
    base_rate, (base_seen, base_seconds) = base_rates[b], base_runs[b]
    ours_rate, (ours_seen, ours_seconds) = ours_rates[o], ours_runs[o]
    ratio = ours_rate / max(base_rate, 1e-12)
    target = TARGET_GPU if device.type == "cuda" else TARGET_CPU

    head = "images/s" if args.repeats == 1 else f"best of {args.repeats}"
    print(f"{'':<12}{head:>12}{'train s':>10}{'images':>8}")
    print(f"{'ours':<12}{ours_rate:>12.1f}{ours_seconds:>10.2f}{ours_seen:>8}")
    print(f"{'baseline':<12}{base_rate:>12.1f}{base_seconds:>10.2f}{base_seen:>8}")
    if args.repeats > 1:
        print(
            f"  all runs, images/s — ours: {', '.join(f'{x:.1f}' for x in ours_rates)}; "
            f"baseline: {', '.join(f'{x:.1f}' for x in base_rates)}"
        )
    print()
    verdict = "meets" if ratio >= target else "BELOW"
    where = "a GPU" if device.type == "cuda" else "the CPU (no slower)"
    print(f"ratio ours / baseline: {ratio:.2f}x — target >= {target:g}x on {where}: {verdict} target")

    if args.json:
        payload = {
            **environment.record("train", device, args),
            "train_images": n_train,
            "lr": lr,
            "weight_decay": config.weight_decay,
            "timing": "training only, validation excluded, summed over all epochs, after an untimed warm-up; "
            "best (highest) rate of the repeats",
            "repeats": args.repeats,
            "ours_images_per_second": ours_rate,
            "ours_images_per_second_all": ours_rates,
            "baseline_images_per_second_all": base_rates,
            "ours_seconds": ours_seconds,
            "ours_images": ours_seen,
            "baseline_images_per_second": base_rate,
            "baseline_seconds": base_seconds,
            "baseline_images": base_seen,
            "ratio": ratio,
            "target_ratio": target,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
