"""The test-only hooks: the fault is off by default, strict about its syntax, and ``once`` means
once; the pause point is inert without its variable, holds only the chosen job, exactly after its
checkpoint at epoch >= N, until released, and once per job."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import torch
from service_kit import wait_for

from dfmscd_service.worker.faults import (
    ENV_VAR,
    PAUSE_ENV_VAR,
    PAUSE_METADATA_KEY,
    FaultSpec,
    fault_callback,
    parse_fault,
    pause_callback,
    paused_marker,
    release_marker,
)


def test_parse_fault_accepts_only_the_documented_forms():
    assert parse_fault(None) is None and parse_fault("") is None
    assert parse_fault("oom_at_epoch:2") == FaultSpec("oom_at_epoch", 2, False)
    assert parse_fault("oom_at_epoch:0:once") == FaultSpec("oom_at_epoch", 0, True)
    for bad in ("oom", "oom_at_epoch", "oom_at_epoch:x", "oom_at_epoch:-1", "oom_at_epoch:1:twice", "segv:1"):
        with pytest.raises(ValueError, match=ENV_VAR):
            parse_fault(bad)


def test_no_hook_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert fault_callback("job_x", tmp_path) is None


def test_once_fires_for_one_job_from_the_given_epoch(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, "oom_at_epoch:1:once")
    first = fault_callback("job_a", tmp_path)
    assert first is not None
    first(SimpleNamespace(epoch=0))  # before the epoch: nothing
    with pytest.raises(torch.cuda.OutOfMemoryError, match="out of memory"):
        first(SimpleNamespace(epoch=1))
    assert fault_callback("job_b", tmp_path) is None  # already fired in this data dir
    assert (tmp_path / "fault-inject" / "oom_at_epoch-1.fired").read_text() == "job_a"


def test_without_once_every_job_fails(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, "oom_at_epoch:0")
    for job in ("a", "b"):
        cb = fault_callback(job, tmp_path)
        assert cb is not None
        with pytest.raises(torch.cuda.OutOfMemoryError):
            cb(SimpleNamespace(epoch=3))


def _event(kind: str, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, epoch=epoch)


def test_pause_hook_is_inert_without_its_variable_or_the_jobs_key(monkeypatch, tmp_path):
    monkeypatch.delenv(PAUSE_ENV_VAR, raising=False)
    assert pause_callback("job_x", {PAUSE_METADATA_KEY: 1}) is None  # production: metadata alone does nothing
    monkeypatch.setenv(PAUSE_ENV_VAR, str(tmp_path))
    assert pause_callback("job_x", {}) is None and pause_callback("job_x", {"other": 1}) is None
    for bad in (-1, "2", 1.5, True, None):
        with pytest.raises(ValueError, match=PAUSE_METADATA_KEY):
            pause_callback("job_x", {PAUSE_METADATA_KEY: bad})


def test_pause_hook_holds_after_the_checkpoint_until_released_and_only_once(monkeypatch, tmp_path):
    monkeypatch.setenv(PAUSE_ENV_VAR, str(tmp_path))
    hold = pause_callback("job_p", {PAUSE_METADATA_KEY: 2})
    assert hold is not None
    for early in (_event("checkpoint", 1), _event("metrics", 2), _event("log", 3)):
        hold(early)  # returns at once: not a checkpoint at epoch >= 2
    assert not paused_marker(tmp_path, "job_p").exists()

    returned = threading.Event()
    worker = threading.Thread(target=lambda: (hold(_event("checkpoint", 3)), returned.set()), daemon=True)
    worker.start()
    marker = paused_marker(tmp_path, "job_p")
    wait_for(marker.exists, 60, 0.01, what="the hook's paused marker")
    assert json.loads(marker.read_text())["epoch"] == 3 and json.loads(marker.read_text())["job_id"] == "job_p"
    assert not returned.is_set()  # held: nothing releases it yet
    release_marker(tmp_path, "job_p").touch()
    worker.join(60)
    assert returned.is_set()
    hold(_event("checkpoint", 4))  # this attempt was held once already: no second hold
    assert pause_callback("job_p", {PAUSE_METADATA_KEY: 2}) is None  # nor a resumed attempt
    assert pause_callback("job_q", {PAUSE_METADATA_KEY: 2}) is not None  # another job is its own
