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


class StudentDetail(StudentOut):
    job_id: str
    card: dict[str, Any] | None
    formats: list[str]


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
