"""Hostile and broken teacher uploads through the real HTTP API (POST /v1/teachers).

Each case is a real crafted file (or card) sent as multipart: a 4xx with the standard error
body and a precise message, no code run (payloads would create a marker file), and nothing
added under DATA_DIR/storage or DATA_DIR/tmp. Cases already in tests/dfmscd_service/api/test_teachers.py
(unknown architecture, std 0, card not JSON, empty file, half a file, garbage, bare pickle,
no BatchNorm, missing fields, stream over the cap) are not repeated here.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hardening_kit import settings_override
from safetensors.torch import load_file, save
from service_kit import CARD, assert_error

MARKER_NAME = "pwned-by-upload"


def _post(client, auth, data: bytes, card: dict | str = CARD, filename: str = "teacher.safetensors"):
    card_text = card if isinstance(card, str) else json.dumps(card)
    return client.post("/v1/teachers", headers=auth,
                       files={"file": (filename, io.BytesIO(data), "application/octet-stream")},
                       data={"card": card_text})


# --------------------------------------------------------------------------- crafted files
class _Payload:
    """Pickles as a call to ``fn(*args)``: running it would create the marker file."""

    def __init__(self, fn: Callable, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _torch_save(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _payload_pt(kind: str, marker: Path) -> bytes:
    import os

    payloads = {
        "os_system": _Payload(os.system, f"touch {marker}"),
        "exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "import_os": _Payload(__import__, "os"),
        "open": _Payload(open, str(marker), "w"),
    }
    return _torch_save({"conv1.weight": torch.zeros(1), "evil": payloads[kind]})


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def _torchscript() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Tiny()), buf)
    return buf.getvalue()


def _pt2(tmp: Path) -> bytes:
    path = tmp / "m.pt2"
    torch.export.save(torch.export.export(_Tiny(), (torch.zeros(1, 1, 8, 8),)), path)
    return path.read_bytes()


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("bomb/data/0", b"\0" * (64 * 1024 * 1024))
    return buf.getvalue()


def _raw_safetensors(header: dict, data: bytes, declared_len: int | None = None) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + data


def _with_state(teacher_file: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    state = load_file(str(teacher_file))
    edit(state)
    return save({k: v.contiguous() for k, v in state.items()})


def _first_weight(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in state.items() if k.endswith("weight") and v.dim() == 4)


def _set(key_fn: Callable[[dict], str], value: float) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        state[key_fn(state)].view(-1)[0] = value
    return edit


def _int32(state: dict) -> None:
    for k in list(state):
        if state[k].is_floating_point():
            state[k] = (state[k] * 100).to(torch.int32)


def _drop_first(state: dict) -> None:
    del state[_first_weight(state)]


def _add_extra(state: dict) -> None:
    state["extra.weight"] = torch.zeros(3)


def _reshape_first(state: dict) -> None:
    k = _first_weight(state)
    state[k] = torch.zeros(state[k].shape[0] + 1, *state[k].shape[1:])


# (id, builder(teacher_file, tmp_path, marker) -> (bytes, filename), message fragments)
CHECKPOINTS = [
    ("pickle-os.system", lambda t, d, m: (_payload_pt("os_system", m), "t.pt"), ["t.pt: refused", "system"]),
    ("pickle-exec", lambda t, d, m: (_payload_pt("exec", m), "t.pt"), ["pickle references", "exec'"]),
    ("pickle-import-os", lambda t, d, m: (_payload_pt("import_os", m), "t.pt"), ["pickle references", "__import__'"]),
    ("pickle-open-in-zip", lambda t, d, m: (_payload_pt("open", m), "t.pth"), ["pickle references", "open"]),
    ("torchscript", lambda t, d, m: (_torchscript(), "t.pt"), ["TorchScript", "not accepted"]),
    ("pt2", lambda t, d, m: (_pt2(d), "m.pt2"), [".pt2 (torch.export)", "not accepted"]),
    ("pt2-named-pt", lambda t, d, m: (_pt2(d), "m.pt"), [".pt2 (torch.export)", "not accepted"]),
    ("zip-bomb", lambda t, d, m: (_zip_bomb(), "bomb.pt"), ["zip bomb"]),
    ("truncated-safetensors", lambda t, d, m: (t.read_bytes()[:-100], "t.safetensors"),
     ["truncated safetensors file"]),
    ("offsets-past-end", lambda t, d, m: (_raw_safetensors(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 16), "t.safetensors"),
     ["truncated safetensors file", "need 4000 bytes", "has 16"]),
    ("offsets-gap", lambda t, d, m: (_raw_safetensors(
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16), "t.safetensors"),
     ["'w' leaves a gap"]),
    ("offsets-lie-about-size", lambda t, d, m: (_raw_safetensors(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8), "t.safetensors"),
     ["needs 16 bytes but its offsets span 8"]),
    ("header-100MiB", lambda t, d, m: (_raw_safetensors({}, b"", declared_len=100 * 2**20 + 1), "t.safetensors"),
     ["header claims 104857601 bytes", "limit 104857600"]),
    ("header-2^63", lambda t, d, m: (_raw_safetensors({}, b"", declared_len=2**63), "t.safetensors"),
     ["header claims"]),
    ("header-longer-than-file", lambda t, d, m: (_raw_safetensors({}, b"", declared_len=100 * 2**20), "t.safetensors"),
     ["truncated safetensors file"]),
    ("int32-weights", lambda t, d, m: (_with_state(t, _int32), "t.safetensors"),
     ["dtype torch.int32", "must be floating point"]),
    ("nan-weight", lambda t, d, m: (_with_state(t, _set(_first_weight, float("nan"))), "t.safetensors"),
     ["contains NaN or Inf"]),
    ("inf-weight", lambda t, d, m: (_with_state(t, _set(lambda s: "fc.bias" if "fc.bias" in s else _first_weight(s),
                                                         float("inf"))), "t.safetensors"),
     ["contains NaN or Inf"]),
    ("missing-key", lambda t, d, m: (_with_state(t, _drop_first), "t.safetensors"), ["missing key"]),
    ("extra-key", lambda t, d, m: (_with_state(t, _add_extra), "t.safetensors"), ["unexpected key 'extra.weight'"]),
    ("mis-shaped-key", lambda t, d, m: (_with_state(t, _reshape_first), "t.safetensors"), ["shape mismatch for"]),
]


@pytest.mark.parametrize(("build", "fragments"), [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
def test_hostile_checkpoint_is_422_not_run_and_not_kept(client, auth, teacher_file, tmp_path, leaves_no_trace,
                                                        build, fragments):
    marker = tmp_path / MARKER_NAME
    data, filename = build(teacher_file, tmp_path, marker)
    err = assert_error(_post(client, auth, data, filename=filename), 422, "invalid_checkpoint")
    for fragment in fragments:
        assert fragment in err["message"], err
    assert "upload-" not in err["message"], err  # names the user's file, never the server's temp file
    assert "\n" not in err["message"]
    assert not marker.exists()
    leaves_no_trace()


def test_pickle_payload_really_would_run(tmp_path):
    """Guards the test above: the crafted payloads are live if something did unpickle them."""
    marker = tmp_path / MARKER_NAME
    pickle.loads(pickle.dumps(_Payload(open, str(marker), "w"))).close()
    assert marker.exists()


CARDS = [
    ("0-classes", {**CARD, "num_classes": 0}, "num_classes: Input should be greater than or equal to 2"),
    ("100000-classes", {**CARD, "num_classes": 100000}, "num_classes: Input should be less than or equal to 10000"),
    ("0x0-input", {**CARD, "input_shape": [1, 0, 0]}, "input side must be between 8 and 224, got 0"),
    ("4096x4096-input", {**CARD, "input_shape": [1, 4096, 4096]}, "input side must be between 8 and 224, got 4096"),
    ("non-square", {**CARD, "input_shape": [1, 8, 16]}, "input must be square, got 8x16"),
    ("2-channels", {**CARD, "input_shape": [2, 8, 8]}, "channels must be 1 or 3, got 2"),
    ("mean-too-long", {**CARD, "mean": [0.5, 0.5, 0.5]}, "one value per channel (1), got 3 and 1"),
    ("std-empty", {**CARD, "std": []}, "one value per channel (1), got 1 and 0"),
    ("std-negative", {**CARD, "std": [-1.0]}, "std values must be > 0"),
    ("mean-nan", '{"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [NaN], "std": [1]}',
     "mean: Value error, must be finite numbers".removeprefix("mean: Value error, ")),
    ("extra-field", {**CARD, "mean ": [0.5]}, "Extra inputs are not permitted"),
    ("not-an-object", "[1, 2, 3]", "model card must be a JSON object"),
    ("class-names-count", {**CARD, "class_names": ["a", "b"]}, "class_names has 2 entries for 10 classes"),
    ("arch-kwargs-object", {**CARD, "arch_kwargs": {"width": {"__class__": "os.system"}}}, "must be a number, string or boolean"),
    ("arch-kwargs-unknown", {**CARD, "arch_kwargs": {"bogus": 1}}, "bogus"),
]


@pytest.mark.parametrize(("card", "fragment"), [c[1:] for c in CARDS], ids=[c[0] for c in CARDS])
def test_meaningless_card_is_422_naming_the_field(client, auth, teacher_file, leaves_no_trace, card, fragment):
    err = assert_error(_post(client, auth, teacher_file.read_bytes(), card), 422, "invalid_card")
    assert fragment in err["message"], err
    leaves_no_trace()


def test_file_over_a_small_cap_is_413(client, auth, teacher_file, leaves_no_trace):
    size = teacher_file.stat().st_size
    with settings_override(max_upload_bytes=str(size - 1)):
        err = assert_error(_post(client, auth, teacher_file.read_bytes()), 413, "payload_too_large")
    assert f"limit of {size - 1} bytes" in err["message"], err
    leaves_no_trace()


def test_oversized_card_field_is_413(client, auth, teacher_file, leaves_no_trace):
    card = {**CARD, "class_names": ["x" * 10_000] * 10}  # ~100 KB > the 64 KiB field cap
    err = assert_error(_post(client, auth, teacher_file.read_bytes(), card), 413, "payload_too_large")
    assert "'card'" in err["message"]
    leaves_no_trace()


def test_path_traversal_filename_is_only_a_label(client, auth, teacher_file):
    from dfmscd_service.core.settings import get_settings

    r = _post(client, auth, teacher_file.read_bytes(), filename="../../etc/pass\x00wd\u202e.safetensors")
    assert r.status_code == 201, r.text
    body = r.json()
    assert "/" not in body["filename"] and "\x00" not in body["filename"] and "\u202e" not in body["filename"]
    stored = [p for p in get_settings().storage_dir.rglob("*") if p.is_file() and body["id"] in str(p)]
    assert [p.relative_to(get_settings().storage_dir).parts[:2] for p in stored] == [("teachers", body["id"])]
