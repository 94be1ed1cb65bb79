"""Exceptions of the HTTP client: one class per error ``code`` the service answers.

The service answers every failure with ``{"error": {"code": "...", "message": "..."}}``; the
client raises the class registered for ``code`` (all subclasses of :class:`DfmscdAPIError`, with
``.status_code``, ``.code``, ``.message``). A code this client does not know yet falls back to
the class of the status's default code (404 -> :class:`NotFoundError`, ...), else to the base.

Failures that are not an answer of the service (network errors after the retries, a download
whose sha256 is not the one announced, ``wait`` running out of time) are
:class:`DfmscdClientError` subclasses too, but not :class:`DfmscdAPIError`.
"""

from __future__ import annotations

from typing import Any


class DfmscdClientError(Exception):
    """Base of everything the client raises on purpose."""


class DfmscdAPIError(DfmscdClientError):
    """The service answered with an error body."""

    code = "error"

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None,
                 body: Any = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.body = body

    @property
    def retry_after(self) -> float | None:
        """The ``Retry-After`` the service sent, in seconds (None when absent or not a number)."""
        value = self.headers.get("retry-after") or self.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


_BY_CODE: dict[str, type[DfmscdAPIError]] = {}


def _register(code: str, name: str, doc: str) -> type[DfmscdAPIError]:
    cls = type(name, (DfmscdAPIError,), {"code": code, "__doc__": doc, "__module__": __name__})
    _BY_CODE[code] = cls
    return cls


# Generic codes (the service's defaults per status, app errors.py _DEFAULT_CODES).
BadRequestError = _register("bad_request", "BadRequestError", "400: malformed request (multipart, header, body).")
UnauthorizedError = _register("unauthorized", "UnauthorizedError", "401: missing, invalid or revoked API key.")
ForbiddenError = _register("forbidden", "ForbiddenError", "403.")
NotFoundError = _register("not_found", "NotFoundError", "404: no such teacher, job, student or route (for this key).")
MethodNotAllowedError = _register("method_not_allowed", "MethodNotAllowedError", "405.")
NotAcceptableError = _register("not_acceptable", "NotAcceptableError", "406.")
ConflictError = _register("conflict", "ConflictError", "409.")
LengthRequiredError = _register("length_required", "LengthRequiredError", "411.")
PayloadTooLargeError = _register("payload_too_large", "PayloadTooLargeError", "413: body or upload over the limit.")
UnsupportedMediaTypeError = _register("unsupported_media_type", "UnsupportedMediaTypeError", "415.")
RangeNotSatisfiableError = _register("range_not_satisfiable", "RangeNotSatisfiableError", "416.")
InvalidRequestError = _register("validation_error", "InvalidRequestError", "422: the request does not validate.")
RateLimitedError = _register("rate_limited", "RateLimitedError", "429: over the key's request rate (see retry_after).")
InternalServerError = _register("internal_error", "InternalServerError", "500.")
ServiceUnavailableError = _register("service_unavailable", "ServiceUnavailableError", "503.")
# Codes the routes raise.
InvalidCardError = _register("invalid_card", "InvalidCardError", "422: the model card is invalid.")
InvalidCheckpointError = _register("invalid_checkpoint", "InvalidCheckpointError", "422: the weights file is refused.")
InvalidTeacherError = _register("invalid_teacher", "InvalidTeacherError", "422: weights and card do not make a teacher.")
InvalidStudentError = _register("invalid_student", "InvalidStudentError", "422: a student cannot be built.")
UnknownArchitectureError = _register("unknown_architecture", "UnknownArchitectureError", "422: unknown student architecture.")
InvalidConfigError = _register("invalid_config", "InvalidConfigError", "422: preset, hyperparameters, seed or device.")
InvalidBudgetError = _register("invalid_budget", "InvalidBudgetError", "422: the budget is invalid or over the limit.")
ExportFailedError = _register("export_failed", "ExportFailedError", "422: the student cannot be exported to that format.")
IdempotencyConflictError = _register("idempotency_conflict", "IdempotencyConflictError",
                                     "409: Idempotency-Key already used with a different body.")
