"""What a succeeded job leaves to deploy, made by the worker after the run's budget: every student
in every format (``dfmscd.formats.MODEL_FORMATS``), each verified on the run's held-out images
(``dfmscd.deploy.export_verified``), the student report (``dfmscd.outputs.run_student_report``:
sizes, FLOPs, CPU latency of each file measured here, teacher agreement), the INT8 calibration
sample, and, when the job named an evaluation set, the accuracy of the teacher and every file on it.

Files are written into the job's scratch folder, measured and evaluated there, then stored with
their sha256 (local disk or the bucket alike). A float file that fails verification is refused:
nothing is stored for that format and its error is recorded (the job still succeeds with the
other formats, and says so in its warnings); the native safetensors file is the student itself,
so its refusal fails the job. An INT8 file below its threshold is stored, flagged.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfmscd.deploy import ExportedFile, export_verified
from dfmscd.errors import DfmscdError, ExportError
from dfmscd.formats import MODEL_FORMATS, NATIVE_FORMAT, file_name
from dfmscd.io import ModelCard
from dfmscd.outputs import run_student_report
from dfmscd.student_report import LatencySettings
from dfmscd_service.core.storage_base import Storage, StoredObject, calibration_key, student_file_key
from dfmscd_service.worker.evaluator import EvaluationFailure, StudentFiles, evaluate_on_set

log = logging.getLogger("dfmscd.worker")


@dataclass
class Deliverables:
    """What ``deliver`` stored and measured, ready for the job's final transaction."""

    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # student -> StudentFile values
    weights: dict[str, StoredObject] = field(default_factory=dict)  # student -> its safetensors file
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # student -> its student report
    report_context: dict[str, Any] = field(default_factory=dict)  # cpu, thresholds
    calibration: StoredObject | None = None
    calibration_images: int = 0
    evaluation: dict[str, Any] | None = None  # {"status", "results" | "error_code", "error_message"}
    warnings: list[str] = field(default_factory=list)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)  # student -> format -> why
    export_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The job report's ``exports`` entry."""
        return {"formats": list(MODEL_FORMATS), "calibration_images": self.calibration_images,
                "refused": {n: r for n, r in self.refused.items() if r},
                "flagged": {n: [f["format"] for f in rows if f["status"] == "flagged"]
                            for n, rows in self.files.items() if any(f["status"] == "flagged" for f in rows)},
                "cpu": self.report_context.get("cpu", {}).get("model")}


def _refused_warning(name: str, fmt: str, message: str) -> str:
    return f"student {name!r}: no {fmt} file (it could not be exported or failed verification; never served): {message}"


def _flagged_warning(name: str, exported: ExportedFile) -> str:
    return f"student {name!r}: {exported.verification.message}"


def _save_calibration(calibration: Any, path: Path) -> int:
    """The sample as ``x`` (uint8 N x C x H x W) in an .npz; returns the image count."""
    x = np.ascontiguousarray(calibration.cpu().numpy() if hasattr(calibration, "cpu") else np.asarray(calibration),
                             dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, x=x)
    return int(x.shape[0])


def deliver(result: Any, card: ModelCard, teacher: Any, storage: Storage, job_id: str, token: str, scratch: Path,
            latency_repeats: int, written: list[str], evaluation_set: tuple[Path, str] | None = None) -> Deliverables:
    """Export, verify, report, evaluate and store (see the module doc). ``written`` gets every stored
    key as it is stored (the caller removes them if the job cannot finish); ``evaluation_set``: (a
    local copy of the set, its display name). ``ExportError`` only when a safetensors file is refused."""
    started = time.monotonic()
    out = Deliverables()
    folder = scratch / "deliverables"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        exported: dict[str, dict[str, ExportedFile]] = {}
        refused = out.refused
        calibration, holdout = getattr(result, "calibration", None), getattr(result, "holdout", None)
        for name, module in result.students.items():
            exported[name], refused[name] = {}, {}
            for fmt in MODEL_FORMATS:  # safetensors first
                try:
                    exported[name][fmt] = export_verified(fmt, module, result.cards[name], folder / file_name(name, fmt),
                                                          calibration=calibration, holdout=holdout, student=name)
                except ExportError as exc:
                    if fmt == NATIVE_FORMAT:
                        raise
                    refused[name][fmt] = str(exc).splitlines()[0]
                    out.warnings.append(_refused_warning(name, fmt, refused[name][fmt]))
                    log.warning("job %s: %s", job_id, out.warnings[-1])
        latency = LatencySettings(repeats=latency_repeats) if latency_repeats > 0 else None
        report = run_student_report(result, exported, teacher=teacher, latency=latency)
        out.reports = report["students"]
        out.report_context = {k: v for k, v in report.items() if k != "students"}
        if evaluation_set is not None:
            out.evaluation = _evaluate(evaluation_set, card, teacher, result, exported)
        if calibration is not None and len(calibration) > 0:
            path = folder / "calibration.npz"
            out.calibration_images = _save_calibration(calibration, path)
            out.calibration = storage.put_file(calibration_key(job_id, token), path)
            written.append(out.calibration.key)
        for name, files in exported.items():
            rows: list[dict[str, Any]] = []
            for fmt, f in files.items():
                stored = storage.put_file(student_file_key(job_id, name, fmt, token), f.path)
                written.append(stored.key)
                if stored.sha256 != f.sha256:  # the file changed between its verification and its upload
                    raise ExportError(f"{fmt} file of student {name!r} changed before it was stored")
                if fmt == NATIVE_FORMAT:
                    out.weights[name] = stored
                if f.flagged:
                    out.warnings.append(_flagged_warning(name, f))
                rows.append({"format": fmt, "status": f.verification.status, "storage_key": stored.key,
                             "sha256": stored.sha256, "size_bytes": stored.size_bytes,
                             "verification": f.verification.to_dict(), "error": None})
            rows += [{"format": fmt, "status": "refused", "storage_key": None, "sha256": None, "size_bytes": None,
                      "verification": None, "error": message} for fmt, message in refused[name].items()]
            out.files[name] = rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.export_s = round(time.monotonic() - started, 3)
    return out


def _evaluate(evaluation_set: tuple[Path, str], card: ModelCard, teacher: Any, result: Any,
              exported: dict[str, dict[str, ExportedFile]]) -> dict[str, Any]:
    """The job-end evaluation; a set that does not fit never fails the job (the evaluation fails)."""
    path, display = evaluation_set
    students = {name: StudentFiles(result.cards[name].architecture, module,
                                   {fmt: f.path for fmt, f in exported[name].items()})
                for name, module in result.students.items()}
    try:
        return {"status": "succeeded", "results": evaluate_on_set(path, display, card, teacher, students)}
    except EvaluationFailure as exc:
        return {"status": "failed", "error_code": exc.code, "error_message": exc.message}
    except DfmscdError as exc:
        return {"status": "failed", "error_code": "invalid_evaluation_set", "error_message": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001 - reporting only: whatever goes wrong here fails the evaluation, not the job
        log.exception("job-end evaluation on %s failed", display)
        return {"status": "failed", "error_code": "internal_error",
                "error_message": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}
