"""Request and response bodies (pydantic v2): the public JSON shapes of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# The job's public shape lives in core: the worker's webhooks carry it too.
from dfmscd.names import STUDENT_NAME_RULE
from dfmscd_service.core.job_view import ErrorDetail, JobOut, JobStatus, StudentOut

T = TypeVar("T")

__all__ = ["ErrorDetail", "JobOut", "JobStatus", "StudentOut"]  # re-exported for the routes
StudentStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorBody(BaseModel):
    error: ErrorDetail


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next: str | None = Field(None, description="pass as `after` to get the next page")


# --- teachers ---
class TeacherOut(BaseModel):
    id: str
    sha256: str
    size_bytes: int
    file_format: str
    filename: str | None
    card: dict[str, Any]
    created_at: datetime
    warnings: list[str] = Field(default_factory=list, description="advice found at upload, e.g. BatchNorm statistics "
                                "that disagree with the card's mean/std; never an error")


# --- jobs ---
class StudentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, description=f"defaults to the architecture; {STUDENT_NAME_RULE}")
    arch_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)


BUDGET_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string", "examples": ["300s", "5m", "2h", "40e", "40 epochs"]},
    {"type": "object", "additionalProperties": False,
     "properties": {"seconds": {"type": "number", "exclusiveMinimum": 0}, "epochs": {"type": "integer", "minimum": 1}}},
    {"type": "null"},
]}


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher_id: str = Field(min_length=1, max_length=64)
    students: list[StudentIn]
    preset: str = "balanced"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    # Any JSON here, parsed by the library's one grammar (dfmscd.config.parse_budget, as the CLI's
    # --budget) so that every mistake gets its message with the expected shape, not a union error.
    budget: Annotated[Any, WithJsonSchema(BUDGET_SCHEMA)] = Field(
        None, description="'300s', '5m', '2h', '40e', '40 epochs', or {\"seconds\": N} / {\"epochs\": N}; "
                          "a bare number is refused (seconds or epochs?); default: the preset's epochs")
    seed: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    evaluation_set_id: str | None = Field(None, max_length=64, description="an uploaded evaluation set: the teacher "
                                          "and every student are evaluated on it when the job ends (reporting only)")


class StudentFileOut(BaseModel):
    format: str
    status: Literal["verified", "flagged", "refused"] = Field(
        description="verified; flagged (an INT8 file below its agreement threshold: served, marked); refused (a "
                    "float file that failed verification: never served, `error` says why)")
    size_bytes: int | None
    sha256: str | None
    verification: dict[str, Any] | None = Field(description="top1_agreement, max_abs_logit_diff, min_agreement, "
                                                "images, images_source, ... (dfmscd.io.verify)")
    error: str | None
    download_url: str | None


class StudentDetail(StudentOut):
    job_id: str
    card: dict[str, Any] | None
    formats: list[str] = Field(description="the formats that can be downloaded now")
    files: list[StudentFileOut] = Field(default_factory=list, description="the files the worker exported and "
                                        "verified when the job succeeded (empty for jobs that ended before it did)")


class StudentReportOut(BaseModel):
    job_id: str
    student: str
    report: dict[str, Any] | None = Field(description="dfmscd.student_report: parameters, macs, flops, formats "
                                          "(size, sha256, verification, teacher_agreement, latency_ms at batch 1 and "
                                          "64), teacher_agreement, cpu (model, isa), thresholds; null for a job that "
                                          "ended before reports were made")
    files: list[StudentFileOut]
    evaluations: list[dict[str, Any]] = Field(default_factory=list, description="this student's accuracy on each "
                                              "evaluation set the job was evaluated on (newest first): "
                                              "evaluation_id, evaluation_set_id, data, teacher_accuracy, accuracy "
                                              "{pytorch, <format>...}")


# --- evaluation sets and evaluations ---
class EvaluationSetOut(BaseModel):
    id: str
    sha256: str
    size_bytes: int
    file_format: str = Field(description="npz, tar, tar.gz or zip")
    filename: str | None
    summary: dict[str, Any] = Field(description="images, and x_shape (npz) or image_size, channels and classes "
                                    "(archives), labels {min, max}")
    created_at: datetime


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evaluation_set_id: str = Field(min_length=1, max_length=64)


class EvaluationOut(BaseModel):
    id: str
    job_id: str
    evaluation_set_id: str
    source: Literal["job_end", "request"]
    status: Literal["queued", "running", "succeeded", "failed"]
    results: dict[str, Any] | None = Field(description="data {file, n}, teacher {architecture, accuracy} | null, "
                                           "students {name: {architecture, accuracy {pytorch, <format>...}}}")
    error: ErrorDetail | None
    created_at: datetime
    finished_at: datetime | None


class EvaluationList(BaseModel):
    data: list[EvaluationOut]


class EventOut(BaseModel):
    id: int = Field(description="sequence number within the job (SSE `id:`)")
    kind: str
    epoch: int
    progress: float
    data: dict[str, Any]
    created_at: datetime


# --- architectures / health ---
class ArchitectureOut(BaseModel):
    name: str
    parameters: int | None = Field(description="for a 10-class 3x32x32 model; null if it cannot be built at that size")
    source: Literal["dfmscd", "torchvision", "timm"]


class ArchitectureList(BaseModel):
    data: list[ArchitectureOut]
    complete: bool = Field(description="false while parameter counts of the listed entries are still being computed")
    has_more: bool = Field(False, description="true when `limit` cut the list; pass `next` as `cursor` for more")
    next: str | None = Field(None, description="cursor of the next page (the last name of this one)")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
    error: ErrorDetail | None = None
