"""Python client of the dfmscd service (httpx; imports neither torch nor the service's packages).

    from dfmscd.client import Client

    with Client() as api:                      # $DFMSCD_API_URL, $DFMSCD_API_KEY
        teacher = api.upload_teacher("teacher.safetensors", "teacher.json")
        job = api.create_job(teacher.id, ["resnet8", "vgg8"], preset="fast", budget="40e")
        job = api.wait(job.id)
        api.download_student(job.id, "resnet8", "resnet8.safetensors")
        api.download_student(job.id, "resnet8", "resnet8.int8.onnx", format="onnx-int8")

Errors: :class:`DfmscdAPIError` (one subclass per service error code, ``dfmscd.client.errors``),
:class:`DfmscdConnectionError`, :class:`ChecksumMismatchError`, :class:`WaitTimeoutError`.
"""

from dfmscd.client import errors
from dfmscd.client.client import Client, budget_body, card_text, student_body
from dfmscd.client.errors import (
    ChecksumMismatchError,
    DfmscdAPIError,
    DfmscdClientError,
    DfmscdConnectionError,
    WaitTimeoutError,
)
from dfmscd.client.models import (
    Advice,
    Architecture,
    Download,
    ErrorInfo,
    Evaluation,
    EvaluationSet,
    Event,
    Job,
    Student,
    StudentReport,
    Teacher,
)
from dfmscd.client.transport import RetryPolicy

__all__ = [
    "Advice", "Architecture", "ChecksumMismatchError", "Client", "DfmscdAPIError", "DfmscdClientError", "DfmscdConnectionError",
    "Download", "ErrorInfo", "Evaluation", "EvaluationSet", "Event", "Job", "RetryPolicy", "Student", "StudentReport",
    "Teacher", "WaitTimeoutError", "budget_body",
    "card_text", "errors", "student_body",
]
