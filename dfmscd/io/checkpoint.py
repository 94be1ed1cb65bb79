"""Reading a user's weights file as *data*, never as code.

Accepted: safetensors, and PyTorch's zip checkpoint (``torch.save``) read with
``torch.load(weights_only=True)`` after a static allowlist scan of its pickle
(``dfmscd.io.pickle_scan``), so that a pickle naming anything beyond tensors and plain
containers is refused before it can run. The format is decided by the file's content, not its
name. Refused with a one-line ``CheckpointError``: empty or oversized files, TorchScript
archives and ``.pt2`` (torch.export) archives (both carry code), legacy non-zip ``torch.save``
files and bare pickles, zip bombs, lying safetensors headers, non-float weights, NaN/Inf.

Normalisation (documented contract): a dict whose tensors sit under ``"state_dict"``,
``"model_state_dict"`` or ``"model"`` is unwrapped one level, and a ``"module."`` prefix carried
by every key (``nn.DataParallel``) is removed.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from dfmscd.errors import CheckpointError
from dfmscd.io import safetensors_file as st
from dfmscd.io.pickle_scan import disallowed_global

MAX_CHECKPOINT_BYTES = 2 * 1024**3
ZIP_EXPANSION_LIMIT = 4  # total declared uncompressed size <= 4 x file size (and <= 4 x the cap)
MAX_ZIP_ENTRIES = 200_000
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_TORCHSCRIPT_MARKERS = ("constants.pkl", "code/")
_PT2_MARKERS = ("archive_format", "serialized_exported_program.json", "models/")
_REFUSED_PICKLE = "refused: its pickle references {what}, which a weights-only load does not allow (checkpoints must be data, not code)"
_PT2_REFUSAL = "{label}: .pt2 (torch.export) archives contain code and are not accepted; save a state_dict as safetensors"


def load_state_dict(path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, torch.Tensor]:
    """Read a teacher's weights (safetensors or weights-only ``.pt/.pth``) into CPU tensors."""
    path = Path(path)
    label = path.name
    size = _regular_file_size(path, label, max_bytes)
    if path.suffix.lower() == ".pt2":
        raise CheckpointError(_PT2_REFUSAL.format(label=label))
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        raw = _load_torch_zip(path, size, max_bytes, label)
    elif st.looks_like_safetensors(head):
        raw = st.read_tensors(path, st.read_header(path, size, label))
    elif head[:1] == b"\x80" or path.suffix.lower() in (".pt", ".pth", ".pkl", ".bin"):
        raise CheckpointError(
            f"{label}: not a zip-format PyTorch checkpoint (bare pickles and legacy torch.save files are refused); "
            "re-save with torch.save(model.state_dict(), path) or as safetensors"
        )
    else:
        raise CheckpointError(f"{label}: unrecognised weights format (expected safetensors or a torch.save .pt/.pth state_dict)")
    return _check_tensors(_normalise(raw, label), label)


def _regular_file_size(path: Path, label: str, max_bytes: int) -> int:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{label}: weights file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{label}: cannot read weights file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{label}: not a regular file")
    if info.st_size == 0:
        raise CheckpointError(f"{label}: weights file is empty")
    if info.st_size > max_bytes:
        raise CheckpointError(f"{label}: weights file is {info.st_size} bytes, over the {max_bytes}-byte limit")
    return info.st_size


def _load_torch_zip(path: Path, size: int, max_bytes: int, label: str) -> object:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{label}: corrupt zip archive ({exc})") from None
    names = [i.filename for i in infos]
    if any(_has_marker(n, m) for n in names for m in _PT2_MARKERS):
        raise CheckpointError(_PT2_REFUSAL.format(label=label))
    if any(_has_marker(n, m) for n in names for m in _TORCHSCRIPT_MARKERS):
        raise CheckpointError(
            f"{label}: TorchScript archives contain code and are not accepted; save model.state_dict() with torch.save or safetensors"
        )
    if len(infos) > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"{label}: zip archive has {len(infos)} entries (limit {MAX_ZIP_ENTRIES})")
    pickles = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{label}: zip archive is not a torch.save checkpoint (no single data.pkl)")
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{label}: zip entry {info.filename!r} uses an unsupported compression method")
    declared = sum(i.file_size for i in infos)
    limit = min(ZIP_EXPANSION_LIMIT * size, ZIP_EXPANSION_LIMIT * max_bytes)
    if declared > limit:
        raise CheckpointError(
            f"{label}: zip archive would expand to {declared} bytes from {size} (limit {limit}); refusing a possible zip bomb"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            pickle_bytes = zf.read(pickles[0])
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{label}: corrupt zip archive ({exc})") from None
    bad = disallowed_global(pickle_bytes)
    if bad is not None:
        raise CheckpointError(f"{label}: {_REFUSED_PICKLE.format(what=repr(bad))}")
    try:
        # A file object, not the path: torch.load dispatches on some file names (".safetensors").
        with open(path, "rb") as f:
            return torch.load(f, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure of a user file is a CheckpointError
        raise CheckpointError(f"{label}: {_describe_load_error(exc)}") from None


def _has_marker(name: str, marker: str) -> bool:
    """Is ``marker`` present relative to the archive's top folder (named after the file by torch)?"""
    rel = name.split("/", 1)[1] if "/" in name else name
    return rel == marker or (marker.endswith("/") and rel.startswith(marker))


def _describe_load_error(exc: Exception) -> str:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global ['\"]?([\w.]+)", text)
    if "Weights only load failed" in text or "weights_only" in text:
        return _REFUSED_PICKLE.format(what=repr(found.group(1)) if found else "something")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"unreadable PyTorch checkpoint ({first[:200]})"


def _normalise(obj: object, label: str) -> dict[str, object]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label}: checkpoint holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not obj:
        raise CheckpointError(f"{label}: checkpoint holds no tensors")
    for key in obj:
        if not isinstance(key, str):
            raise CheckpointError(f"{label}: state_dict key {key!r} is not a string")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _check_tensors(state: dict[str, object], label: str) -> dict[str, torch.Tensor]:
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{label}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point():
            if value.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                raise CheckpointError(f"{label}: tensor {key!r} has unsupported dtype {value.dtype}")
            if value.numel() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{label}: tensor {key!r} contains NaN or Inf values")
        elif not (value.dtype == torch.int64 and key.endswith("num_batches_tracked")):
            raise CheckpointError(
                f"{label}: tensor {key!r} has dtype {value.dtype}; weights must be floating point "
                "(int64 only for BatchNorm num_batches_tracked)"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise CheckpointError(f"{label}: tensor {key!r} is sparse or quantized; only dense float tensors are accepted")
    return state  # type: ignore[return-value]


def load_safetensors(path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (checked like any user file) and its ``__metadata__``."""
    path = Path(path)
    header = _safetensors_header(path, max_bytes)
    state = _check_tensors(_normalise(st.read_tensors(path, header), path.name), path.name)
    return state, header.metadata


def header_metadata(path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (header validated, tensors not read)."""
    return _safetensors_header(Path(path), max_bytes).metadata


def _safetensors_header(path: Path, max_bytes: int) -> st.SafetensorsHeader:
    size = _regular_file_size(path, path.name, max_bytes)
    with open(path, "rb") as f:
        head = f.read(16)
    if not st.looks_like_safetensors(head):
        raise CheckpointError(f"{path.name}: not a safetensors file")
    return st.read_header(path, size, path.name)
