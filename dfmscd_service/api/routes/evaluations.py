"""Evaluations of a finished job on an evaluation set: requested here, run by the worker."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from dfmscd_service.api.deps import CurrentKey, SessionDep, get_owned_evaluation, get_owned_job, require_json
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, EvaluationCreate, EvaluationList, EvaluationOut
from dfmscd_service.api.services import evaluations
from dfmscd_service.api.views import evaluation_out
from dfmscd_service.core.models import Evaluation

router = APIRouter(prefix="/v1/jobs", tags=["evaluations"], route_class=SessionReleasingRoute)
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 413, 415, 422, 429, 503)}


@router.post("/{job_id}/evaluations", status_code=202, response_model=EvaluationOut, responses=_ERRORS)
def request_evaluation(job_id: str, body: EvaluationCreate, principal: CurrentKey, session: SessionDep,
                       _json: None = Depends(require_json)) -> EvaluationOut:
    """Evaluate a finished job's teacher and every student (PyTorch weights and each stored file, INT8
    included) on one of your evaluation sets; queued for the worker (poll GET .../evaluations/{id})."""
    job = get_owned_job(session, principal, job_id)
    return evaluation_out(evaluations.request_evaluation(session, principal, job, body.evaluation_set_id))


@router.get("/{job_id}/evaluations", response_model=EvaluationList, responses=_ERRORS)
def list_evaluations(job_id: str, principal: CurrentKey, session: SessionDep) -> EvaluationList:
    """The job's evaluations, newest first (the one made when the job ended among them)."""
    job = get_owned_job(session, principal, job_id)
    rows = session.scalars(select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.id.desc()))
    return EvaluationList(data=[evaluation_out(e) for e in rows])


@router.get("/{job_id}/evaluations/{evaluation_id}", response_model=EvaluationOut, responses=_ERRORS)
def get_evaluation(job_id: str, evaluation_id: str, principal: CurrentKey, session: SessionDep) -> EvaluationOut:
    job = get_owned_job(session, principal, job_id)
    return evaluation_out(get_owned_evaluation(session, principal, job, evaluation_id))
