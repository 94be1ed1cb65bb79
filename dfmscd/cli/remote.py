"""``dfmscd teachers|jobs|students|evalsets``: a remote dfmscd service from the shell, through
:class:`dfmscd.client.Client` (so ``$DFMSCD_API_URL`` / ``$DFMSCD_API_KEY``, or ``--api-url`` /
``--api-key``).

Output rule: stdout carries the result (an id alone on the last line, a table, or ``--json``);
progress, warnings and file names go to stderr, so ``ID=$(dfmscd jobs create ... --wait)`` works.
Exit codes: 0 done; 1 the job that was waited for or watched ended failed or cancelled; 2 bad
input or an error answer of the service (one line ``dfmscd: error: ...``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from dfmscd.cli.options import (
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, PROG, Parser, existing_file, fail, parse_set_option, parse_student_option,
)
from dfmscd.cli.remote_view import (
    EVALUATION_HEADER, EVALUATION_SET_HEADER, JOB_HEADER, TEACHER_HEADER, advice_line, evaluation_lines, evaluation_row,
    evaluation_set_row, event_line, flag_lines, job_row, job_summary, student_report_summary, table, teacher_row,
    teacher_summary, warning_lines,
)
from dfmscd.errors import ConfigError
from dfmscd.formats import MODEL_FORMATS, NATIVE_FORMAT, file_name

if TYPE_CHECKING:
    from dfmscd.client import Client, Job

ENV_URL, ENV_KEY = "DFMSCD_API_URL", "DFMSCD_API_KEY"


def _note(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _budget(text: str) -> str:
    # Checked here with the client's grammar so that a typo is a usage error before any request.
    from dfmscd.client import budget_body  # deferred: httpx stays out of `dfmscd --help`

    try:
        budget_body(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _connection(args: argparse.Namespace) -> "Client":
    from dfmscd.client import Client  # deferred: httpx stays out of `dfmscd --help` and the library commands

    key = args.api_key or os.environ.get(ENV_KEY)
    if not key:
        raise ConfigError(f"no API key: set {ENV_KEY} or pass --api-key (the server prints one on first start; "
                          "or run 'dfmscd keys create --name NAME' where the service runs)")
    return Client(args.api_url or None, key)


def _remote(func: Callable[[argparse.Namespace, "Client"], int]) -> Callable[[argparse.Namespace], int]:
    """Open the client for the command and turn the client's errors into one line and exit 2."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from dfmscd.client import DfmscdAPIError, DfmscdClientError, DfmscdConnectionError  # deferred, as above

        try:
            with _connection(args) as api:
                return func(args, api)
        except DfmscdAPIError as exc:
            hint = f" (check {ENV_KEY} or --api-key)" if exc.status_code == 401 else ""
            return fail(f"{_one_line(exc.message)} ({exc.status_code} {exc.code}){hint}")
        except DfmscdConnectionError as exc:
            return fail(f"{_one_line(str(exc))} (set {ENV_URL} or --api-url)")
        except DfmscdClientError as exc:
            return fail(_one_line(str(exc)))

    return run


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> int:
    """``--json``: the data as JSON; otherwise the human-readable rendering."""
    if args.json:
        _print_json(data)
    else:
        print(text())
    return EXIT_OK


def _warn_all(obj: Any) -> None:
    for w in obj.raw.get("warnings") or []:
        _note(f"warning: {w}")


def _tell(job: "Job", shown: set[str]) -> set[str]:
    """On stderr: the budget advice, the job's warnings and its flagged students, each once
    (``shown`` holds what was already told; returned with what this call added)."""
    raw = job.raw
    advice = raw.get("advice") if isinstance(raw.get("advice"), dict) else {}
    message = advice.get("message")
    line = advice_line(raw)
    if line and message not in shown:
        _note(("warning: " if advice.get("below_floor") else "") + line)
    told = shown | ({message} if message else set())
    for w in warning_lines(raw, told):
        _note(w)
    for f in flag_lines(raw):
        if f not in told:
            _note(f)
    return told | set(raw.get("warnings") or []) | set(flag_lines(raw))


