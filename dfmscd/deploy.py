"""Students ready to deploy: every format written, then verified against the PyTorch student on
held-out images, with the figures written into the file's own metadata where the format has room
(ONNX ``metadata_props``, safetensors ``__metadata__``, TorchScript extra files), and returned.

The one entry point for a run's files is ``export_student`` (the CLI through
``dfmscd.outputs.run_outputs``, the worker likewise); ``export_verified`` does one format.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dfmscd.atomic import atomic_path
from dfmscd.errors import ExportError
from dfmscd.formats import MODEL_FORMATS, NATIVE_FORMAT, file_name
from dfmscd.io.card import ModelCard
from dfmscd.io.onnx_files import VERIFICATION_KEY
from dfmscd.io.quantize import Int8Settings
from dfmscd.io.verify import Verification, verification_images, verify_file

TORCHSCRIPT_VERIFICATION_FILE = "dfmscd_verification.json"


@dataclass(frozen=True)
class ExportedFile:
    """One verified file of a student."""

    student: str
    format: str
    path: Path
    size_bytes: int
    sha256: str
    verification: Verification

    @property
    def flagged(self) -> bool:
        return self.verification.status == "flagged"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the file's name (not its path: the folder can be moved or served as is)."""
        return {"student": self.student, "format": self.format, "file": self.path.name, "size_bytes": self.size_bytes,
                "sha256": self.sha256, "verification": self.verification.to_dict()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(fmt: str, module: nn.Module, card: ModelCard, path: Path, calibration: Any, int8: Int8Settings | None) -> None:
    if fmt == NATIVE_FORMAT:
        from dfmscd.io.model_file import save_model

        save_model(module, card, path)
    elif fmt == "onnx-int8":
        from dfmscd.io.quantize import export_onnx_int8

        if calibration is None or len(calibration) == 0:
            raise ExportError(f"onnx-int8 export of {card.architecture!r} needs calibration images; the run left none")
        export_onnx_int8(module, card, path, calibration, int8)
    else:
        from dfmscd.io.export import export_as

        export_as(fmt, module, card, path)


def stamp_metadata(fmt: str, path: str | os.PathLike[str], entries: dict[str, str]) -> None:
    """Add ``entries`` to the metadata of a file dfmscd wrote (rewritten in place, atomically)."""
    path = Path(path)
    if fmt in ("onnx", "onnx-int8"):
        import onnx  # deferred on purpose: only ONNX files need it

        from dfmscd.io.onnx_files import onnx_metadata_of, set_onnx_metadata

        model = onnx.load(str(path))
        set_onnx_metadata(model, {**onnx_metadata_of(model), **entries})
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    elif fmt == NATIVE_FORMAT:
        from dfmscd.io import safetensors_file as st
        from dfmscd.io.checkpoint import load_safetensors

        state, metadata = load_safetensors(path)
        st.write_atomic(path, state, {**metadata, **entries})
    elif fmt == "torchscript":
        from dfmscd.io.export import TORCHSCRIPT_CARD_FILE

        files = {TORCHSCRIPT_CARD_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=files)  # our own export, just written
            files.update({f"{k}.json" if not k.endswith(".json") else k: v for k, v in entries.items()})
            with atomic_path(path) as tmp:
                torch.jit.save(model, str(tmp), _extra_files=files)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def export_verified(fmt: str, module: nn.Module, card: ModelCard, path: str | os.PathLike[str], *,
                    calibration: Any = None, holdout: Any = None, student: str | None = None,
                    int8: Int8Settings | None = None) -> ExportedFile:
    """Write ``module`` as ``fmt`` at ``path``, verify the written file on ``holdout`` (uint8
    N x C x H x W; the calibration images, then random pixels, when a run left none), stamp the
    figures into its metadata and return them. ``onnx-int8`` is calibrated on ``calibration``.

    Raises ``ExportError`` (naming the format and why) when the student cannot be written in that
    format or a float file fails verification; ``path`` is not written then. An INT8 file below
    its threshold is written and returned flagged."""
    if fmt not in MODEL_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(MODEL_FORMATS)}")
    path = Path(path)
    images, source = verification_images(holdout, calibration, card)
    with atomic_path(path) as tmp:
        _write(fmt, module, card, tmp, calibration, int8)
        verification = verify_file(fmt, tmp, module, card, images, source, refuse=True)
        stamp_metadata(fmt, tmp, {VERIFICATION_KEY: json.dumps(verification.to_dict(), sort_keys=True)})
    return ExportedFile(student or card.architecture, fmt, path, path.stat().st_size, _sha256(path), verification)


def export_student(name: str, module: nn.Module, card: ModelCard, folder: str | os.PathLike[str],
                   formats: Iterable[str] = (NATIVE_FORMAT,), *, calibration: Any = None, holdout: Any = None,
                   int8: Int8Settings | None = None) -> dict[str, ExportedFile]:
    """Every requested format of one student in ``folder`` (``<name><suffix>``, dfmscd.formats),
    each verified; the native safetensors file always comes first. By format."""
    folder = Path(folder)
    wanted = list(dict.fromkeys([NATIVE_FORMAT, *formats]))
    return {fmt: export_verified(fmt, module, card, folder / file_name(name, fmt), calibration=calibration,
                                 holdout=holdout, student=name, int8=int8) for fmt in wanted}


def read_verification(fmt: str, path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The verification figures stamped into a file dfmscd wrote (None when absent)."""
    path = Path(path)
    if fmt in ("onnx", "onnx-int8"):
        from dfmscd.io.onnx_files import json_entry, load_onnx_model, onnx_metadata_of

        return json_entry(onnx_metadata_of(load_onnx_model(path)), VERIFICATION_KEY)
    if fmt == NATIVE_FORMAT:
        from dfmscd.io.checkpoint import header_metadata

        text = header_metadata(path).get(VERIFICATION_KEY)
        return json.loads(text) if text else None
    if fmt == "torchscript":
        files = {TORCHSCRIPT_VERIFICATION_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)  # only for files dfmscd wrote
        return json.loads(files[TORCHSCRIPT_VERIFICATION_FILE]) if files[TORCHSCRIPT_VERIFICATION_FILE] else None
    raise ValueError(f"unknown format {fmt!r}")


__all__ = ["ExportedFile", "export_student", "export_verified", "read_verification", "stamp_metadata"]
