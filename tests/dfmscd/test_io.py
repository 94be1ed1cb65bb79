"""dfmscd.io: every way a user's weights file can be wrong is refused, with a one-line reason.

All files are real, crafted on disk in tmp_path; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from dfmscd.errors import CardError, CheckpointError
from dfmscd.io import (
    CARD_METADATA_KEY, build_model, export_onnx, export_torchscript, load_model, load_state_dict,
    load_teacher, parse_card, read_model_card, save_model, validate_card,
)
from dfmscd.io.pickle_scan import disallowed_global
from dfmscd.models import create_model

CARD = parse_card({"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8],
                   "mean": [0.5], "std": [0.25], "class_names": [str(i) for i in range(10)]})


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("resnet8", 10, 1, 8)
    with torch.no_grad():  # non-default BN statistics so that a lost buffer would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def refused(exc_type: type[Exception], call, *fragments: str) -> str:
    """Assert ``call()`` raises ``exc_type`` with a one-line message containing every fragment."""
    with pytest.raises(exc_type) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


# --- accepted formats ---------------------------------------------------------------------


def test_safetensors_and_pt_teachers_load_with_identical_outputs(model, x, tmp_path: Path) -> None:
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "t.safetensors")
    torch.save(sd, tmp_path / "t.pth")
    for name in ("t.safetensors", "t.pth"):
        loaded = load_state_dict(tmp_path / name)
        assert list(loaded) == list(sd) or set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
        teacher = load_teacher(tmp_path / name, CARD)
        assert not teacher.training
        assert torch.equal(teacher(x), model(x))


def test_format_is_detected_by_content_not_extension(model, tmp_path: Path) -> None:
    torch.save(model.state_dict(), tmp_path / "weights.safetensors")  # a torch zip, misnamed
    save_file(dict(model.state_dict()), tmp_path / "weights.pt")      # safetensors, misnamed
    for name in ("weights.safetensors", "weights.pt"):
        assert torch.equal(load_state_dict(tmp_path / name)["fc.weight"], model.fc.weight)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model"])
def test_wrapped_and_dataparallel_state_dicts_are_unwrapped(model, tmp_path: Path, wrapper: str) -> None:
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({wrapper: prefixed, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    loaded = load_state_dict(tmp_path / "ckpt.pt")
    assert set(loaded) == set(model.state_dict())


def test_card_from_path_and_dict(model, tmp_path: Path) -> None:
    torch.save(model.state_dict(), tmp_path / "t.pt")
    (tmp_path / "card.json").write_text(CARD.to_json())
    a = load_teacher(tmp_path / "t.pt", tmp_path / "card.json")
    b = load_teacher(tmp_path / "t.pt", json.loads(CARD.to_json()))
    assert torch.equal(a.fc.weight, b.fc.weight)


# --- code is never executed -----------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_the_payload_is_real(tmp_path: Path) -> None:
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(marker)))  # our own payload, to show the refusal below matters
    assert marker.exists()


@pytest.mark.parametrize("layout", ["zip_top", "zip_nested", "legacy", "bare_pickle"])
def test_pickle_payload_is_refused_without_running(model, tmp_path: Path, layout: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "teacher.pt"
    evil = _Payload(marker)
    if layout == "zip_top":
        torch.save(evil, path)
    elif layout == "zip_nested":
        torch.save({**model.state_dict(), "extra": evil}, path)
    elif layout == "legacy":
        torch.save({"w": torch.ones(2), "x": evil}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"w": evil}))
    assert not marker.exists()
    msg = refused(CheckpointError, lambda: load_teacher(path, CARD), "teacher.pt")
    assert not marker.exists()
    if layout.startswith("zip"):
        assert "weights-only" in msg and "not code" in msg and "'io.open'" in msg
    else:
        assert "not a zip-format PyTorch checkpoint" in msg


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_scan_allows_state_dicts_and_names_payloads(model, tmp_path: Path, protocol: int) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": model.state_dict(), "p": torch.nn.Parameter(torch.ones(2)),
                "dtype": torch.bfloat16, "epoch": 3}, plain, pickle_protocol=protocol)
    with zipfile.ZipFile(plain) as zf:
        assert disallowed_global(zf.read("plain/data.pkl")) is None
    assert disallowed_global(pickle.dumps({"w": _Payload(tmp_path / "m")}, protocol=protocol)) == "io.open"
    assert str(disallowed_global(pickle.dumps(print, protocol=protocol))).endswith("builtin__.print" if protocol < 3 else "builtins.print")
    assert disallowed_global(b"\x80\x02garbage") is not None


def test_refused_even_when_torch_allowlist_was_widened(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    with torch.serialization.safe_globals([open]):  # some other code widened weights_only
        refused(CheckpointError, lambda: load_state_dict(tmp_path / "evil.pt"), "'io.open'", "not code")
    assert not marker.exists()


def test_torchscript_archive_is_refused(model, tmp_path: Path) -> None:
    torch.jit.trace(model, torch.zeros(1, 1, 8, 8)).save(str(tmp_path / "scripted.pt"))
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "scripted.pt"), "TorchScript", "not accepted")


def test_torch_export_archive_is_refused_by_name_and_by_content(model, tmp_path: Path) -> None:
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),))
    torch.export.save(program, tmp_path / "m.pt2")
    shutil.copy(tmp_path / "m.pt2", tmp_path / "disguised.pth")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "m.pt2"), ".pt2", "not accepted")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "disguised.pth"), ".pt2", "not accepted")


def test_torch_zip_named_like_a_marker_is_still_a_checkpoint(model, tmp_path: Path) -> None:
    # torch.save names the archive's top folder after the file: "code.pt" -> "code/data.pkl".
    torch.save(model.state_dict(), tmp_path / "code.pt")
    assert "fc.weight" in load_state_dict(tmp_path / "code.pt")


# --- resource exhaustion ---------------------------------------------------------------------


def test_zip_bomb_is_refused_before_loading(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("bomb/data/0", b"\0" * (16 * 1024 * 1024))
    assert path.stat().st_size < 100_000
    refused(CheckpointError, lambda: load_state_dict(path), "zip bomb", "bomb.pt")


def test_size_cap_and_empty_file(model, tmp_path: Path) -> None:
    torch.save(model.state_dict(), tmp_path / "big.pt")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "big.pt", max_bytes=1000), "over the 1000-byte limit")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "empty.safetensors"), "empty")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "absent.pt"), "not found")
    refused(CheckpointError, lambda: load_state_dict(tmp_path), "not a regular file")
    (tmp_path / "noise.bin").write_bytes(os.urandom(64))
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "noise.bin"), "noise.bin")
    (tmp_path / "noise.dat").write_bytes(b"hello, I am not weights")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "noise.dat"), "unrecognised weights format")


# --- safetensors headers that lie -------------------------------------------------------------


def _safetensors(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


F32x4 = np.arange(4, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    ("header", "data", "header_len", "fragments"),
    [
        ({}, b"", 200 * 1024 * 1024, ("header claims", "limit")),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F32x4, 10_000, ("truncated",)),
        (None, b"", None, ("not valid JSON",)),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F32x4[:8], None, ("truncated", "16 bytes")),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, F32x4 + b"junk", None, ("4 unexpected trailing bytes",)),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, F32x4 + b"\0" * 4, None, ("'b'", "gap")),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, F32x4, None, ("'b'", "overlaps")),
        ({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}, F32x4, None, ("'a'", "needs 32 bytes")),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, F32x4, None, ("invalid data_offsets",)),
        ({"a": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}}, F32x4, None, ("unknown dtype",)),
        ({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, F32x4, None, ("invalid shape",)),
        ([1, 2], b"", None, ("not a JSON object",)),
    ],
    ids=["huge-header", "header-past-end", "bad-json", "truncated-data", "trailing", "gap", "overlap",
         "size-mismatch", "reversed-offsets", "unknown-dtype", "negative-shape", "not-object"],
)
def test_lying_safetensors_headers_are_refused(tmp_path: Path, header, data: bytes, header_len, fragments) -> None:
    path = tmp_path / "lie.safetensors"
    if header is None:
        path.write_bytes(struct.pack("<Q", 9) + b"{not json" + F32x4)
    elif isinstance(header, list):
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw)  # starts with '[': sniffed as unknown
        refused(CheckpointError, lambda: load_state_dict(path), "unrecognised")
        return
    else:
        path.write_bytes(_safetensors(header, data, header_len))
    refused(CheckpointError, lambda: load_state_dict(path), "lie.safetensors", *fragments)


def test_non_float_weights_and_nan_are_refused(model, tmp_path: Path) -> None:
    sd = dict(model.state_dict())
    save_file({**sd, "conv1.weight": sd["conv1.weight"].to(torch.int32)}, tmp_path / "int.safetensors")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "int.safetensors"), "'conv1.weight'", "torch.int32", "floating point")
    torch.save({**sd, "fc.bias": sd["fc.bias"].to(torch.uint8)}, tmp_path / "int.pt")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "int.pt"), "'fc.bias'", "floating point")
    bad = sd["fc.weight"].clone()
    bad[0, 0] = float("nan")
    save_file({**sd, "fc.weight": bad}, tmp_path / "nan.safetensors")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "nan.safetensors"), "'fc.weight'", "NaN or Inf")
    inf = sd["bn1.running_var"].clone()
    inf[1] = float("inf")
    torch.save({**sd, "bn1.running_var": inf}, tmp_path / "inf.pt")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "inf.pt"), "'bn1.running_var'", "NaN or Inf")
    half = tmp_path / "half.safetensors"  # float16 weights are fine
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, half)
    assert load_state_dict(half)["fc.weight"].dtype == torch.float16


def test_non_tensor_entries_and_non_dicts_are_refused(model, tmp_path: Path) -> None:
    torch.save({**model.state_dict(), "note": 3}, tmp_path / "mixed.pt")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "mixed.pt"), "'note'", "not a tensor")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    refused(CheckpointError, lambda: load_state_dict(tmp_path / "list.pt"), "expected a state_dict")


# --- architecture checks -------------------------------------------------------------------


def test_key_and_shape_mismatches_name_the_first_key(model) -> None:
    sd = dict(model.state_dict())
    missing = {k: v for k, v in sd.items() if k not in ("layer2.0.conv1.weight", "fc.weight")}
    refused(CheckpointError, lambda: build_model(CARD, missing), "missing key 'layer2.0.conv1.weight'", "1 more")
    refused(CheckpointError, lambda: build_model(CARD, {**sd, "head.weight": torch.ones(1)}), "unexpected key 'head.weight'")
    five = create_model("resnet8", 5, 1, 8).state_dict()
    refused(CheckpointError, lambda: build_model(CARD, five),
            "shape mismatch for 'fc.weight'", "file has [5, 64]", "resnet8 expects [10, 64]")
    rgb = create_model("resnet8", 10, 3, 8).state_dict()
    refused(CheckpointError, lambda: build_model(CARD, rgb), "'conv1.weight'", "[16, 3, 3, 3]", "[16, 1, 3, 3]")
    no_counter = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert torch.equal(build_model(CARD, no_counter).fc.weight, model.fc.weight)


def test_teacher_without_batchnorm_is_refused(tmp_path: Path) -> None:
    card = parse_card({"architecture": "tv/squeezenet1_1", "num_classes": 3, "input_shape": [1, 8, 8],
                       "mean": [0.0], "std": [1.0]})
    torch.save(create_model("tv/squeezenet1_1", 3, 1, 8).state_dict(), tmp_path / "nobn.pt")
    refused(CheckpointError, lambda: load_teacher(tmp_path / "nobn.pt", card), "no BatchNorm", "running statistics")
    student = build_model(card, load_state_dict(tmp_path / "nobn.pt"))  # fine as a plain model
    assert student(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_validate_card_refuses_unknown_architecture_and_kwargs() -> None:
    base = json.loads(CARD.to_json())
    refused(CardError, lambda: validate_card(parse_card({**base, "architecture": "resnet9000"})), "resnet9000")
    refused(CardError, lambda: validate_card(parse_card({**base, "arch_kwargs": {"depth": 3}})), "depth")
    refused(CardError, lambda: validate_card(parse_card({**base, "architecture": "tv/resnet18",
                                                         "arch_kwargs": {"weights": "IMAGENET1K_V1"}})), "weights")
    assert validate_card(CARD) is CARD


# --- our own model files -------------------------------------------------------------------


def test_save_load_round_trip_is_exact_and_atomic(model, x, tmp_path: Path) -> None:
    out = save_model(model, CARD, tmp_path / "out" / "student.safetensors")
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.safetensors"]  # no temp file left
    loaded, card = load_model(out)
    assert card == CARD and read_model_card(out) == CARD
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.bn1.running_var, model.bn1.running_var)
    # overwrite in place: still one file, new contents
    other = create_model("resnet8", 10, 1, 8).eval()
    save_model(other, CARD, out)
    assert torch.equal(load_model(out)[0](x), other(x))
    assert len(list(out.parent.iterdir())) == 1


def test_save_refuses_a_card_that_cannot_rebuild_the_module(model, tmp_path: Path) -> None:
    card = parse_card({**json.loads(CARD.to_json()), "num_classes": 5, "class_names": None})
    refused(CheckpointError, lambda: save_model(model, card, tmp_path / "s.safetensors"), "'fc.weight'")
    assert not (tmp_path / "s.safetensors").exists()


def test_load_model_needs_our_card(model, tmp_path: Path) -> None:
    save_file(dict(model.state_dict()), tmp_path / "plain.safetensors")
    refused(CheckpointError, lambda: load_model(tmp_path / "plain.safetensors"), "no model card")
    save_file(dict(model.state_dict()), tmp_path / "badcard.safetensors", metadata={CARD_METADATA_KEY: "{oops"})
    refused(CardError, lambda: load_model(tmp_path / "badcard.safetensors"), "badcard.safetensors", "not valid JSON")
    torch.save(model.state_dict(), tmp_path / "t.pt")
    refused(CheckpointError, lambda: load_model(tmp_path / "t.pt"), "not a safetensors file")


def test_onnx_export_passes_the_checker(model, tmp_path: Path) -> None:
    path = export_onnx(model, CARD, tmp_path / "student.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 8, 8]


def test_torchscript_export_matches_and_is_not_accepted_back(model, x, tmp_path: Path) -> None:
    model.train()  # the export must not depend on (or change) the caller's mode
    path = export_torchscript(model, CARD, tmp_path / "student.pt")
    assert model.training
    model.eval()
    scripted = torch.jit.load(str(path))  # our own file, just written
    assert torch.allclose(scripted(x), model(x), atol=1e-6)
    refused(CheckpointError, lambda: load_state_dict(path), "TorchScript")