# --------------------------------------------------------------------------- parsers
def register(sub: Any) -> None:
    """Add ``teachers``, ``jobs``, ``students`` and ``evalsets`` to the ``dfmscd`` sub-parsers."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--api-url", help=f"the service (default: ${ENV_URL}, else http://127.0.0.1:8000)")
    conn.add_argument("--api-key", help=f"an API key (default: ${ENV_KEY}; the variable keeps it out of 'ps')")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output (the service's JSON)")

    def group(name: str, help: str) -> Any:
        p = sub.add_parser(name, help=help)
        g = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", parser_class=Parser)
        g.required = True
        return g

    t = group("teachers", "teachers on a dfmscd service: upload, list, get, delete")
    p = t.add_parser("upload", parents=[conn, as_json], help="upload weights with their model card; prints the id")
    p.add_argument("file", type=existing_file, help="teacher weights (.safetensors, or a weights-only .pt/.pth)")
    p.add_argument("--card", required=True, type=existing_file, help="its model card (JSON; see 'dfmscd card')")
    p.set_defaults(func=_teachers_upload)
    p = t.add_parser("list", parents=[conn, as_json], help="this key's teachers, newest first")
    p.set_defaults(func=_teachers_list)
    for name, func, what in (("get", _teachers_get, "one teacher"), ("delete", _teachers_delete, "delete a teacher")):
        p = t.add_parser(name, parents=[conn] + ([as_json] if name == "get" else []), help=what)
        p.add_argument("id", metavar="ID")
        p.set_defaults(func=func)

    j = group("jobs", "distillation jobs on a dfmscd service: create, list, get, watch, cancel")
    p = j.add_parser("create", parents=[conn, as_json], help="queue a job; prints its id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--teacher", metavar="ID", help="an uploaded teacher's id")
    which.add_argument("--teacher-file", type=existing_file, metavar="FILE", help="upload these weights first (with --card)")
    p.add_argument("--card", type=existing_file, help="the model card of --teacher-file")
    p.add_argument("--student", action="append", required=True, metavar="ARCH|NAME=ARCH", help="a student; repeat for several")
    p.add_argument("--preset", help="fast, balanced, ... (default: the service's, balanced)")
    p.add_argument("--budget", type=_budget, help="wall-clock ('300s', '5m', '2h') or epochs ('40e'); default: the preset's epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a hyperparameter, e.g. --set lr_s=0.1; repeatable")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-set", metavar="ID", help="an uploaded evaluation set: the worker evaluates the teacher and every "
                                                    "student on it when the job ends (reporting only)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end (progress on stderr); exit 1 unless it succeeded")
    p.add_argument("--download", type=Path, metavar="DIR", help="with --wait implied: then download every student (safetensors) into DIR")
    p.set_defaults(func=_jobs_create)
    p = j.add_parser("list", parents=[conn, as_json], help="this key's jobs, newest first")
    p.add_argument("--status", help="only these statuses, comma-separated (queued,running,succeeded,failed,cancelling,cancelled)")
    p.add_argument("--limit", type=int, help="at most this many")
    p.set_defaults(func=_jobs_list)
    for name, func, what, js in (("get", _jobs_get, "one job, its students and their losses", True),
                                 ("cancel", _jobs_cancel, "stop a job (queued: at once; running: at its next step)", True),
                                 ("watch", _jobs_watch, "live progress, per-student loss and pool balance until the job "
                                                        "ends; exit 0 if it succeeded, 1 if it failed or was cancelled", False)):
        p = j.add_parser(name, parents=[conn, as_json] if js else [conn], help=what)
        p.add_argument("id", metavar="ID")
        if name == "watch":
            p.add_argument("--json", action="store_true", help="each event as one line of JSON")
        p.set_defaults(func=func)
    p = j.add_parser("evaluate", parents=[conn, as_json], help="evaluate a finished job's teacher and students (every "
                                                              "stored format) on an evaluation set; prints the evaluation's id")
    p.add_argument("id", metavar="JOB")
    p.add_argument("--set", required=True, metavar="ID", help="an uploaded evaluation set ('dfmscd evalsets upload')")
    p.add_argument("--wait", action="store_true", help="wait for the worker's results (accuracies on stderr); exit 1 if it failed")
    p.set_defaults(func=_jobs_evaluate)
    p = j.add_parser("evaluations", parents=[conn, as_json], help="a job's evaluations and their accuracies")
    p.add_argument("id", metavar="JOB")
    p.set_defaults(func=_jobs_evaluations)
    p = j.add_parser("delete", parents=[conn], help="delete a finished job and everything it stored")
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=_jobs_delete)

    e = group("evalsets", "labelled images to evaluate finished jobs on (reporting only): upload, list, get, delete")
    p = e.add_parser("upload", parents=[conn, as_json], help="upload a .npz (x, y) or a class-folder archive "
                                                            "(.tar, .tar.gz, .tgz, .zip); prints the id")
    p.add_argument("file", type=existing_file, help="at most 200 MB and 100,000 images")
    p.add_argument("--teacher", metavar="ID", help="check it against this teacher's card now (shape, classes)")
    p.set_defaults(func=_evalsets_upload)
    p = e.add_parser("list", parents=[conn, as_json], help="this key's evaluation sets, newest first")
    p.set_defaults(func=_evalsets_list)
    for name, func, what in (("get", _evalsets_get, "one evaluation set"), ("delete", _evalsets_delete, "delete a set")):
        p = e.add_parser(name, parents=[conn] + ([as_json] if name == "get" else []), help=what)
        p.add_argument("id", metavar="ID")
        p.set_defaults(func=func)

    s = group("students", "a job's distilled students: download, report")
    p = s.add_parser("download", parents=[conn], help="download one student's weights; prints the file's path")
    p.add_argument("job", metavar="JOB")
    p.add_argument("name", metavar="NAME", help="the student's name (the architecture unless named with NAME=ARCH)")
    p.add_argument("-o", "--out", metavar="PATH",
                   help="a file, or a folder (existing, or ending in '/'; made if missing); default: ./NAME + the format's suffix")
    p.add_argument("--format", default=NATIVE_FORMAT, choices=sorted(MODEL_FORMATS))
    p.set_defaults(func=_students_download)
    p = s.add_parser("report", parents=[conn, as_json], help="parameters, FLOPs, and per format: size, verification, "
                                                            "teacher agreement, CPU latency at batch 1 and 64, accuracy")
    p.add_argument("job", metavar="JOB")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_students_report)


# --------------------------------------------------------------------------- teachers
@_remote
def _teachers_upload(args: argparse.Namespace, api: "Client") -> int:
    t = api.upload_teacher(args.file, args.card)
    _warn_all(t)
    if args.json:
        _print_json(t.raw)
    else:
        _note(f"uploaded {args.file} ({t.size_bytes} bytes, sha256 {t.sha256})")
        print(t.id)
    return EXIT_OK


@_remote
def _teachers_list(args: argparse.Namespace, api: "Client") -> int:
    rows = [t.raw for t in api.list_teachers()]
    return _emit(args, rows, lambda: table(TEACHER_HEADER, [teacher_row(t) for t in rows]))


@_remote
def _teachers_get(args: argparse.Namespace, api: "Client") -> int:
    t = api.get_teacher(args.id)
    return _emit(args, t.raw, lambda: teacher_summary(t.raw))


@_remote
def _teachers_delete(args: argparse.Namespace, api: "Client") -> int:
    api.delete_teacher(args.id)
    print(f"deleted {args.id}")
    return EXIT_OK


# --------------------------------------------------------------------------- jobs
def _students(options: list[str]) -> list[dict[str, Any]]:
    out = []
    for text in options:
        name, arch = parse_student_option(text)
        out.append({"architecture": arch, **({"name": name} if name else {})})
    return out


@_remote
def _jobs_create(args: argparse.Namespace, api: "Client") -> int:
    if args.teacher_file is not None and args.card is None:
        raise ConfigError("--teacher-file needs --card (the teacher's model card)")
    if args.teacher is not None and args.card is not None:
        raise ConfigError("--card goes with --teacher-file; an uploaded --teacher already has its card")
    students = _students(args.student)
    hyperparameters = dict(parse_set_option(s) for s in args.set)
    teacher_id = args.teacher
    if teacher_id is None:
        teacher = api.upload_teacher(args.teacher_file, args.card)
        _warn_all(teacher)
        _note(f"uploaded teacher {teacher.id}")
        teacher_id = teacher.id
    job = api.create_job(teacher_id, students, preset=args.preset, budget=args.budget,
                         hyperparameters=hyperparameters, seed=args.seed, evaluation_set_id=args.eval_set)
    shown = _tell(job, set())
    code = EXIT_OK
    if args.wait or args.download is not None:
        _note(f"job {job.id} queued; waiting for it (Ctrl-C stops waiting, not the job)")
        job, code = _follow(api, job.id, sys.stderr, as_json=False, shown=shown)
        if args.download is not None:
            if job.status == "succeeded":
                _download_all(api, job, args.download)
            else:
                _note(f"nothing downloaded: the job {job.status} (partial students: 'dfmscd students download')")
    if args.json:
        _print_json(job.raw)
    else:
        print(job.id)
    return code


def _download_all(api: "Client", job: "Job", folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in job.students:
        d = api.download_student(job.id, s.name, folder / file_name(s.name, NATIVE_FORMAT))
        _note(f"wrote {d.path} ({d.size_bytes} bytes, sha256 {d.sha256})")


@_remote
def _jobs_list(args: argparse.Namespace, api: "Client") -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    rows = []
    for j in api.list_jobs(status=args.status, page_size=min(args.limit, 100) if args.limit else None):
        rows.append(j.raw)
        if args.limit is not None and len(rows) >= args.limit:
            break
    return _emit(args, rows, lambda: table(JOB_HEADER, [job_row(j) for j in rows]))


@_remote
def _jobs_get(args: argparse.Namespace, api: "Client") -> int:
    job = api.get_job(args.id)
    return _emit(args, job.raw, lambda: job_summary(job.raw))


@_remote
def _jobs_cancel(args: argparse.Namespace, api: "Client") -> int:
    job = api.cancel_job(args.id)
    return _emit(args, job.raw, lambda: f"{job.id} {job.status}")


@_remote
def _jobs_delete(args: argparse.Namespace, api: "Client") -> int:
    api.delete_job(args.id)
    print(f"deleted {args.id}")
    return EXIT_OK


@_remote
def _jobs_evaluate(args: argparse.Namespace, api: "Client") -> int:
    evaluation = api.evaluate_job(args.id, args.set)
    code = EXIT_OK
    if args.wait:
        _note(f"evaluation {evaluation.id} queued; waiting for the worker")
        evaluation = api.wait_evaluation(args.id, evaluation.id)
        for line in evaluation_lines(evaluation.raw):
            _note(line)
        code = EXIT_OK if evaluation.status == "succeeded" else EXIT_FAILED
    if args.json:
        _print_json(evaluation.raw)
    else:
        print(evaluation.id)
    return code


@_remote
def _jobs_evaluations(args: argparse.Namespace, api: "Client") -> int:
    rows = [e.raw for e in api.list_evaluations(args.id)]

    def text() -> str:
        lines = [table(EVALUATION_HEADER, [evaluation_row(e) for e in rows])]
        for e in rows:
            if e.get("status") in ("succeeded", "failed"):
                lines += [f"{e.get('id')}:", *("  " + line for line in evaluation_lines(e))]
        return "\n".join(lines)

    return _emit(args, rows, text)


@_remote
def _jobs_watch(args: argparse.Namespace, api: "Client") -> int:
    _job, code = _follow(api, args.id, sys.stdout, as_json=args.json)
    return code


def _follow(api: "Client", job_id: str, out: TextIO, *, as_json: bool,
            shown: set[str] | None = None) -> "tuple[Job, int]":
    """Show the job's events (all of them so far, then live) until it ends, then on stderr its advice,
    warnings and flagged students (those not in ``shown``); (the job, exit code)."""
    try:
        for event in api.events(job_id):
            if as_json:
                out.write(json.dumps(event.raw, sort_keys=True, default=str) + "\n")
            else:
                line = event_line(event.raw)
                if line is None:
                    continue
                out.write(f"{line}\n")
            out.flush()
    except KeyboardInterrupt:
        _note(f"stopped watching; the job goes on ('dfmscd jobs cancel {job_id}' stops it)")
        raise SystemExit(EXIT_INTERRUPTED) from None
    job = api.get_job(job_id)
    _tell(job, shown or set())
    if job.status == "succeeded":
        _note(f"job {job.id} succeeded")
        return job, EXIT_OK
    why = f": {job.error.code}: {_one_line(job.error.message or '')}" if job.error is not None and job.error.code else ""
    _note(f"job {job.id} {job.status}{why}")
    return job, EXIT_FAILED


# --------------------------------------------------------------------------- students
@_remote
def _students_download(args: argparse.Namespace, api: "Client") -> int:
    default = file_name(args.name, args.format)
    target = Path(args.out) if args.out is not None else Path(default)
    if args.out is not None and (target.is_dir() or args.out.endswith(("/", os.sep))):
        target.mkdir(parents=True, exist_ok=True)
        target = target / default
    d = api.download_student(args.job, args.name, target, format=args.format)
    _note(f"wrote {d.size_bytes} bytes, sha256 {d.sha256}")
    for f in api.get_student(args.job, args.name).raw.get("files") or []:
        if f.get("format") == args.format and f.get("status") == "flagged":
            _note(f"warning: this {args.format} file is flagged: {(f.get('verification') or {}).get('top1_agreement')} "
                  f"top-1 agreement with the PyTorch student, below {(f.get('verification') or {}).get('min_agreement')} "
                  f"('dfmscd students report {args.job} {args.name}')")
    print(d.path)
    return EXIT_OK


@_remote
def _students_report(args: argparse.Namespace, api: "Client") -> int:
    r = api.student_report(args.job, args.name)
    return _emit(args, r.raw, lambda: student_report_summary(r.raw))


# --------------------------------------------------------------------------- evaluation sets
@_remote
def _evalsets_upload(args: argparse.Namespace, api: "Client") -> int:
    e = api.upload_evaluation_set(args.file, teacher_id=args.teacher)
    if args.json:
        _print_json(e.raw)
    else:
        _note(f"uploaded {args.file} ({e.size_bytes} bytes, {e.summary.get('images')} images, sha256 {e.sha256})")
        print(e.id)
    return EXIT_OK


@_remote
def _evalsets_list(args: argparse.Namespace, api: "Client") -> int:
    rows = [e.raw for e in api.list_evaluation_sets()]
    return _emit(args, rows, lambda: table(EVALUATION_SET_HEADER, [evaluation_set_row(e) for e in rows]))


@_remote
def _evalsets_get(args: argparse.Namespace, api: "Client") -> int:
    e = api.get_evaluation_set(args.id)
    return _emit(args, e.raw, lambda: table(EVALUATION_SET_HEADER, [evaluation_set_row(e.raw)]))


@_remote
def _evalsets_delete(args: argparse.Namespace, api: "Client") -> int:
    api.delete_evaluation_set(args.id)
    print(f"deleted {args.id}")
    return EXIT_OK


__all__ = ["register"]
