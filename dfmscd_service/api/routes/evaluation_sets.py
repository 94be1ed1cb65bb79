"""Evaluation sets: labelled images to report accuracy on (streamed upload, checked in the torch pool)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select

from dfmscd_service.api.deps import CurrentKey, SessionDep, get_owned_evaluation_set
from dfmscd_service.api.http.pagination import PageParams, keyset_page
from dfmscd_service.api.http.routing import SessionReleasingRoute
from dfmscd_service.api.schemas import ErrorBody, EvaluationSetOut, Page
from dfmscd_service.api.services import evaluation_sets
from dfmscd_service.api.views import evaluation_set_out
from dfmscd_service.core.models import EvaluationSet

router = APIRouter(prefix="/v1/evaluation-sets", tags=["evaluation sets"], route_class=SessionReleasingRoute)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": ".npz (uint8 or [0, 1] float x: N x C x H x W, N x H x W x C or N x H x W; "
                                                "integer y) or a class-folder archive (.tar, .tar.gz, .tgz, .zip: "
                                                "[test/]CLASS/IMAGE.png|jpg); at most 200 MB and 100,000 images"},
                        "teacher_id": {"type": "string", "description": "optional: check the set against this "
                                       "teacher's card now (input shape, classes, label range)"},
                    },
                }
            }
        },
    }
}
_ERRORS = {c: {"model": ErrorBody} for c in (400, 401, 404, 409, 413, 415, 422, 429, 503)}


@router.post("", status_code=201, response_model=EvaluationSetOut, openapi_extra=_UPLOAD_BODY, responses=_ERRORS)
async def upload_evaluation_set(request: Request, principal: CurrentKey) -> EvaluationSetOut:
    """Upload labelled images to evaluate finished jobs on (reporting only: nothing trains on them)."""
    return evaluation_set_out(await evaluation_sets.upload_evaluation_set(request, principal))


@router.get("", response_model=Page[EvaluationSetOut], responses=_ERRORS)
def list_evaluation_sets(principal: CurrentKey, session: SessionDep,
                         page: PageParams = Depends(PageParams)) -> Page[EvaluationSetOut]:
    """Your evaluation sets, newest first."""
    rows, more = keyset_page(session, select(EvaluationSet).where(EvaluationSet.owner_id == principal.owner_id),
                             EvaluationSet.id, page)
    return Page[EvaluationSetOut](data=[evaluation_set_out(r) for r in rows], has_more=more is not None, next=more)


@router.get("/{set_id}", response_model=EvaluationSetOut, responses=_ERRORS)
def get_evaluation_set(set_id: str, principal: CurrentKey, session: SessionDep) -> EvaluationSetOut:
    return evaluation_set_out(get_owned_evaluation_set(session, principal, set_id))


@router.delete("/{set_id}", status_code=204, response_class=Response, responses=_ERRORS)
def delete_evaluation_set(set_id: str, principal: CurrentKey, session: SessionDep) -> Response:
    """Delete a set, its evaluations and its file; 409 while an active job or a pending evaluation uses it."""
    evaluation_sets.delete_evaluation_set(session, get_owned_evaluation_set(session, principal, set_id))
    return Response(status_code=204)
