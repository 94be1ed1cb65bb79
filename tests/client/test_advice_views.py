"""How a job's budget advice, warnings and flagged students read in the client's models and in the
remote commands' wording (``dfmscd.cli.remote_view``): plain JSON in, no service needed."""

from __future__ import annotations

from datetime import datetime, timezone

from dfmscd.cli.remote_view import advice_line, flag_lines, job_summary, warning_lines
from dfmscd.client import Advice, Job

DEVICE = "cpu (AMD EPYC, 1 threads)"
SHORT = (f"on {DEVICE} this budget buys about 3 epochs (1 of warm-up), 40 KD steps per epoch, and KD updates per "
         "student: a 80, b 80; below the 1000 updates per student the defaults need: give at least 4 min on this device")
FLAG = ("student 'b' agrees with the teacher on only 31% of held-out synthetic images; too few KD updates (80, the "
        "defaults need 1000): give a larger budget")
MISSING = "4 of 10 classes never reached the pool (by the teacher's argmax): 1, 4, 6, 9; the students have not learnt them"


def _job(**over) -> dict:
    job = {
        "id": "job_1", "status": "succeeded", "teacher_id": "tch_1", "preset": "balanced", "budget": {"seconds": 20.0},
        "seed": 0, "progress": 1.0, "epoch": 3, "attempts": 1, "error": None,
        "advice": {"basis": "run", "source": f"measured at the start of this run on {DEVICE}", "device": DEVICE,
                   "measured_at": "2026-12-09T10:00:00+00:00", "message": SHORT, "below_floor": True, "epochs": 3,
                   "warmup_epochs": 1, "kd_steps_per_epoch": 40, "kd_updates": {"a": 80, "b": 80},
                   "min_kd_updates": 1000, "synthesis_share": 0.1, "warmup_share": 0.05, "min_budget_s": 231.5},
        "warnings": [SHORT, FLAG, MISSING],
        "students": [
            {"name": "a", "architecture": "resnet8", "status": "succeeded", "metrics": {"teacher_agreement": 0.7},
             "flag": None},
            {"name": "b", "architecture": "resnet8", "status": "succeeded",
             "metrics": {"teacher_agreement": 0.31, "flag": FLAG, "kd_updates": 80}, "flag": FLAG},
        ],
    }
    job.update(over)
    return job


def test_the_job_model_exposes_advice_warnings_and_flags() -> None:
    job = Job.from_dict(_job())
    assert isinstance(job.advice, Advice) and job.advice.measured and job.advice.below_floor
    assert job.advice.message == SHORT and job.advice.device == DEVICE and job.advice.kd_updates == {"a": 80, "b": 80}
    assert job.advice.min_budget_s == 231.5 and job.advice.synthesis_share == 0.1  # unknown fields read as attributes
    assert job.advice.measured_at == datetime(2026, 12, 9, 10, tzinfo=timezone.utc)
    assert job.warnings == [SHORT, FLAG, MISSING]
    assert job.flags == {"b": FLAG} and job.student("b").flagged and not job.student("a").flagged
    unmeasured = Job.from_dict(_job(advice={"basis": "unmeasured", "message": "not yet measured", "source": None,
                                            "missing": ["kd wrn_16_1"], "below_floor": False}))
    assert not unmeasured.advice.measured and unmeasured.advice.missing == ["kd wrn_16_1"]
    older = Job.from_dict({"id": "job_2", "status": "queued"})  # a server without these fields
    assert older.advice is None and older.warnings == [] and older.flags == {} and older.students == []


def test_the_remote_commands_show_the_advice_once_and_each_flag_as_a_flag() -> None:
    job = _job()
    assert advice_line(job) == f"advice (measured at the start of this run on {DEVICE}): {SHORT}"
    assert advice_line(_job(advice=None)) is None
    assert flag_lines(job) == [f"flagged: {FLAG}"]
    assert warning_lines(job) == [f"warning: {SHORT}", f"warning: {MISSING}"]  # the flag is told as a flag
    assert warning_lines(job, shown=[SHORT]) == [f"warning: {MISSING}"]
    summary = job_summary(job).splitlines()
    assert [line for line in summary if line.lstrip().startswith("b ")][0].endswith("FLAGGED")
    assert summary[-3:] == [f"warning: {SHORT}", f"warning: {MISSING}", f"flagged: {FLAG}"]
    assert advice_line(job) in summary
