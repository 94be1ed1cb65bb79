"""dfmscd.client against the real service: a live uvicorn (PostgreSQL + Redis) and a real Celery
worker, shared by the whole file. Nothing here waits on a clock: the client follows the job's
own event stream, and dropped connections come from a real proxy that cuts them.

The job that the worker runs is created first (``finished_job``); the other tests' jobs are
cancelled while still queued, so the worker only ever runs that one (and the cancel test's).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from cutting_proxy import cutting_proxy
from service_kit import CARD, TINY_HYPERPARAMETERS, make_key, write_evaluation_npz

from dfmscd.client import ChecksumMismatchError, Client, EvaluationSet, Event, Job, RetryPolicy, Teacher
from dfmscd.client import errors as E

NO_ID = "job_" + "0" * 28


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _client(url: str, key: str, **kw) -> Client:
    # No idle keep-alive connections: with the cutting proxy every request is its own connection.
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    return Client(url, key, retry=RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2), progress=False,
                  transport=transport, **kw)


@pytest.fixture(scope="module")
def api(api_url, api_key):
    with _client(api_url, api_key) as c:
        yield c


@pytest.fixture(scope="module")
def uploaded(api, teacher_file) -> Teacher:
    return api.upload_teacher(teacher_file, CARD)


@pytest.fixture(scope="module")
def evaluation_set(api, uploaded, tmp_path_factory) -> EvaluationSet:
    return api.upload_evaluation_set(write_evaluation_npz(tmp_path_factory.mktemp("set") / "test.npz", n=30),
                                     teacher_id=uploaded)


@pytest.fixture(scope="module")
def finished_job(api, uploaded, evaluation_set, celery_worker) -> Job:
    job = api.create_job(uploaded.id, [{"name": "resnet8"}], preset="fast", budget="1e",
                         hyperparameters=TINY_HYPERPARAMETERS, seed=3, metadata={"by": "client-test"},
                         evaluation_set_id=evaluation_set)
    done = api.wait(job.id, progress=True)
    assert done.status == "succeeded", (done.error, celery_worker.log())
    return done


def _cancel_all(api: Client, jobs: list[Job]) -> None:
    for j in jobs:
        try:
            api.cancel_job(j.id)
        except E.JobFinishedError:
            pass


# --------------------------------------------------------------------------- the worker's job
def test_wait_follows_the_job_to_its_end_with_a_real_worker(finished_job: Job, uploaded: Teacher) -> None:
    job = finished_job
    assert isinstance(job, Job) and job.done and job.progress == 1.0
    assert job.teacher_id == uploaded.id and job.seed == 3 and job.metadata == {"by": "client-test"}
    assert job.budget == {"epochs": 1} and job.preset == "fast"
    assert isinstance(job.finished_at, datetime) and job.error is None
    (student,) = job.students
    assert student.name == "resnet8" and student.status == "succeeded" and student.parameters > 0
    assert job.student("resnet8") is student
    assert job.report["epochs_completed"] == 1  # unknown-to-the-client fields stay reachable
    assert job.raw["report"] is job.report


def test_events_stream_to_the_end_and_resume_after_an_event_id(api: Client, finished_job: Job) -> None:
    events = list(api.events(finished_job.id))
    assert all(isinstance(e, Event) for e in events)
    ids = [e.id for e in events]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 4
    assert {"log", "progress", "metrics", "checkpoint"} <= {e.kind for e in events}
    assert events[-1].data["message"] == "job succeeded"
    k = len(ids) // 2
    assert [e.id for e in api.events(finished_job.id, last_event_id=k)] == ids[k:]


def test_events_resume_with_last_event_id_after_a_dropped_connection(api_url, api_key, api, finished_job) -> None:
    ids = [e.id for e in api.events(finished_job.id)]
    # Cut the first stream part way through (headers + 'retry:' + a few events).
    with cutting_proxy(api_url, "/events", cut_after=1500) as proxy, _client(proxy.url, api_key) as c:
        got = [e.id for e in c.events(finished_job.id)]
    assert proxy.cuts_done == 1, "the stream was shorter than the cut: the test proved nothing"
    assert got == ids  # nothing lost, nothing twice
    streams = [i for i, h in enumerate(proxy.heads) if "/events" in h.split("\r\n", 1)[0]]
    assert len(streams) == 2
    assert proxy.header_of(streams[0], "Last-Event-ID") is None
    resumed = int(proxy.header_of(streams[1], "Last-Event-ID"))
    assert 1 <= resumed < ids[-1]


def test_download_verifies_and_loads(api: Client, finished_job: Job, tmp_path: Path) -> None:
    from dfmscd.io import load_model

    d = api.download_student(finished_job.id, "resnet8", tmp_path / "s.safetensors")
    assert d.path == tmp_path / "s.safetensors" and d.resumed_from == 0 and not d.restarted
    assert d.sha256 == finished_job.student("resnet8").sha256 == _sha(d.path)
    assert d.size_bytes == d.path.stat().st_size == finished_job.student("resnet8").size_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]  # no .part left
    _module, card = load_model(d.path)
    assert card.input_shape == (1, 8, 8)


def test_a_download_is_path_like_and_shows_its_path_and_size(api: Client, finished_job: Job, tmp_path: Path) -> None:
    from dfmscd.io import load_model

    target = tmp_path / "student.safetensors"
    d = api.download_student(finished_job.id, "resnet8", target)
    assert os.fspath(d) == str(target)
    _module, card = load_model(api.download_student(finished_job.id, "resnet8", target))  # no .path needed
    assert card.architecture == "resnet8" and card.input_shape == (1, 8, 8)
    size = finished_job.student("resnet8").size_bytes
    assert str(target) in repr(d) and f"{size:,} bytes" in repr(d)


def test_download_resumes_a_partial_file_with_range(api: Client, finished_job: Job, tmp_path: Path) -> None:
    whole = api.download_student(finished_job.id, "resnet8", tmp_path / "whole.safetensors").path.read_bytes()
    half = len(whole) // 2
    target = tmp_path / "resumed.safetensors"
    target.with_name(target.name + ".part").write_bytes(whole[:half])  # an interrupted earlier call
    d = api.download_student(finished_job.id, "resnet8", target)
    assert d.resumed_from == half and d.range_requests == 1 and not d.restarted
    assert target.read_bytes() == whole


def test_a_stale_partial_file_is_detected_by_the_sha_and_downloaded_again(api, finished_job, tmp_path) -> None:
    target = tmp_path / "stale.safetensors"
    target.with_name(target.name + ".part").write_bytes(b"\0" * 1000)  # not this file's first bytes
    d = api.download_student(finished_job.id, "resnet8", target)
    assert d.restarted and d.sha256 == finished_job.student("resnet8").sha256 == _sha(target)


def test_download_resumes_after_the_connection_drops_mid_body(api_url, api_key, finished_job, tmp_path) -> None:
    size = finished_job.student("resnet8").size_bytes
    with cutting_proxy(api_url, "/weights", cut_after=size // 3) as proxy, _client(proxy.url, api_key) as c:
        d = c.download_student(finished_job.id, "resnet8", tmp_path / "s.safetensors")
    assert proxy.cuts_done == 1
    assert d.range_requests == 1 and d.sha256 == finished_job.student("resnet8").sha256 == _sha(d.path)
    weights = [i for i, h in enumerate(proxy.heads) if "/weights" in h.split("\r\n", 1)[0]]
    assert len(weights) == 2 and proxy.header_of(weights[0], "Range") is None
    start = int(proxy.header_of(weights[1], "Range").removeprefix("bytes=").rstrip("-"))
    assert 0 < start < size


def test_a_sha_that_does_not_match_the_bytes_is_refused(api: Client, finished_job: Job, tmp_path: Path) -> None:
    from sqlalchemy import update

    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.models import JobStudent

    real = finished_job.student("resnet8").sha256
    wrong = hashlib.sha256(b"not these bytes").hexdigest()
    with session_scope() as s:  # the service now announces a digest the stored bytes do not have
        s.execute(update(JobStudent).where(JobStudent.job_id == finished_job.id).values(sha256=wrong))
    try:
        with pytest.raises(ChecksumMismatchError) as info:
            api.download_student(finished_job.id, "resnet8", tmp_path / "s.safetensors")
    finally:
        with session_scope() as s:
            s.execute(update(JobStudent).where(JobStudent.job_id == finished_job.id).values(sha256=real))
    assert info.value.expected == wrong and info.value.actual == real
    assert list(tmp_path.iterdir()) == []


def test_int8_download_student_report_and_evaluations(api: Client, finished_job: Job, evaluation_set: EvaluationSet,
                                                     tmp_path: Path) -> None:
    import onnxruntime as ort

    assert finished_job.evaluation_set_id == evaluation_set.id and evaluation_set.summary["images"] == 30
    d = api.download_student(finished_job.id, "resnet8", tmp_path / "s.int8.onnx", format="onnx-int8")
    report = api.student_report(finished_job.id, "resnet8")
    [int8] = [f for f in report.files if f["format"] == "onnx-int8"]
    assert d.sha256 == int8["sha256"] == _sha(d.path) and report.refused == {}
    assert report.flagged == (["onnx-int8"] if int8["status"] == "flagged" else [])
    session = ort.InferenceSession(str(d.path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)
    assert set(report.report["formats"]) == {"safetensors", "onnx", "torchscript", "onnx-int8"}
    assert report.report["formats"]["onnx-int8"]["latency_ms"]["1"]["median_ms"] > 0

    [at_end] = api.list_evaluations(finished_job.id)
    assert at_end.source == "job_end" and at_end.status == "succeeded" and at_end.done
    assert set(at_end.accuracy("resnet8")) == {"pytorch", "safetensors", "onnx", "torchscript", "onnx-int8"}
    asked = api.evaluate_job(finished_job.id, evaluation_set)
    assert asked.status == "queued" and asked.source == "request"
    done = api.wait_evaluation(finished_job.id, asked, timeout=600)  # the bound is for a broken run only
    assert done.status == "succeeded" and done.accuracy("resnet8") == at_end.accuracy("resnet8")
    assert done.teacher_accuracy == at_end.teacher_accuracy
    assert report.evaluations[0]["accuracy"] == at_end.accuracy("resnet8")
    assert api.get_evaluation(finished_job.id, done.id).finished_at is not None
    assert evaluation_set.id in [e.id for e in api.list_evaluation_sets()]
    with pytest.raises(E.NotFoundError):
        api.get_evaluation(finished_job.id, "evl_" + "0" * 28)
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 1, 9, 9), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(E.InvalidEvaluationSetError, match="N x 1 x 8 x 8"):
        api.upload_evaluation_set(tmp_path / "bad.npz", teacher_id=finished_job.teacher_id)


def test_cancelling_a_finished_job_is_a_job_finished_error(api: Client, finished_job: Job) -> None:
    with pytest.raises(E.JobFinishedError) as info:
        api.cancel_job(finished_job.id)
    assert info.value.status_code == 409 and info.value.code == "job_finished"


# --------------------------------------------------------------------------- teachers
def test_teacher_upload_with_each_card_form_get_list_delete(api: Client, teacher_file: Path, tmp_path: Path) -> None:
    from dfmscd.io.card import ModelCard

    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(CARD))
    made = [api.upload_teacher(teacher_file, c) for c in (CARD, card_path, ModelCard.model_validate(CARD))]
    for t in made:
        assert isinstance(t, Teacher) and t.id.startswith("tch_")
        assert t.sha256 == _sha(teacher_file) and t.size_bytes == teacher_file.stat().st_size
        assert t.card == {"arch_kwargs": {}, **CARD} and t.file_format == "safetensors" and t.filename == teacher_file.name
        assert isinstance(t.created_at, datetime)
    got = api.get_teacher(made[0].id)
    assert (got.id, got.sha256, got.card) == (made[0].id, made[0].sha256, made[0].card)
    listed = [t.id for t in api.list_teachers(page_size=1)]  # one per page: the iterator pages
    assert {t.id for t in made} <= set(listed) and len(listed) == len(set(listed))
    for t in made:
        api.delete_teacher(t.id)
        with pytest.raises(E.NotFoundError):
            api.get_teacher(t.id)
    assert not {t.id for t in made} & {t.id for t in api.list_teachers()}


def test_upload_and_download_show_byte_bars_when_asked(api: Client, finished_job: Job, teacher_file: Path,
                                                       tmp_path: Path, capsys) -> None:
    t = api.upload_teacher(teacher_file, CARD, progress=True)
    api.download_student(finished_job.id, "resnet8", tmp_path / "s.safetensors", progress=True)
    err = capsys.readouterr().err
    assert f"upload {teacher_file.name}" in err and "download s.safetensors" in err
    api.delete_teacher(t.id)


def test_upload_errors_map_to_their_classes(api: Client, teacher_file: Path, tmp_path: Path) -> None:
    with pytest.raises(E.InvalidCardError) as info:
        api.upload_teacher(teacher_file, {**CARD, "num_classes": "ten"})
    assert info.value.status_code == 422 and info.value.code == "invalid_card" and "num_classes" in info.value.message
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(E.InvalidCheckpointError):
        api.upload_teacher(empty, CARD)


# --------------------------------------------------------------------------- jobs
def test_create_job_is_idempotent_with_the_same_key(api: Client, uploaded: Teacher) -> None:
    kw = dict(preset="fast", budget="1e", hyperparameters=TINY_HYPERPARAMETERS, idempotency_key="client-test-key-1")
    first = api.create_job(uploaded.id, ["resnet8"], **kw)
    try:
        again = api.create_job(uploaded.id, ["resnet8"], **kw)
        assert again.id == first.id
        with pytest.raises(E.IdempotencyConflictError) as info:
            api.create_job(uploaded.id, ["vgg8"], **kw)  # same key, other body
        assert info.value.status_code == 409
        other = api.create_job(uploaded.id, ["resnet8"], preset="fast", budget="1e",
                               hyperparameters=TINY_HYPERPARAMETERS)  # a fresh uuid4 key
        assert other.id != first.id
    finally:
        _cancel_all(api, [first] + ([other] if "other" in locals() else []))


def test_list_jobs_iterates_across_pages_and_filters(api_url: str, teacher_file: Path) -> None:
    with _client(api_url, make_key("client-list")) as c:  # its own key: exactly these jobs
        t = c.upload_teacher(teacher_file, CARD)
        jobs = [c.create_job(t, [{"name": "resnet8", "arch_kwargs": {}}], preset="fast", budget="1e",
                             hyperparameters=TINY_HYPERPARAMETERS) for _ in range(3)]
        try:
            listed = list(c.list_jobs(page_size=2))
            assert [j.id for j in listed] == [j.id for j in reversed(jobs)]  # newest first, 2 pages
            assert all(isinstance(j, Job) and j.teacher_id == t.id for j in listed)
        finally:
            _cancel_all(c, jobs)
        cancelled = list(c.list_jobs(status=["cancelled", "cancelling"], page_size=1))
        assert {j.id for j in cancelled} == {j.id for j in jobs}
        assert list(c.list_jobs(status="succeeded")) == []


def test_cancel_a_queued_or_running_job_then_wait_for_it(api: Client, uploaded: Teacher, celery_worker) -> None:
    job = api.create_job(uploaded.id, ["resnet8"], preset="fast", budget="10000e", hyperparameters=TINY_HYPERPARAMETERS)
    try:
        with pytest.raises(E.WaitTimeoutError) as info:
            api.wait(job.id, timeout=0)  # 10000 epochs: it cannot be over
    finally:
        answer = api.cancel_job(job.id)  # never leave the shared worker busy with it
    assert isinstance(info.value, TimeoutError) and info.value.job_id == job.id
    assert info.value.last_status in ("queued", "running")
    assert answer.id == job.id and answer.status in ("cancelled", "cancelling")
    assert api.wait(job.id).status == "cancelled"
    api.delete_job(job.id)  # finished: it goes, with whatever it stored
    with pytest.raises(E.NotFoundError):
        api.get_job(job.id)


def test_job_errors_map_to_their_classes(api: Client, uploaded: Teacher) -> None:
    with pytest.raises(E.NotFoundError) as info:
        api.get_job(NO_ID)
    assert (info.value.status_code, info.value.code) == (404, "not_found") and NO_ID in info.value.message
    with pytest.raises(E.NotFoundError):
        api.create_job("tch_" + "0" * 28, ["resnet8"])
    with pytest.raises(E.UnknownArchitectureError) as info:
        api.create_job(uploaded.id, ["resnet9000"])
    assert info.value.status_code == 422 and "resnet9000" in info.value.message
    with pytest.raises(E.InvalidConfigError):
        api.create_job(uploaded.id, ["resnet8"], preset="no-such-preset")
    with pytest.raises(E.InvalidBudgetError):
        api.create_job(uploaded.id, ["resnet8"], budget={"epochs": 1, "seconds": 5})
    with pytest.raises(E.InvalidRequestError) as info:
        api.create_job(uploaded.id, [{"architecture": "resnet8", "colour": "red"}])
    assert info.value.code == "validation_error" and info.value.status_code == 422
    with pytest.raises(E.InvalidRequestError):
        list(api.list_jobs(status="sleeping"))
    assert isinstance(info.value, E.DfmscdAPIError)


def test_a_bad_key_is_unauthorized(api_url: str) -> None:
    with _client(api_url, "dfk_not_a_key") as c, pytest.raises(E.UnauthorizedError) as info:
        c.get_job(NO_ID)
    assert info.value.status_code == 401


def test_architectures_with_a_family_filter(api: Client) -> None:
    # (timm listings are tested in tests/api/test_architectures.py; torchvision here spares this
    # file the seconds of importing timm in the server)
    found = api.architectures(family="torchvision", q="MobileNet")
    assert found and all(a.source == "torchvision" and "mobilenet" in a.name for a in found)
    assert "tv/mobilenet_v3_small" in {a.name for a in found}
    default = {a.name for a in api.architectures()}
    assert {"resnet8", "tv/mobilenet_v3_small"} <= default and not any(n.startswith("timm/") for n in default)
