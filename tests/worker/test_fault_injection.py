"""The test-only fault hook: off by default, strict about its syntax, and ``once`` means once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dfmscd_service.worker.faults import ENV_VAR, FaultSpec, fault_callback, parse_fault


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
