"""``dfmscd teachers|jobs|students`` against the real service (the live uvicorn and the real Celery
worker of conftest.py), run in-process through ``dfmscd.cli.main`` with the environment a user
would set, plus one subprocess run of ``python -m dfmscd``.

One job runs on the worker (``waited``: ``jobs create --wait --download``); the cancel test's
job is cancelled at once, so the shared worker is never left busy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_kit import CARD, TINY_HYPERPARAMETERS, write_evaluation_archive

from dfmscd.cli import main

ROOT = Path(__file__).resolve().parents[2]
NO_JOB = "job_" + "0" * 28
SETS = [a for k, v in TINY_HYPERPARAMETERS.items() for a in ("--set", f"{k}={v}")]


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]

    def json(self) -> object:
        return json.loads(self.out)


def cli(env: dict[str, str | None], *argv: object) -> Run:
    """``dfmscd ARGV`` in this process with ``env`` set (None: unset), its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for k, v in env.items():
            if v is None:
                mp.delenv(k, raising=False)
            else:
                mp.setenv(k, v)
        code = main([str(a) for a in argv])
    return Run(code, out.getvalue(), err.getvalue())


def assert_one_line_error(run: Run, *fragments: str) -> None:
    assert run.code == 2, (run.out, run.err)
    lines = run.err.strip().splitlines()
    # 'dfmscd: error: ...', or for a usage error argparse's 'dfmscd jobs create: error: ...'
    assert len(lines) == 1 and re.match(r"dfmscd( [a-z ]+)?: error: ", lines[0]), run.err
    assert "Traceback" not in run.err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def env(api_url: str, api_key: str) -> dict[str, str | None]:
    return {"DFMSCD_API_URL": api_url, "DFMSCD_API_KEY": api_key}


@pytest.fixture(scope="module")
def card_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("card") / "teacher.json"
    path.write_text(json.dumps(CARD))
    return path


@pytest.fixture(scope="module")
def teacher_id(env, teacher_file: Path, card_file: Path) -> str:
    run = cli(env, "teachers", "upload", teacher_file, "--card", card_file)
    assert run.code == 0, run.err
    return run.last_line


@dataclass
class Waited:
    run: Run
    job_id: str
    folder: Path


@pytest.fixture(scope="module")
def eval_set(env, tmp_path_factory) -> str:
    """A class-folder archive uploaded by 'evalsets upload' (checked against the card at job creation)."""
    run = cli(env, "evalsets", "upload", write_evaluation_archive(tmp_path_factory.mktemp("set") / "test.tar.gz", n=24))
    assert run.code == 0, run.err
    assert run.last_line.startswith("evs_") and run.out.strip() == run.last_line and "24 images" in run.err
    return run.last_line


@pytest.fixture(scope="module")
def waited(env, teacher_file, card_file, eval_set, celery_worker, tmp_path_factory) -> Waited:
    """The one job the worker runs: uploaded, created (evaluated on ``eval_set`` at its end), followed to
    its end and downloaded by one command."""
    folder = tmp_path_factory.mktemp("students") / "out"
    run = cli(env, "jobs", "create", "--teacher-file", teacher_file, "--card", card_file,
              "--student", "resnet8", "--student", "small=resnet8", "--preset", "fast", "--budget", "1e",
              "--seed", "3", *SETS, "--eval-set", eval_set, "--wait", "--download", folder)
    assert run.code == 0, (run.err, celery_worker.log())
    return Waited(run, run.last_line, folder)


# --------------------------------------------------------------------------- teachers
def test_upload_prints_the_id_alone_on_its_last_line_then_get_list_delete(env, teacher_file, card_file) -> None:
    run = cli(env, "teachers", "upload", teacher_file, "--card", card_file)
    assert run.code == 0 and run.last_line.startswith("tch_") and run.last_line.split() == [run.last_line]
    tid = run.last_line
    sha = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    got = cli(env, "teachers", "get", tid, "--json")
    assert got.code == 0 and got.json()["id"] == tid and got.json()["sha256"] == sha
    assert got.json()["card"]["architecture"] == "resnet8"
    assert sha in cli(env, "teachers", "get", tid).out
    listed = cli(env, "teachers", "list", "--json")
    assert listed.code == 0 and tid in [t["id"] for t in listed.json()]
    table = cli(env, "teachers", "list").out.splitlines()
    assert table[0].split()[:2] == ["id", "architecture"] and any(line.startswith(tid) for line in table)
    assert cli(env, "teachers", "delete", tid).out.strip() == f"deleted {tid}"
    assert_one_line_error(cli(env, "teachers", "get", tid), "404 not_found", tid)


