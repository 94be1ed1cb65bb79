"""Reading and writing safetensors files, with the header checked by us first.

The safetensors library is robust, but its errors are terse and it trusts the header's length
field enough to allocate it; we parse the header ourselves so that every lie (huge header,
offsets past the end, gaps, overlaps, trailing bytes, a truncated file) gets a one-line
``CheckpointError`` that says what is wrong, before the library sees the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from dfmscd.errors import CheckpointError
from dfmscd.atomic import write_bytes_atomic

MAX_HEADER_BYTES = 100 * 1024 * 1024
# safetensors dtype -> bytes per element; the floating ones are the weights we accept.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    entries: list[TensorEntry]
    metadata: dict[str, str]
    data_start: int  # offset of the byte buffer in the file


def looks_like_safetensors(head: bytes) -> bool:
    """8-byte little-endian header length followed by a JSON object."""
    return len(head) >= 9 and head[8:9] == b"{"


def read_header(path: Path, file_size: int, label: str) -> SafetensorsHeader:
    """Parse and validate the header of ``path`` (of ``file_size`` bytes); see module doc."""
    if file_size < 8:
        raise CheckpointError(f"{label}: truncated safetensors file ({file_size} bytes, no header)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{label}: safetensors header claims {n} bytes (limit {MAX_HEADER_BYTES}); refusing")
        if 8 + n > file_size:
            raise CheckpointError(f"{label}: truncated safetensors file (header of {n} bytes, file has {file_size})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{label}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{label}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{label}: safetensors __metadata__ must map strings to strings")
    entries = [_entry(name, info, label) for name, info in header.items()]
    buffer_size = file_size - 8 - n
    position = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin != position:
            what = "overlaps the previous tensor" if e.begin < position else "leaves a gap"
            raise CheckpointError(f"{label}: tensor {e.name!r} {what} (offset {e.begin}, expected {position})")
        position = e.end
    if position > buffer_size:
        raise CheckpointError(f"{label}: truncated safetensors file (tensors need {position} bytes of data, file has {buffer_size})")
    if position < buffer_size:
        raise CheckpointError(f"{label}: safetensors file has {buffer_size - position} unexpected trailing bytes")
    return SafetensorsHeader(entries=entries, metadata=dict(metadata), data_start=8 + n)


def _entry(name: str, info: object, label: str) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{label}: malformed header entry for tensor {name!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{label}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{label}: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise CheckpointError(f"{label}: tensor {name!r} has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{label}: tensor {name!r} of shape {shape} {dtype} needs {nbytes} bytes but its offsets span {offsets[1] - offsets[0]}"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_tensors(path: Path, header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """Hand the (already validated) file to the safetensors library."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {e.name: f.get_tensor(e.name).clone() for e in header.entries}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name}: unreadable safetensors file: {str(exc).splitlines()[0]}") from None


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialise in memory, then write via a temporary file and rename."""
    from safetensors.torch import save

    write_bytes_atomic(path, save(tensors, metadata=metadata))
