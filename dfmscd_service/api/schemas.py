"""Request and response bodies (pydantic v2): the public JSON shapes of the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# The job's public shape lives in core: the worker's webhooks carry it too.
from dfmscd_service.core.job_view import ErrorDetail, JobOut, JobStatus, StudentOut

T = TypeVar("T")

__all__ = ["ErrorDetail", "JobOut", "JobStatus", "StudentOut"]  # re-exported for the routes
StudentStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"


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


# --- jobs ---
class StudentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, description="defaults to the architecture; [A-Za-z0-9_.-]{1,64}, not starting with '.'")
    arch_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int | None = None
    seconds: float | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher_id: str = Field(min_length=1, max_length=64)
    students: list[StudentIn]
    preset: str = "balanced"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetIn | None = None
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