def test_upload_json_is_the_service_answer(env, teacher_file, card_file) -> None:
    run = cli(env, "teachers", "upload", teacher_file, "--card", card_file, "--json")
    body = run.json()
    assert run.code == 0 and body["id"].startswith("tch_") and body["size_bytes"] == teacher_file.stat().st_size
    assert cli(env, "teachers", "delete", body["id"]).code == 0


def test_an_invalid_card_is_one_line(env, teacher_file, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**CARD, "num_classes": "ten"}))
    assert_one_line_error(cli(env, "teachers", "upload", teacher_file, "--card", bad), "invalid_card", "num_classes")


# --------------------------------------------------------------------------- the worker's job
def test_create_wait_download_prints_the_id_last_and_writes_every_student(waited: Waited) -> None:
    from dfmscd.io import load_model

    assert waited.job_id.startswith("job_") and waited.run.out.strip() == waited.job_id  # stdout: the id alone
    err = waited.run.err
    assert "loss resnet8=" in err and "small=" in err and "pool balance" in err  # progress went to stderr
    assert f"job {waited.job_id} succeeded" in err
    assert sorted(p.name for p in waited.folder.iterdir()) == ["resnet8.safetensors", "small.safetensors"]
    _module, card = load_model(waited.folder / "small.safetensors")
    assert card.input_shape == (1, 8, 8) and card.architecture == "resnet8"


def test_watch_a_finished_job_replays_it_and_exits_0(env, waited: Waited) -> None:
    run = cli(env, "jobs", "watch", waited.job_id)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    metrics = [line for line in lines if " loss " in line]
    assert metrics and "resnet8=" in metrics[-1] and "small=" in metrics[-1] and "pool balance" in metrics[-1]
    assert any("%" in line for line in lines if line.startswith("epoch"))  # a progress line
    assert lines[-1] == "job succeeded" and f"job {waited.job_id} succeeded" in run.err
    events = [json.loads(line) for line in cli(env, "jobs", "watch", waited.job_id, "--json").out.splitlines()]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    (last_metrics,) = [e for e in events if e["kind"] == "metrics"][-1:]
    assert set(last_metrics["data"]["student_loss"]) == {"resnet8", "small"}


def test_watch_ends_with_the_jobs_warnings_and_flagged_students_on_stderr(env, waited: Waited) -> None:
    job = cli(env, "jobs", "get", waited.job_id, "--json").json()
    run = cli(env, "jobs", "watch", waited.job_id)
    assert run.code == 0, run.err
    for student in job["students"]:  # flagged when its agreement with the teacher is below 0.5
        assert (f"dfmscd: flagged: {student['flag']}" in run.err.splitlines()) == bool(student["flag"])
    assert all(w in run.err for w in job["warnings"]) and not any(w in run.out for w in job["warnings"])
    assert run.out.splitlines()[-1] == "job succeeded"


def test_create_tells_a_seconds_budgets_advice_on_stderr_and_prints_the_id_alone(env, teacher_id: str,
                                                                                   celery_worker) -> None:
    # wrn_16_2: an architecture no job of this session has measured, so the advice says so.
    made = cli(env, "jobs", "create", "--teacher", teacher_id, "--student", "wrn_16_2", "--preset", "balanced",
               "--budget", "20s", "--set", "device=cpu")
    assert made.code == 0, made.err
    try:
        assert made.out.strip() == made.last_line and made.last_line.startswith("job_")
        [line] = [line for line in made.err.splitlines() if line.startswith("dfmscd: advice")]
        assert line.startswith("dfmscd: advice: ") and "not yet measured for these architectures" in line
        assert "wrn_16_2" in line
        shown = cli(env, "jobs", "get", made.last_line)
        assert line.removeprefix("dfmscd: ") in shown.out.splitlines()
    finally:
        cli(env, "jobs", "cancel", made.last_line)  # never leave the shared worker busy


