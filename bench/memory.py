"""How close the API's memory estimate (``layercut.contracts.memory``) is to what training really takes: each case
trains one epoch on the built-in textures set in a fresh process and prints its peak resident memory beside the
estimate the API refuses jobs with.

    python bench/memory.py                                  # the three calibration cases
    python bench/memory.py --case resnet50:224:8:adam       # arch:image size:batch:optimizer, repeatable
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CASES = ("resnet18:64:64:adam", "vgg11:64:32:adam", "resnet50:128:16:sgd")


def measure(case: str) -> dict:
    """Train one epoch for ``case`` in this process; its peak RSS and the estimate (bytes)."""
    import torch

    from layercut.contracts.memory import training_memory
    from layercut.local import load_data, train

    arch, size, batch, optimizer = case.split(":")
    torch.set_num_threads(1)
    data = load_data("textures", image_size=int(size))
    train(data, arch, f"/tmp/bench-memory-{arch}", epochs=1, batch_size=int(batch), optimizer=optimizer,
          progress=False, device="cpu")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = training_memory(arch, int(size), int(batch), optimizer)
    return {"case": case, "peak": peak, "estimate": estimate.total if estimate else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", help="arch:image size:batch:optimizer (default: the three)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's case
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    print(f"{'case':<24} {'peak GiB':>9} {'estimate GiB':>13} {'estimate / peak':>16}")
    for case in args.case or CASES:
        child = subprocess.run([sys.executable, __file__, "--one", case], capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        peak, estimate = row["peak"] / 2**30, (row["estimate"] or 0) / 2**30
        print(f"{case:<24} {peak:9.2f} {estimate:13.2f} {estimate / peak:16.2f}")


if __name__ == "__main__":
    main()
