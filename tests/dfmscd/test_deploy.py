"""Deployable students: INT8 export (deterministic, runs in ONNX Runtime, figures and card in its
metadata), verification of every exported file (float refused below 99.9%, INT8 flagged below
97%), and the student report. Real exports, run in the real ONNX Runtime and torch.jit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import deploy_kit as kit
from dfmscd.deploy import ExportedFile, export_student, export_verified, read_verification
from dfmscd.errors import ExportError
from dfmscd.formats import EXPORT_FORMATS, MODEL_FORMATS, file_name
from dfmscd.io import export_as, export_onnx, load_model, read_model_card
from dfmscd.io.onnx_files import CARD_KEY, QUANTIZATION_KEY, VERIFICATION_KEY, read_onnx_card
from dfmscd.io.quantize import images_array
from dfmscd.io.verify import compare_logits, verify_file
from dfmscd.student_report import LatencySettings, count_macs, cpu_info, run_student_report


@pytest.fixture(scope="module")
def setup(one_thread):
    calibration, _ = kit.pixels(128, seed=1)
    holdout, _ = kit.pixels(256, seed=2)
    return kit.student(), kit.card(), calibration, holdout


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_int8_export_is_deterministic_quantized_and_self_describing(setup, tmp_path):
    module, card, calibration, holdout = setup
    assert "onnx-int8" in EXPORT_FORMATS and file_name("s", "onnx-int8") == "s.int8.onnx"
    first = export_verified("onnx-int8", module, card, tmp_path / "a" / "s.int8.onnx", calibration=calibration,
                            holdout=holdout, student="s")
    second = export_verified("onnx-int8", module, card, tmp_path / "b" / "s.int8.onnx", calibration=calibration,
                             holdout=holdout, student="s")
    assert first.sha256 == second.sha256 == _sha(first.path) == _sha(second.path)
    assert first.size_bytes == first.path.stat().st_size

    model = onnx.load(str(first.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights and all(abs(int(v)) <= 64 for t in int8_weights for v in onnx.numpy_helper.to_array(t).ravel())
    # ^ reduce_range: 7-bit weights

    meta = _metadata(first.path)
    assert read_onnx_card(first.path) == card and json.loads(meta[CARD_KEY])["architecture"] == "resnet8"
    quant = json.loads(meta[QUANTIZATION_KEY])
    assert quant["activation_type"] == "QUInt8" and quant["weight_type"] == "QInt8" and quant["per_channel"]
    assert quant["calibration_images"] == len(calibration) and quant["format"] == "QDQ"
    figures = json.loads(meta[VERIFICATION_KEY])
    assert figures == first.verification.to_dict() == read_verification("onnx-int8", first.path)
    assert figures["images"] == len(holdout) and figures["images_source"] == "holdout"

    x = images_array(holdout, card)  # the figure is what ONNX Runtime gives, counted here by hand
    hand = float((_ort_logits(first.path, x).argmax(1) == module(torch.from_numpy(x)).argmax(1).numpy()).mean())
    assert figures["top1_agreement"] == pytest.approx(hand) and hand >= 0.97
    assert figures["status"] == "verified" and not first.flagged

    other = export_verified("onnx-int8", module, card, tmp_path / "c.int8.onnx", calibration=calibration[:64],
                            holdout=holdout)
    assert other.sha256 != first.sha256  # other calibration images, other file


def test_float_exports_verify_and_carry_their_figures(setup, tmp_path):
    module, card, calibration, holdout = setup
    files = export_student("s", module, card, tmp_path, ["onnx", "torchscript"], calibration=calibration, holdout=holdout)
    assert list(files) == ["safetensors", "onnx", "torchscript"]
    for fmt, exported in files.items():
        v = exported.verification
        assert v.status == "verified" and v.top1_agreement >= 0.999 and v.min_agreement == 0.999
        assert v.max_abs_logit_diff < 1e-3 * max(1.0, v.logit_scale)
        assert exported.path.name == file_name("s", fmt) and exported.sha256 == _sha(exported.path)
        assert read_verification(fmt, exported.path) == v.to_dict()
    reloaded, reloaded_card = load_model(files["safetensors"].path)  # the stamped file still loads
    assert reloaded_card == card == read_model_card(files["safetensors"].path)
    extra = {"dfmscd_card.json": ""}
    torch.jit.load(str(files["torchscript"].path), _extra_files=extra)
    assert json.loads(extra["dfmscd_card.json"])["num_classes"] == 4
    assert read_onnx_card(files["onnx"].path) == card and VERIFICATION_KEY in _metadata(files["onnx"].path)


def test_a_broken_float_export_is_refused(setup, tmp_path):
    module, card, _, holdout = setup
    path = export_onnx(module, card, tmp_path / "s.onnx")
    model = onnx.load(str(path))
    fc = max((t for t in model.graph.initializer if len(t.dims) == 2), key=lambda t: t.dims[0] * t.dims[1])
    weights = onnx.numpy_helper.to_array(fc)
    fc.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(weights[::-1]), fc.name))  # classes swapped
    onnx.save(model, str(path))
    with pytest.raises(ExportError) as info:
        verify_file("onnx", path, module, card, holdout)
    message = str(info.value)
    assert message.startswith("onnx export refused") and "99.9%" in message and "\n" not in message
    figures = verify_file("onnx", path, module, card, holdout, refuse=False)
    assert figures.status == "refused" and figures.top1_agreement < 0.999


def test_int8_below_97_percent_is_kept_but_flagged(setup, tmp_path):
    module, card, _, holdout = setup
    constant = np.full((32, 1, 8, 8), 128, np.uint8)  # every activation range collapses: real images saturate
    exported = export_verified("onnx-int8", module, card, tmp_path / "s.int8.onnx", calibration=constant, holdout=holdout)
    x = images_array(holdout, card)
    hand = float((_ort_logits(exported.path, x).argmax(1) == module(torch.from_numpy(x)).argmax(1).numpy()).mean())
    assert hand < 0.97
    v = exported.verification
    assert v.top1_agreement == pytest.approx(hand) and v.status == "flagged" and exported.flagged
    assert f"{hand * 100:.2f}%" in v.message and "flagged" in v.message
    assert exported.path.exists() and read_verification("onnx-int8", exported.path)["status"] == "flagged"


def test_thresholds_on_hand_made_logits():
    reference = np.tile(np.array([[3.0, 1.0, 0.0, 0.0]]), (100, 1))
    wrong = np.tile(np.array([[1.0, 3.0, 0.0, 0.0]]), (100, 1))
    three, four = reference.copy(), reference.copy()
    three[:3], four[:4] = wrong[:3], wrong[:4]
    assert compare_logits("onnx-int8", reference, three).status == "verified"  # 97% exactly
    flagged = compare_logits("onnx-int8", reference, four)
    assert flagged.status == "flagged" and flagged.top1_agreement == 0.96 and flagged.max_abs_logit_diff == 2.0
    one_in_thousand = np.tile(reference[:1], (1000, 1))
    one_off = one_in_thousand.copy()
    one_off[0] = [1.0, 3.0, 0.0, 0.0]
    assert compare_logits("onnx", one_in_thousand, one_off).status == "verified"  # 99.9% exactly
    one_off[1] = [1.0, 3.0, 0.0, 0.0]
    assert compare_logits("torchscript", one_in_thousand, one_off).status == "refused"
    tie = np.tile(np.array([[1.0, 1.0 - 1e-7, 0.0, 0.0]]), (10, 1))
    flipped = tie.copy()
    flipped[:, 1] += 2e-7  # rounding flips a tie: not a bug
    v = compare_logits("onnx", tie, flipped)
    assert v.top1_agreement == 0.0 and v.ties == 10 and v.status == "verified"


def test_what_cannot_be_exported_is_refused_naming_the_format(setup, tmp_path):
    module, card, calibration, holdout = setup
    with pytest.raises(ExportError, match="onnx-int8 export of 'resnet8' needs"):
        export_as("onnx-int8", module, card, tmp_path / "x.int8.onnx")
    with pytest.raises(ExportError, match="onnx-int8 export of 'resnet8' needs calibration images"):
        export_verified("onnx-int8", module, card, tmp_path / "x.int8.onnx", calibration=calibration[:0], holdout=holdout)
    with pytest.raises(ExportError, match=r"expects N x 1 x 8 x 8"):
        export_verified("onnx-int8", module, card, tmp_path / "x.int8.onnx", calibration=np.zeros((4, 1, 9, 9), np.uint8))

    class NoOnnx(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvalsh(x[:, 0] @ x[:, 0].transpose(1, 2))[:, :4]

    for fmt in ("onnx", "onnx-int8"):
        with pytest.raises(ExportError, match=f"^{fmt} export of 'resnet8' failed: .*eigvalsh"):
            export_verified(fmt, NoOnnx(), card, tmp_path / file_name("x", fmt), calibration=calibration, holdout=holdout)
        assert not (tmp_path / file_name("x", fmt)).exists()


def test_student_report_has_every_figure(setup, tmp_path):
    module, card, calibration, holdout = setup
    files = export_student("s", module, card, tmp_path, ["onnx", "onnx-int8", "torchscript"],
                           calibration=calibration, holdout=holdout)
    teacher = kit.student()  # the same weights: agreement 1.0 for the PyTorch student
    report = run_student_report({"s": (module, card)}, {"s": files}, teacher=teacher, holdout=holdout,
                                latency=LatencySettings(batch_sizes=(1, 8), repeats=1, warmup=0, threads=1))
    json.dumps(report, allow_nan=False)
    assert set(report) == {"cpu", "thresholds", "students"}
    assert set(report["cpu"]) >= {"model", "isa", "flags", "logical_cpus"}
    s = report["students"]["s"]
    assert {"parameters", "macs", "flops", "formats", "teacher_agreement", "latency", "cpu", "held_out_images",
            "flagged"} <= set(s)
    assert s["parameters"] > 0 and s["flops"] == 2 * s["macs"] == 2 * count_macs(module, card.input_shape)
    assert s["teacher_agreement"]["pytorch"] == 1.0 and s["latency"]["threads"] == 1
    assert set(s["formats"]) == set(MODEL_FORMATS)
    for fmt, entry in s["formats"].items():
        assert entry["size_bytes"] == (tmp_path / entry["file"]).stat().st_size
        assert set(entry["latency_ms"]) == {"1", "8"} and entry["latency_ms"]["8"]["median_ms"] > 0
        assert entry["verification"]["status"] == "verified" and 0 <= entry["teacher_agreement"] <= 1
    assert s["formats"]["onnx-int8"]["size_bytes"] < s["formats"]["onnx"]["size_bytes"] / 2


def test_multiply_adds_by_hand_and_cpu_flags():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 4, 3, padding=1, groups=2),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    assert count_macs(net, (1, 8, 8)) == 2 * 64 * 9 + 4 * 64 * 9 + 5 * 256
    info = cpu_info("model name\t: Some CPU\nflags\t\t: fpu sse avx avx2 avx512f avx512_vnni amx_tile\n")
    assert info["model"] == "Some CPU" and info["isa"] == {"avx2": True, "avx512": True, "vnni": True, "amx": True}
    assert cpu_info("flags : sse avx2\n")["isa"] == {"avx2": True, "avx512": False, "vnni": False, "amx": False}


def test_exported_file_record_is_jsonable(setup, tmp_path):
    module, card, calibration, holdout = setup
    exported = export_verified("safetensors", module, card, tmp_path / "s.safetensors", holdout=holdout)
    assert isinstance(exported, ExportedFile)
    record = exported.to_dict()
    assert record["file"] == "s.safetensors" and record["verification"]["max_abs_logit_diff"] == 0.0
    json.dumps(record, allow_nan=False)
    without = export_verified("safetensors", module, card, tmp_path / "r.safetensors")  # no images: random pixels
    assert without.verification.images_source == "random" and without.verification.status == "verified"
