"""``dfmscd distill --export ...``: every requested format written and verified, INT8 calibrated
on the run's calibration sample and verified on its held-out images, and student_report.json.

The options are parsed by the real parser; the files are written by the CLI's own
``write_outputs`` from a finished run's result (a real DistillResult with a trained student, its
calibration sample and held-out images), so the test does not pay for a distillation: the
end-to-end ``distill --export onnx`` run is in test_dfmscd_cli.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import torch

import deploy_kit as kit
from dfmscd.cli import build_parser
from dfmscd.cli.distill import write_outputs
from dfmscd.engine import DistillResult
from dfmscd.formats import MODEL_FORMATS


def test_distill_writes_verified_int8_and_the_student_report(one_thread, tmp_path, capsys):
    card = kit.card()
    for name in ("t.safetensors", "t.json"):
        (tmp_path / name).write_text("")
    args = build_parser().parse_args(["distill", "--teacher", str(tmp_path / "t.safetensors"),
                                      "--card", str(tmp_path / "t.json"), "--student", "resnet8",
                                      "--out", str(tmp_path), "--export", "onnx,onnx-int8,torchscript",
                                      "--latency-repeats", "1"])
    assert args.export == ["onnx", "onnx-int8", "torchscript"] and args.latency_repeats == 1
    calibration, _ = kit.pixels(96, seed=1)
    holdout, _ = kit.pixels(64, seed=2)
    result = DistillResult(status="completed", students={"resnet8": kit.student()}, cards={"resnet8": card},
                           report={"students": {"resnet8": {}}}, samples=torch.from_numpy(holdout[:8]),
                           sample_labels=torch.arange(8) % 4, calibration=torch.from_numpy(calibration),
                           holdout=torch.from_numpy(holdout))
    out = tmp_path / "run"
    out.mkdir()
    write_outputs(result, out, card, args.export, {"cli": {}}, teacher=kit.student(), latency_repeats=args.latency_repeats)

    report = json.loads((out / "report.json").read_text())
    assert report["files"]["exports"]["resnet8"] == {"onnx": "resnet8.onnx", "onnx-int8": "resnet8.int8.onnx",
                                                     "torchscript": "resnet8.torchscript.pt"}
    assert report["files"]["student_report"] == "student_report.json"
    students = json.loads((out / "student_report.json").read_text())
    entry = students["students"]["resnet8"]
    assert set(entry["formats"]) == set(MODEL_FORMATS)
    held_out = entry["held_out_images"]
    assert entry["images_source"] == "holdout" and held_out == 64
    for fmt, figures in entry["formats"].items():
        v = figures["verification"]
        assert v["images"] == held_out and v["images_source"] == "holdout"
        assert v["status"] in (("verified", "flagged") if fmt == "onnx-int8" else ("verified",))
        assert figures["sha256"] == hashlib.sha256((out / figures["file"]).read_bytes()).hexdigest()
        assert set(figures["latency_ms"]) == {"1", "64"}
        assert 0.0 <= figures["teacher_agreement"] <= 1.0
    assert entry["teacher_agreement"]["pytorch"] == 1.0 and entry["macs"] > 0

    meta = {p.key: p.value for p in onnx.load(str(out / "resnet8.int8.onnx")).metadata_props}
    quant = json.loads(meta["dfmscd_quantization"])
    assert quant["calibration_images"] == 96
    assert json.loads(meta["dfmscd_verification"])["images"] == held_out
    assert torch.jit.load(str(out / "resnet8.torchscript.pt"))(torch.zeros(1, 1, 8, 8)).shape == (1, 4)


def test_a_run_without_calibration_images_skips_only_int8(one_thread, tmp_path):
    from dfmscd.outputs import run_outputs

    card = kit.card()
    empty = torch.empty((0, 1, 8, 8), dtype=torch.uint8)
    result = DistillResult(status="cancelled", students={"s": kit.student()}, cards={"s": card}, report={},
                           samples=empty, calibration=empty, holdout=empty)
    names = [o.name for o in run_outputs(result, card, ["onnx", "onnx-int8"])]
    assert names == ["s.safetensors", "s.onnx"]
    written = {o.fmt: o.write(tmp_path / o.name) for o in run_outputs(result, card, ["onnx"])}
    assert written["onnx"].verification.images_source == "random" and written["onnx"].verification.status == "verified"
