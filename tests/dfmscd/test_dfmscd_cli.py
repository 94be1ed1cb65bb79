"""The ``dfmscd`` command line, end to end on a tiny real teacher written to disk.

In-process ``main(argv)`` for most cases (fast), real subprocesses where the process boundary is
the point: exit codes seen by a shell, no traceback on stderr, and Ctrl-C (SIGINT) handling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfmscd.cli import main, parse_set_option, parse_student_option
from dfmscd.errors import ConfigError
from dfmscd.io import load_model, parse_card, save_model
from dfmscd.models import count_parameters, create_model

ROOT = Path(__file__).resolve().parents[2]
# Tiny synthesis/KD settings so that an epoch takes a fraction of a second on a shared CPU.
TINY = ["--set", "synth_batch_size=16", "--set", "kd_steps=2", "--set", "kd_batch_size=16", "--set", "latent_dim=8",
        "--set", "generator_width=8", "--set", "pool_capacity=256"]


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory) -> dict[str, Path]:
    """A resnet8 teacher for 1x8x8 inputs, 10 classes, saved like a user's would be."""
    folder = tmp_path_factory.mktemp("teacher")
    card = parse_card({"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8],
                       "mean": [0.3], "std": [0.37], "class_names": [f"c{i}" for i in range(10)]})
    torch.manual_seed(0)
    teacher = create_model("resnet8", 10, in_channels=1, image_size=8)
    with torch.no_grad():  # give BN non-trivial running statistics, as a trained net has
        teacher.train()
        for _ in range(3):
            teacher(torch.randn(64, 1, 8, 8) * 0.8 + 0.1)
    teacher.eval()
    save_model(teacher, card, folder / "teacher.safetensors")
    (folder / "teacher.json").write_text(card.to_json())
    return {"weights": folder / "teacher.safetensors", "card": folder / "teacher.json", "dir": folder}


def _distill_args(files: dict[str, Path], out: Path, budget: str, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(files["weights"]), "--card", str(files["card"]), "--student", "resnet8",
            "--student", "peer=resnet8", "--preset", "fast", "--budget", budget, "--out", str(out), *TINY, *extra]


