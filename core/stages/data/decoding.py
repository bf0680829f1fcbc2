"""Reading and resizing images: file headers, decoding files into split tensors, and resizing in-memory arrays.

Every image ends as uint8 (3, S, S). Files are decoded by a thread pool straight into their split's tensor
(PIL releases the GIL while decoding and resizing); in-memory arrays are resized with torch in chunks.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from layercut.contracts.errors import DataError
from layercut.stages.data.types import SPLITS, STAGE
from layercut.stages.progress import Reporter

GRAYSCALE_MODES: frozenset[str] = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
WIDE_GRAYSCALE_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

Header = tuple[str, tuple[int, int]]  # (PIL mode, (width, height))


def unreadable_message(path: Path, reason: str) -> str:
    """The error for a file PIL cannot read, with the two ways out."""
    return (
        f"cannot read image {path}: {reason}. Replace or delete the file, or pass skip_unreadable=True "
        "(--skip-unreadable) to leave unreadable files out"
    )


def read_headers(paths: list[Path], skip_unreadable: bool) -> tuple[dict[Path, Header], dict[Path, str]]:
    """Mode and size of every file from its header (no decoding); unreadable files raise or are collected."""
    headers: dict[Path, Header] = {}
    skipped: dict[Path, str] = {}

    def read(path: Path) -> Header | str:
        try:
            with Image.open(path) as img:
                return img.mode, (int(img.size[0]), int(img.size[1]))
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError …
            return f"{type(exc).__name__}: {exc}"

    chunk = 128  # ThreadPoolExecutor.map ignores chunksize, so submit chunks by hand
    with ThreadPoolExecutor(max_workers=_worker_count()) as pool:
        chunks = pool.map(lambda start: [read(p) for p in paths[start : start + chunk]], range(0, len(paths), chunk))
        results = [result for part in chunks for result in part]
    for path, result in zip(paths, results):
        if isinstance(result, str):
            if not skip_unreadable:
                raise DataError(unreadable_message(path, result))
            skipped[path] = result
        else:
            headers[path] = result
    return headers, skipped


def _worker_count() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_splits(
    paths: list[Path], parts: dict[str, np.ndarray], image_size: int, mode: str, reporter: Reporter
) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """Decode every file into its split's (n, 3, S, S) uint8 tensor with a thread pool; failures come back by index.

    PIL releases the GIL while decoding and resizing, so threads scale; writing in place avoids any copy.
    """
    tensors = {s: torch.empty((len(parts[s]), 3, image_size, image_size), dtype=torch.uint8) for s in SPLITS}
    jobs = [(int(i), tensors[s].numpy(), row) for s in SPLITS for row, i in enumerate(parts[s].tolist())]
    chunk = 32
    starts = list(range(0, len(jobs), chunk))

    def work(start: int) -> dict[int, str]:
        errors: dict[int, str] = {}
        for index, target, row in jobs[start : start + chunk]:
            try:
                pixels = _decode_one(paths[index], image_size, mode)
                target[row] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            except Exception as exc:
                errors[index] = f"{type(exc).__name__}: {exc}"
        return errors

    failed: dict[int, str] = {}
    pool = ThreadPoolExecutor(max_workers=_worker_count())
    try:
        pending: set[Future] = {pool.submit(work, start) for start in starts}
        finished = 0
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                failed.update(future.result())
                finished += 1
            decoded = min(len(jobs), finished * chunk)
            reporter.update(STAGE, finished / max(1, len(starts)), f"decoding {decoded}/{len(jobs)} images")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return tensors, dict(sorted(failed.items()))


def _decode_one(path: Path, size: int, mode: str) -> np.ndarray:
    """Decode one file, convert it to ``mode`` (L or RGB) and resize it to ``size`` x ``size`` with antialiasing."""
    with Image.open(path) as img:
        if img.format == "JPEG" and min(img.size) >= 2 * size:
            img.draft(None, (size, size))  # let libjpeg scale down by a power of two while decoding
        if img.mode in WIDE_GRAYSCALE_MODES:
            return _decode_wide_gray(img, size, mode)
        img.load()
        if mode == "L":
            converted = img.convert("L")
        elif img.mode == "P" and "transparency" in img.info:
            converted = img.convert("RGBA").convert("RGB")
        elif img.mode == "LA":
            converted = img.convert("L").convert("RGB")
        else:
            converted = img.convert("RGB")
        if converted.size != (size, size):
            converted = converted.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(converted, dtype=np.uint8)


def _decode_wide_gray(img: Image.Image, size: int, mode: str) -> np.ndarray:
    """16-bit and 32-bit grayscale: scale 0..65535 to 0..255 (float images are clipped to 0..255), then resize.

    PIL's own conversion to L clips 16-bit values instead of scaling them, which would turn most images white.
    """
    array = np.asarray(img).astype(np.float32)
    if img.mode != "F":
        array = array / 257.0
    resized = Image.fromarray(np.clip(array, 0.0, 255.0).astype(np.float32))  # a float32 array opens as mode F
    if resized.size != (size, size):
        resized = resized.resize((size, size), Image.Resampling.BILINEAR)
    gray = np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2) if mode == "RGB" else gray


def resize_batch(array: np.ndarray, image_size: int, reporter: Reporter | None = None) -> torch.Tensor:
    """(N, C, h, w) uint8 or float (0..255) → (N, 3, S, S) uint8: bilinear, antialiased when shrinking, in chunks."""
    n, channels, height, width = array.shape
    out = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    chunk = 2048
    for start in range(0, n, chunk):
        block = torch.from_numpy(np.ascontiguousarray(array[start : start + chunk]))
        if block.dtype == torch.uint8 and (height, width) == (image_size, image_size):
            out[start : start + chunk] = block.expand(-1, 3, -1, -1) if channels == 1 else block
            continue
        block = block.to(torch.float32)
        if (height, width) != (image_size, image_size):
            shrinking = height > image_size or width > image_size
            block = F.interpolate(
                block, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrinking
            )
        block = block.round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + chunk] = block.expand(-1, 3, -1, -1) if channels == 1 else block
        if reporter is not None:
            done = min(n, start + chunk)
            reporter.update(STAGE, done / max(1, n), f"resizing {done}/{n} images")
    return out
