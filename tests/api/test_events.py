"""Job events: cursor-paged JSON and the Server-Sent Events stream (events written as a worker does)."""

from __future__ import annotations

import json
import threading

from service_kit import assert_error, job_body
from sqlalchemy import update

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import Job, JobEvent, utcnow


def _job(client, auth, teacher) -> str:
    r = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"]))
    assert r.status_code == 202
    return r.json()["id"]


def _add_events(job_id: str, start: int, n: int) -> None:
    with session_scope() as s:
        for seq in range(start, start + n):
            s.add(JobEvent(job_id=job_id, seq=seq, kind="progress" if seq % 2 else "log", epoch=seq // 3,
                           progress=seq / 100, data={"n": seq}, created_at=utcnow()))


def _set_status(job_id: str, status: str) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status))


def _parse_sse(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        if "data" in fields or "id" in fields:
            out.append(fields)
    return out


def test_events_are_cursor_paged(client, auth, teacher):
    jid = _job(client, auth, teacher)
    _add_events(jid, 1, 7)
    page = client.get(f"/v1/jobs/{jid}/events?limit=3", headers=auth).json()
    assert [e["id"] for e in page["data"]] == [1, 2, 3] and page["has_more"] and page["next"] == "3"
    assert page["data"][0]["data"] == {"n": 1} and page["data"][0]["kind"] == "progress"
    seen = [e["id"] for e in page["data"]]
    while page["has_more"]:
        page = client.get(f"/v1/jobs/{jid}/events", params={"limit": 3, "after": page["next"]}, headers=auth).json()
        seen += [e["id"] for e in page["data"]]
    assert seen == list(range(1, 8))
    assert_error(client.get(f"/v1/jobs/{jid}/events?after=abc", headers=auth), 422, "validation_error", "after")


def test_sse_replays_then_ends_for_a_finished_job_and_honours_last_event_id(client, auth, teacher):
    jid = _job(client, auth, teacher)
    _add_events(jid, 1, 5)
    _set_status(jid, "succeeded")
    r = client.get(f"/v1/jobs/{jid}/events", headers={**auth, "Accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    msgs = _parse_sse(r.text)
    assert [m["id"] for m in msgs if "id" in m] == ["1", "2", "3", "4", "5"]
    assert json.loads(msgs[0]["data"])["data"] == {"n": 1}
    assert msgs[-1]["event"] == "end" and json.loads(msgs[-1]["data"])["status"] == "succeeded"
    r = client.get(f"/v1/jobs/{jid}/events", headers={**auth, "Accept": "text/event-stream", "Last-Event-ID": "3"})
    assert [m["id"] for m in _parse_sse(r.text) if "id" in m] == ["4", "5"]


def test_sse_keeps_polling_a_running_job_until_it_finishes(client, auth, teacher):
    """A stream on a running job does not end until the job does, and delivers every event in
    order (the live, unbuffered case over a real socket is in tests/worker/test_embedded.py)."""
    jid = _job(client, auth, teacher)
    _set_status(jid, "running")
    _add_events(jid, 1, 2)
    done = threading.Event()

    def writer() -> None:
        for seq in range(3, 9):
            _add_events(jid, seq, 1)
        _set_status(jid, "cancelled")
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    r = client.get(f"/v1/jobs/{jid}/events", headers={**auth, "Accept": "text/event-stream"})
    t.join(10)
    assert done.is_set()
    msgs = _parse_sse(r.text)
    assert [int(m["id"]) for m in msgs if "id" in m] == list(range(1, 9))
    assert msgs[-1]["event"] == "end" and json.loads(msgs[-1]["data"])["status"] == "cancelled"
