"""What object storage costs a job: publishing its outputs and fetching its inputs through ``layercut.artifacts``
against an S3-compatible server, beside the same bytes copied on a volume (the baseline, measured in the same run).

    python bench/artifacts.py                         # moto's server on loopback, started here
    python bench/artifacts.py --endpoint http://minio:9000 --bucket layercut-bench --access-key … --secret-key …

Two shapes: one large checkpoint (``--checkpoint-mib``) and a dataset of many small images (``--files`` ×
``--file-kib``). For each: publish, a cold fetch on an empty cache, and a warm fetch (the cached copy checked
against its recorded size and SHA-256). Peak memory is the process's resident peak while the step ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from analyze import PeakMemory  # the sampler of bench/analyze.py

from layercut.artifacts import artifact_store, file_sha256
from layercut.settings import Settings


def timed(action) -> tuple[float, int]:
    """Seconds and peak added resident bytes of ``action()``."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
    return seconds, memory.added


def make_files(root: Path, checkpoint_mib: int, files: int, file_kib: int) -> tuple[Path, Path]:
    job = root / "bench" / "job-1"
    job.mkdir(parents=True)
    with (job / "model.safetensors").open("wb") as handle:
        for _ in range(checkpoint_mib):
            handle.write(os.urandom(1 << 20))
    dataset = root / "bench" / "datasets" / "d1"
    for i in range(files):
        folder = dataset / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(os.urandom(file_kib << 10))
    return job, dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="an S3-compatible endpoint (default: moto's server, started here)")
    parser.add_argument("--bucket", default=None)
    parser.add_argument("--access-key", default="bench")
    parser.add_argument("--secret-key", default="bench-secret")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--checkpoint-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--file-kib", type=int, default=8)
    args = parser.parse_args()

    server = None
    if args.endpoint is None:
        from layercut.testing.object_store import ObjectStoreServer

        server = ObjectStoreServer.start(Path(tempfile.mkdtemp()) / "s3.log")
        args.endpoint, args.access_key, args.secret_key = server.endpoint, "layercut-test", "layercut-test-secret"
        args.bucket = server.new_bucket()
    elif args.bucket is None:
        sys.exit("--bucket is needed with --endpoint")
    s3 = {
        "artifact_url": f"s3://{args.bucket}/bench-{int(time.time())}",
        "s3_endpoint_url": args.endpoint,
        "s3_region": args.region,
        "s3_access_key_id": args.access_key,
        "s3_secret_access_key": args.secret_key,
    }
    print(f"object store: {'moto server on loopback' if server else args.endpoint}; python {sys.version.split()[0]}")
    print(f"shapes: a {args.checkpoint_mib} MiB checkpoint; {args.files} files of {args.file_kib} KiB")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            here, there, volume_copy = Path(tmp) / "worker", Path(tmp) / "api", Path(tmp) / "volume-copy"
            job, dataset = make_files(here, args.checkpoint_mib, args.files, args.file_kib)
            worker = artifact_store(Settings(artifact_root=here, **s3))
            other = artifact_store(Settings(artifact_root=there, **s3))
            key = worker.key(job / "model.safetensors")
            size, sha = (job / "model.safetensors").stat().st_size, file_sha256(job / "model.safetensors")
            tree = worker.key(dataset)
            rows = [
                ("checkpoint", "volume copy", lambda: shutil.copytree(job, volume_copy / "job")),
                ("checkpoint", "publish", lambda: worker.publish(job)),
                ("checkpoint", "fetch, cold", lambda: other.local(key, size=size, sha256=sha)),
                ("checkpoint", "fetch, warm", lambda: other.local(key, size=size, sha256=sha)),
                ("dataset", "volume copy", lambda: shutil.copytree(dataset, volume_copy / "dataset")),
                ("dataset", "publish", lambda: worker.publish(dataset)),
                ("dataset", "fetch, cold", lambda: other.local_tree(tree)),
                ("dataset", "fetch, warm", lambda: other.local_tree(tree)),
            ]
            baseline: dict[str, float] = {}
            print(f"{'shape':<11} {'step':<12} {'seconds':>8} {'MiB/s':>8} {'× volume':>9} {'peak +MiB':>10}")
            for shape, step, action in rows:
                seconds, added = timed(action)
                mib = args.checkpoint_mib if shape == "checkpoint" else args.files * args.file_kib / 1024
                baseline.setdefault(shape, seconds)
                ratio = seconds / baseline[shape]
                print(f"{shape:<11} {step:<12} {seconds:8.2f} {mib / seconds:8.1f} {ratio:9.1f} {added / 2**20:10.1f}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