JobFinishedError = _register("job_finished", "JobFinishedError", "409: the job already succeeded or failed.")
TeacherInUseError = _register("teacher_in_use", "TeacherInUseError", "409: an active job uses the teacher.")
NotReadyError = _register("not_ready", "NotReadyError", "404: weights or samples not written yet; 409: a job to "
                          "evaluate has not ended or stored no students.")
ExportRefusedError = _register("export_refused", "ExportRefusedError",
                               "422: that file failed verification when the job ended and is never served.")
NoCalibrationSampleError = _register("no_calibration_sample", "NoCalibrationSampleError",
                                     "409: no INT8 file: the job kept no calibration sample (it ended before the "
                                     "worker exported every format, or was cancelled).")
InvalidEvaluationSetError = _register("invalid_evaluation_set", "InvalidEvaluationSetError",
                                      "422: the evaluation set is unreadable, unsafe, too large, or does not fit the card.")
EvaluationSetInUseError = _register("evaluation_set_in_use", "EvaluationSetInUseError",
                                    "409: an active job or a pending evaluation uses the set.")
JobActiveError = _register("job_active", "JobActiveError", "409: the job is queued or running (cancel it first).")
StorageUnavailableError = _register("storage_unavailable", "StorageUnavailableError", "503: object storage is unreachable.")
StorageQuotaExceededError = _register("storage_quota_exceeded", "StorageQuotaExceededError", "413: storage quota.")
TooManyJobsError = _register("too_many_jobs", "TooManyJobsError", "429: too many active jobs for this key.")
BrokerUnavailableError = _register("broker_unavailable", "BrokerUnavailableError", "503: the job queue is unreachable.")
NotImplementedByServerError = _register("not_implemented", "NotImplementedByServerError", "501.")

_DEFAULT_CODE_BY_STATUS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 411: "length_required", 413: "payload_too_large",
    415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "validation_error", 429: "rate_limited",
    500: "internal_error", 501: "not_implemented", 503: "service_unavailable",
}


def error_class(code: str | None, status_code: int) -> type[DfmscdAPIError]:
    if code in _BY_CODE:
        return _BY_CODE[code]  # type: ignore[index]
    return _BY_CODE.get(_DEFAULT_CODE_BY_STATUS.get(status_code, ""), DfmscdAPIError)


def from_response(status_code: int, headers: dict[str, str], body: Any, text: str = "") -> DfmscdAPIError:
    """The exception for an error answer (a body without the standard shape keeps its text)."""
    code, message = None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        message = body["error"].get("message")
    if not isinstance(code, str):
        code = _DEFAULT_CODE_BY_STATUS.get(status_code, "error")
    if not isinstance(message, str) or not message:
        message = (text or "").strip()[:500] or f"HTTP {status_code}"
    return error_class(code, status_code)(status_code, code, message, headers, body)


class DfmscdConnectionError(DfmscdClientError):
    """The service could not be reached (or kept dropping the connection) within the retries."""


class ChecksumMismatchError(DfmscdClientError):
    """A downloaded file's sha256 is not the one the service announced (nothing was written)."""

    def __init__(self, expected: str, actual: str, what: str) -> None:
        super().__init__(f"{what}: sha256 {actual} does not match the announced {expected}")
        self.expected = expected
        self.actual = actual


class WaitTimeoutError(DfmscdClientError, TimeoutError):
    """``Client.wait`` (``wait_evaluation``) ran out of time before the job (evaluation) finished."""

    def __init__(self, job_id: str, timeout: float, last_status: str | None, what: str = "job") -> None:
        super().__init__(f"{what} {job_id!r} still {last_status or 'unfinished'} after {timeout:g} s")
        self.job_id = job_id
        self.timeout = timeout
        self.last_status = last_status


__all__ = ["ChecksumMismatchError", "DfmscdAPIError", "DfmscdClientError", "DfmscdConnectionError",
           "WaitTimeoutError", "error_class", "from_response", *sorted(c.__name__ for c in _BY_CODE.values())]