def test_get_and_list_jobs(env, waited: Waited, teacher_id: str) -> None:
    job = cli(env, "jobs", "get", waited.job_id, "--json").json()
    assert job["status"] == "succeeded" and job["budget"] == {"epochs": 1} and job["seed"] == 3
    assert [(s["name"], s["architecture"]) for s in job["students"]] == [("resnet8", "resnet8"), ("small", "resnet8")]
    assert job["config"]["kd_steps"] == TINY_HYPERPARAMETERS["kd_steps"]  # --set reached the service
    text = cli(env, "jobs", "get", waited.job_id).out
    assert "succeeded" in text and "small" in text and "loss " in text
    listed = cli(env, "jobs", "list", "--json", "--status", "succeeded")
    assert listed.code == 0 and waited.job_id in [j["id"] for j in listed.json()]
    assert all(j["status"] == "succeeded" for j in listed.json())
    assert len(cli(env, "jobs", "list", "--json", "--limit", "1").json()) == 1
    assert any(line.startswith(waited.job_id) for line in cli(env, "jobs", "list").out.splitlines())


def test_students_download_onnx_and_into_a_folder(env, waited: Waited, tmp_path: Path) -> None:
    import onnx

    run = cli(env, "students", "download", waited.job_id, "small", "--format", "onnx", "-o", tmp_path)
    assert run.code == 0, run.err
    assert run.last_line == str(tmp_path / "small.onnx")
    model = onnx.load(str(tmp_path / "small.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["mean"]) == CARD["mean"] and props["architecture"] == "resnet8"
    named = cli(env, "students", "download", waited.job_id, "resnet8", "-o", tmp_path / "r.safetensors")
    assert named.code == 0 and (tmp_path / "r.safetensors").read_bytes() == (waited.folder / "resnet8.safetensors").read_bytes()
    into = cli(env, "students", "download", waited.job_id, "small", "-o", f"{tmp_path}/new/")  # a folder made for it
    assert into.code == 0 and into.last_line == str(tmp_path / "new" / "small.safetensors")
    assert_one_line_error(cli(env, "students", "download", waited.job_id, "nobody", "-o", tmp_path), "404")
    assert not (tmp_path / "nobody.safetensors").exists()


def test_students_download_int8_and_report(env, waited: Waited, tmp_path: Path) -> None:
    import onnxruntime as ort

    run = cli(env, "students", "download", waited.job_id, "small", "--format", "onnx-int8", "-o", tmp_path)
    assert run.code == 0, run.err
    assert run.last_line == str(tmp_path / "small.int8.onnx") and run.out.strip() == run.last_line
    session = ort.InferenceSession(run.last_line, providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": __import__("numpy").zeros((1, 1, 8, 8), "float32")})[0].shape == (1, 10)
    report = cli(env, "students", "report", waited.job_id, "small", "--json")
    assert report.code == 0, report.err
    body = report.json()
    assert body["student"] == "small" and set(body["report"]["formats"]) == {"safetensors", "onnx", "torchscript",
                                                                              "onnx-int8"}
    flagged = [f["format"] for f in body["files"] if f["status"] == "flagged"]
    assert ("flagged" in run.err) == bool(flagged)
    text = cli(env, "students", "report", waited.job_id, "small").out
    lines = text.splitlines()
    assert lines[0].startswith("student   small (resnet8)") and "FLOPs at batch 1" in lines[0]
    assert lines[1].startswith("cpu       ") and "thread(s)" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.startswith("format"))
    assert lines[header].split()[:2] == ["format", "size"] and "latency b64" in lines[header]
    rows = {line.split()[0]: line for line in lines[header + 1:header + 5]}
    assert set(rows) == {"safetensors", "onnx", "torchscript", "onnx-int8"}
    assert all(" ms" in row for row in rows.values())
    assert ("FLAGGED" in rows["onnx-int8"]) == ("onnx-int8" in flagged)
    assert any(line.startswith("accuracy on test.tar.gz (n=24): pytorch ") for line in lines)  # the job-end evaluation


def test_evaluate_a_job_on_request_and_list_its_evaluations(env, waited: Waited, eval_set: str) -> None:
    run = cli(env, "jobs", "evaluate", waited.job_id, "--set", eval_set, "--wait")
    assert run.code == 0, run.err
    assert run.last_line.startswith("evl_") and run.out.strip() == run.last_line  # stdout: the id alone
    assert "accuracy on test.tar.gz (n=24)" in run.err and "teacher" in run.err
    listed = cli(env, "jobs", "evaluations", waited.job_id, "--json").json()
    assert [e["source"] for e in listed] == ["request", "job_end"] and {e["status"] for e in listed} == {"succeeded"}
    assert listed[0]["id"] == run.last_line
    assert listed[0]["results"]["students"] == listed[1]["results"]["students"]
    table = cli(env, "jobs", "evaluations", waited.job_id).out.splitlines()
    assert table[0].split() == ["id", "set", "source", "status", "images", "teacher"]
    assert any(line.startswith(run.last_line) for line in table)
    got = cli(env, "evalsets", "get", eval_set, "--json").json()
    assert got["id"] == eval_set and got["summary"]["images"] == 24 and got["file_format"] == "tar.gz"
    assert eval_set in cli(env, "evalsets", "list").out
    assert_one_line_error(cli(env, "jobs", "evaluate", waited.job_id, "--set", "evs_" + "0" * 28), "404 not_found")


def test_cancelling_a_finished_job_is_one_line(env, waited: Waited) -> None:
    assert_one_line_error(cli(env, "jobs", "cancel", waited.job_id), "409 job_finished")


# --------------------------------------------------------------------------- cancel
def test_create_json_cancel_then_watch_exits_1(env, teacher_id: str, celery_worker) -> None:
    made = cli(env, "jobs", "create", "--teacher", teacher_id, "--student", "resnet8", "--preset", "fast",
               "--budget", "10000e", *SETS, "--json")
    assert made.code == 0, made.err
    job = made.json()
    try:
        assert job["id"].startswith("job_") and job["budget"] == {"epochs": 10000}
    finally:
        cancelled = cli(env, "jobs", "cancel", job["id"], "--json")  # never leave the shared worker busy
    assert cancelled.code == 0 and cancelled.json()["status"] in ("cancelled", "cancelling")
    watched = cli(env, "jobs", "watch", job["id"])
    assert watched.code == 1 and f"job {job['id']} cancelled" in watched.err
    assert cli(env, "jobs", "get", job["id"], "--json").json()["status"] == "cancelled"
    assert cli(env, "jobs", "delete", job["id"]).out.strip() == f"deleted {job['id']}"
    assert_one_line_error(cli(env, "jobs", "get", job["id"]), "404 not_found")


# --------------------------------------------------------------------------- errors
def test_service_errors_are_one_line_with_exit_2(env, teacher_id: str, teacher_file: Path) -> None:
    assert_one_line_error(cli(env, "jobs", "get", NO_JOB), "404 not_found", NO_JOB)
    assert_one_line_error(cli(env, "jobs", "watch", NO_JOB), "404")
    assert_one_line_error(cli(env, "jobs", "create", "--teacher", teacher_id, "--student", "resnet9000"),
                          "unknown_architecture", "resnet9000")
    assert_one_line_error(cli({**env, "DFMSCD_API_KEY": "dfk_not_a_key"}, "jobs", "list"), "401", "DFMSCD_API_KEY")
    assert_one_line_error(cli(env, "jobs", "create", "--teacher-file", teacher_file, "--student", "resnet8"),
                          "--teacher-file needs --card")


def test_bad_input_is_refused_before_any_request(env, teacher_id: str) -> None:
    assert_one_line_error(cli({"DFMSCD_API_KEY": None, "DFMSCD_API_URL": env["DFMSCD_API_URL"]}, "jobs", "list"),
                          "no API key", "DFMSCD_API_KEY", "--api-key")
    assert_one_line_error(cli(env, "jobs", "create", "--teacher", teacher_id, "--student", "resnet8", "--budget", "300"),
                          "invalid budget '300'")
    assert_one_line_error(cli(env, "jobs", "create", "--teacher", teacher_id, "--student", "=resnet8"), "--student")
    assert_one_line_error(cli(env, "jobs", "create", "--student", "resnet8"), "--teacher")


def test_api_options_override_the_environment(env) -> None:
    run = cli({"DFMSCD_API_URL": "http://127.0.0.1:9", "DFMSCD_API_KEY": None}, "jobs", "list", "--json",
              "--api-url", env["DFMSCD_API_URL"], "--api-key", env["DFMSCD_API_KEY"])
    assert run.code == 0 and isinstance(run.json(), list)


def test_python_m_dfmscd_teachers_list(env, teacher_id: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dfmscd", "teachers", "list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith(teacher_id) for line in proc.stdout.splitlines())


def test_an_unreachable_service_is_one_line_naming_the_url(env) -> None:
    # A port nobody listens on: bound to learn a free number, then closed before the command runs.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    run = cli({"DFMSCD_API_URL": url, "DFMSCD_API_KEY": env["DFMSCD_API_KEY"]}, "jobs", "list")
    assert_one_line_error(run, "cannot reach the service at", url)