def _subprocess(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "dfmscd", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("dfmscd")
    return lines[0]


# --- option parsing ----------------------------------------------------------------------------

def test_set_values_are_read_as_json_when_they_parse():
    assert parse_set_option("lr_s=0.1") == ("lr_s", 0.1)
    assert parse_set_option("label_bridging=false") == ("label_bridging", False)
    assert parse_set_option("num_generators=null") == ("num_generators", None)
    assert parse_set_option("meta_algorithm=fomaml") == ("meta_algorithm", "fomaml")
    with pytest.raises(ConfigError):
        parse_set_option("lr_s")


def test_student_option_takes_an_optional_name():
    assert parse_student_option("vgg8") == (None, "vgg8")
    assert parse_student_option("small=tv/resnet18") == ("small", "tv/resnet18")
    with pytest.raises(ConfigError):
        parse_student_option("=vgg8")


# --- architectures -----------------------------------------------------------------------------

def test_architectures_lists_the_zoo_with_parameter_counts(capsys):
    assert main(["architectures"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if not line.startswith("...")}
    for name in ("resnet8", "resnet20", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv2"):
        assert name in rows
    expected = count_parameters(create_model("wrn_16_1", 10, in_channels=3, image_size=32))
    assert rows["wrn_16_1"] == f"{expected:,}"
    assert "tv/<name>" in out and "tv/resnet18" not in out


def test_architectures_all_json_includes_torchvision_names(capsys):
    assert main(["architectures", "--all", "--json", "--num-classes", "4", "--in-channels", "1", "--image-size", "8"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tv/resnet18"]["source"] == "torchvision" and rows["tv/resnet18"]["parameters"] is None
    assert rows["resnet8"]["parameters"] == count_parameters(create_model("resnet8", 4, in_channels=1, image_size=8))


# --- distill -----------------------------------------------------------------------------------

def test_distill_writes_students_report_and_samples(teacher_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_distill_args(teacher_files, out, "2e", "--seed", "3", "--export", "onnx")) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    assert report["config"]["kd_steps"] == 2 and report["config"]["seed"] == 3  # --set and --seed applied
    assert report["budget"] == {"epochs": 2} and report["epochs_completed"] == 2
    assert set(report["students"]) == {"resnet8", "peer"}
    assert len(report["pool"]["teacher_argmax_histogram"]) == 10
    assert report["files"]["students"] == {"resnet8": "resnet8.safetensors", "peer": "peer.safetensors"}

    teacher_card = parse_card(teacher_files["card"].read_text())
    for name in ("resnet8", "peer"):
        module, card = load_model(out / f"{name}.safetensors")
        assert card.architecture == "resnet8" and card.input_shape == teacher_card.input_shape
        assert card.mean == teacher_card.mean and card.class_names == teacher_card.class_names
        assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        assert (out / f"{name}.onnx").stat().st_size > 0
    assert not (out / "resnet8.torchscript.pt").exists()  # only what was asked for

    with Image.open(out / "samples.png") as png:  # rows = the 10 classes, 8 columns of >= 32 px
        assert png.height == 10 * (32 + 2) + 2
        assert png.width > 8 * (32 + 2)
    assert (out / "checkpoint.pt").exists()
    assert "status: completed" in capsys.readouterr().out


def test_a_seconds_budget_tells_what_it_buys_and_ends_with_the_reports_warnings(teacher_files, tmp_path, capsys):
    out = tmp_path / "run"
    # A floor no 3 s run reaches: the budget's advice is a warning, whatever the machine.
    assert main(_distill_args(teacher_files, out, "3s", "--set", "min_kd_updates=1000000")) == 0
    report = json.loads((out / "report.json").read_text())
    err = capsys.readouterr().err.splitlines()
    message = report["sizing"]["message"]
    assert message.startswith("on cpu") and err.count(f"dfmscd: {message}") == 1  # as it was measured, once
    warnings = [f"dfmscd: warning: {w}" for w in report["warnings"]]
    assert message in report["warnings"] and err[-len(warnings):] == warnings  # the report's warnings come last


def test_the_sizing_message_shows_once_whether_or_not_it_was_logged(capsys):
    from dfmscd.cli.distill import ProgressPrinter
    from dfmscd.engine import Event

    printer = ProgressPrinter(interactive=False)
    printer(Event("log", 0, 0.0, {"message": "on cpu this budget buys about 3 epochs"}))
    printer(Event("sizing", 0, 0.0, {"message": "on cpu this budget buys about 3 epochs", "measured_ms": {}}))
    printer(Event("sizing", 0, 0.0, {"message": "on cpu this budget buys about 9 epochs", "measured_ms": {}}))
    assert capsys.readouterr().err.splitlines() == ["dfmscd: on cpu this budget buys about 3 epochs",
                                                    "dfmscd: on cpu this budget buys about 9 epochs"]


def test_ctrl_c_saves_partial_students_and_resume_finishes_the_run(teacher_files, tmp_path):
    out = tmp_path / "run"
    args = _distill_args(teacher_files, out, "8e", "--set", "checkpoint_every=1")
    proc = _subprocess(args)
    deadline = time.monotonic() + 240
    seen = []
    for line in proc.stderr:  # wait until a checkpoint exists, then press Ctrl-C
        seen.append(line)
        if "checkpoint saved" in line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(seen)
    rest_out, rest_err = proc.communicate(timeout=240)
    stderr = "".join(seen) + rest_err
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "cancelling" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "cancelled"
    assert 1 <= report["epochs_completed"] < 8
    load_model(out / "resnet8.safetensors")
    load_model(out / "peer.safetensors")

    assert main([*args, "--resume"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and report["epochs_completed"] == 8
    assert report["resumed_from_epoch"] is not None and report["resumed_from_epoch"] >= 1


# --- errors: one line, exit code 2, no traceback -----------------------------------------------

def test_missing_teacher_file_exits_2_in_a_real_process(teacher_files, tmp_path):
    proc = _subprocess(["distill", "--teacher", str(tmp_path / "nope.safetensors"), "--card", str(teacher_files["card"]),
                        "--student", "resnet8", "--out", str(tmp_path / "o")])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "nope.safetensors: no such file" in _one_error_line(err)


def test_card_with_an_unknown_key_exits_2(teacher_files, tmp_path, capsys):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8],
                                "mean": [0.3], "std": [0.37], "colour": "blue"}))
    assert main(["distill", "--teacher", str(teacher_files["weights"]), "--card", str(card),
                 "--student", "resnet8", "--out", str(tmp_path / "o")]) == 2
    assert "colour" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--budget", "soon"], "invalid budget"),
        (["--set", "lr_s=-1"], "lr_s"),
        (["--set", "no_such_knob=1"], "no_such_knob"),
        (["--student", "nosuchnet"], "nosuchnet"),
        (["--student", "bad name=resnet8"], "invalid student name"),
        (["--student", "resnet8"], "used twice"),
        (["--preset", "turbo"], "turbo"),
        (["--export", "pickle"], "pickle"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_distill_arguments_exit_2_with_one_line(teacher_files, tmp_path, capsys, extra, needle):
    args = ["distill", "--teacher", str(teacher_files["weights"]), "--card", str(teacher_files["card"]),
            "--student", "resnet8", "--out", str(tmp_path / "o"), "--budget", "1e", *extra]
    assert main(args) == 2
    assert needle in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o" / "report.json").exists()


def test_teacher_weights_not_matching_the_card_exit_2(teacher_files, tmp_path, capsys):
    card = tmp_path / "card.json"
    card.write_text(parse_card({"architecture": "wrn_16_1", "num_classes": 10, "input_shape": [1, 8, 8],
                                "mean": [0.3], "std": [0.37]}).to_json())
    assert main(["distill", "--teacher", str(teacher_files["weights"]), "--card", str(card), "--student", "resnet8",
                 "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys.readouterr().err)


def test_pickle_payload_as_teacher_is_refused_with_exit_2(teacher_files, tmp_path, capsys):
    evil = tmp_path / "teacher.pt"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    evil.write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    assert main(["distill", "--teacher", str(evil), "--card", str(teacher_files["card"]), "--student", "resnet8",
                 "--out", str(tmp_path / "o")]) == 2
    _one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_unknown_command_and_missing_arguments_exit_2(capsys):
    assert main(["transmogrify"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert main(["distill"]) == 2
    assert "required" in _one_error_line(capsys.readouterr().err)
    assert main(["--help"]) == 0


# --- evaluate ----------------------------------------------------------------------------------

def _teacher_labelled_npz(teacher_files, path: Path, shift: int = 0) -> int:
    """Random images labelled with the teacher's own predictions (+shift): accuracy 1.0 (or 0.0)."""
    module, card = load_model(teacher_files["weights"])
    x = np.random.default_rng(0).integers(0, 256, size=(50, 1, 8, 8), dtype=np.uint8)
    normalised = (torch.from_numpy(x).float() / 255.0 - card.mean[0]) / card.std[0]
    with torch.no_grad():
        y = (module(normalised).argmax(1).numpy() + shift) % card.num_classes
    np.savez(path, x=x, y=y)
    return len(y)


def test_evaluate_prints_accuracy_and_json(teacher_files, tmp_path, capsys):
    data = tmp_path / "own.npz"
    n = _teacher_labelled_npz(teacher_files, data)
    assert main(["evaluate", str(teacher_files["weights"]), str(data)]) == 0
    assert capsys.readouterr().out.startswith(f"accuracy 1.0000 (100.00%) on {n} samples")

    wrong = tmp_path / "wrong.npz"
    _teacher_labelled_npz(teacher_files, wrong, shift=1)
    assert main(["evaluate", str(teacher_files["weights"]), str(wrong), "--json", "--batch-size", "7"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 0.0 and result["samples"] == n and result["architecture"] == "resnet8"


def test_evaluate_bad_data_exits_2(teacher_files, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 1, 8, 8), np.uint8))  # no labels
    assert main(["evaluate", str(teacher_files["weights"]), str(bad)]) == 2
    assert "'y'" in _one_error_line(capsys.readouterr().err)
    not_a_model = tmp_path / "x.safetensors"
    not_a_model.write_bytes(b"garbage")
    assert main(["evaluate", str(not_a_model), str(bad)]) == 2
    _one_error_line(capsys.readouterr().err)


# --- progress output ---------------------------------------------------------------------------

def _events():
    from dfmscd.engine import Event

    return [
        Event("log", 0, 0.0, {"message": "distilling into 2 students"}),
        Event("progress", 0, 0.25, {"fraction": 0.25, "phase": "synthesis"}),
        Event("metrics", 1, 0.5, {"epoch": 1, "student_loss": {"a": 0.5, "b": None}, "pool_size": 64,
                                  "pool_balance": 0.75, "label_histogram": [1, 2], "lr": 0.1}),
        Event("checkpoint", 1, 0.5, {"path": "x", "epoch": 1}),
    ]


def test_plain_progress_lines_when_not_a_terminal(capsys):
    from dfmscd.cli.distill import ProgressPrinter

    printer = ProgressPrinter(interactive=False)
    for event in _events():
        printer(event)
    printer.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "dfmscd: distilling into 2 students"
    assert lines[1] == "dfmscd: epoch 1  50.0% student_loss.a=0.5 pool_size=64 pool_balance=0.75"
    assert lines[2] == "dfmscd: epoch 1 checkpoint saved"
    assert len(lines) == 3  # progress ticks only become lines after a quiet spell


def test_plain_heartbeat_during_long_epochs(capsys, monkeypatch):
    import dfmscd.cli.distill as cli_distill

    monkeypatch.setattr(cli_distill, "PLAIN_PROGRESS_EVERY_S", 0.0)
    printer = cli_distill.ProgressPrinter(interactive=False)
    printer(_events()[1])
    assert capsys.readouterr().err == "dfmscd: epoch 0  25.0% synthesis\n"


def test_progress_bar_on_a_terminal_and_quiet_mode(capsys):
    from dfmscd.cli.distill import ProgressPrinter

    printer = ProgressPrinter(interactive=True)
    for event in _events():
        printer(event)
    assert printer.bar.n == 500
    printer.close()
    err = capsys.readouterr().err
    assert "epoch 1" in err and "pool_size=64" in err and "distilling into 2 students" in err
    quiet = ProgressPrinter(interactive=True, quiet=True)
    for event in _events():
        quiet(event)
    quiet.close()
    assert capsys.readouterr().err == ""


# --- service commands --------------------------------------------------------------------------

def test_the_library_cli_imports_no_web_code():
    code = ("import sys, dfmscd.engine, dfmscd.io, dfmscd.evaluate, dfmscd.cli.distill; "
            "from dfmscd.cli import main; rc = main(['--version']); "
            "bad = [m for m in ('fastapi', 'sqlalchemy', 'celery', 'kombu', 'dfmscd_service.api', 'dfmscd_service.worker') if m in sys.modules]; "
            "print('web modules:', bad, file=sys.stderr); sys.exit(rc or (3 if bad else 0))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "web modules: []" in proc.stderr


def test_keys_create_goes_through_the_service_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DFMSCD_DATA_DIR": str(tmp_path)}
    for var in ("DFMSCD_DATABASE_URL", "DFMSCD_BROKER_URL"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "dfmscd", "keys", "create", "--name", "ci"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    secret = proc.stdout.strip().splitlines()[-1]
    assert len(secret) >= 20 and " " not in secret
    assert (tmp_path / "dfmscd.sqlite").exists()  # the key went into the service's database
    bad = subprocess.run([sys.executable, "-m", "dfmscd", "keys", "create", "--name", " "], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
