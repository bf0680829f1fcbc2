"""Check an uploaded weights file without torch: a safetensors header read and verified, or a ``torch.save`` file
known by its first bytes.

Format: 8-byte little-endian header length N, N bytes of JSON header ({name: {dtype, shape, data_offsets},
"__metadata__": {str: str}}), then the tensor bytes. Offsets are relative to the start of the data and
must tile it exactly (no gaps, no overlap), each tensor's span matching its dtype and shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MAX_HEADER = 100 * 1024 * 1024


class BadSafetensors(ValueError):
    pass


def read_header(path: Path) -> tuple[dict, int, int]:
    """(header, header length, data length) of a safetensors file, checked for consistency."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise BadSafetensors("the file is too short to be safetensors")
        n = int.from_bytes(head, "little")
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise BadSafetensors(f"the header length {n} is impossible for a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadSafetensors("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise BadSafetensors("the header is not a JSON object")
    data_len = size - 8 - n
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise BadSafetensors("__metadata__ must map strings to strings")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
            raise BadSafetensors(f"tensor {name!r}: bad entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise BadSafetensors(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise BadSafetensors(f"tensor {name!r}: bad shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise BadSafetensors(f"tensor {name!r}: bad data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise BadSafetensors(f"tensor {name!r}: data_offsets {offsets} outside the {data_len} data bytes")
        if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise BadSafetensors(f"tensor {name!r}: {end - begin} bytes do not hold a {dtype} tensor of shape {shape}")
        spans.append((begin, end, name))
    if not spans:
        raise BadSafetensors("the file holds no tensors")
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise BadSafetensors(
                f"tensor {name!r}: the tensors do not tile the data (gap or overlap at byte {position})"
            )
        position = end
    if position != data_len:
        raise BadSafetensors(f"{data_len - position} bytes after the last tensor")
    return header, n, data_len


TORCH_ZIP_MAGIC = b"PK\x03\x04"
"""How a file ``torch.save`` wrote (its zip format, the default since PyTorch 1.6) begins."""
PICKLE_PROTOCOL_2 = b"\x80\x02"
"""How a file ``torch.save`` wrote in its legacy format (``_use_new_zipfile_serialization=False``) begins."""


def weights_format(path: Path) -> str:
    """``safetensors`` (its header checked) or ``torch`` (a ``torch.save`` file, by its first bytes); a
    ``BadSafetensors`` saying what the file is not otherwise. The tensors themselves are checked by the import job."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(TORCH_ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL_2):
        return "torch"
    try:
        read_header(path)
    except BadSafetensors as exc:
        raise BadSafetensors(
            f"it is neither a safetensors file ({exc}) nor a file torch.save wrote; upload model.state_dict() saved "
            "with torch.save (.pt/.pth) or with safetensors"
        ) from None
    return "safetensors"
