"""Evaluation on the user's own labelled images: safetensors, ONNX and INT8 ONNX files written by
dfmscd, on a .npz or a class-folder archive; shapes, labels, hostile archives and files without
a card refused with one line. Real files, the real ONNX Runtime."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import deploy_kit as kit
from dfmscd.cli import main
from dfmscd.deploy import export_student
from dfmscd.errors import CardError, DfmscdError
from dfmscd.evaluate import evaluate_file, evaluate_models
from dfmscd.image_archive import ArchiveLimits
from dfmscd.io import export_onnx


@pytest.fixture(scope="module")
def files(one_thread, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("students")
    calibration, _ = kit.pixels(128, seed=1)
    holdout, _ = kit.pixels(128, seed=2)
    written = export_student("s", kit.student(), kit.card(), folder, ["onnx", "onnx-int8"],
                             calibration=calibration, holdout=holdout)
    return {fmt: f.path for fmt, f in written.items()}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def _class_folders(x: np.ndarray, y: np.ndarray, names: list[str]) -> dict[str, bytes]:
    return {f"test/{names[label]}/{i:04d}.png": _png(img[0]) for i, (img, label) in enumerate(zip(x, y))}


def _error(call) -> str:
    with pytest.raises(DfmscdError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_format_on_npz_and_archive_agrees(files, tmp_path):
    x, y = kit.pixels(60, seed=3)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    archive = _tar(tmp_path / "test.tar.gz", _class_folders(x, y, kit.CLASS_NAMES))
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as zf:  # the same images, zipped, sub-folder-less
        for name, data in _class_folders(x, y, kit.CLASS_NAMES).items():
            zf.writestr(name.removeprefix("test/"), data)
    for fmt, path in files.items():
        on_npz = evaluate_file(path, tmp_path / "test.npz")
        assert on_npz["format"] == fmt and on_npz["n"] == 60 and on_npz["architecture"] == "resnet8"
        assert on_npz["accuracy"] >= (0.95 if fmt == "onnx-int8" else 1.0)
        assert evaluate_file(path, archive)["accuracy"] == on_npz["accuracy"]
        assert evaluate_file(path, tmp_path / "test.zip")["accuracy"] == on_npz["accuracy"]

    teacher_card = kit.card()
    result = evaluate_models({f"s/{fmt}": p for fmt, p in files.items()}, archive,
                             teacher=(files["safetensors"], teacher_card))
    assert result["data"] == {"file": "test.tar.gz", "n": 60}
    assert set(result["models"]) == {"s/safetensors", "s/onnx", "s/onnx-int8"}
    assert result["models"]["s/onnx"]["accuracy"] == 1.0 and result["teacher"]["format"] == "weights"
    json.dumps(result, allow_nan=False)


def test_cli_evaluates_onnx_and_int8_files_on_an_archive(files, tmp_path, capsys):
    x, y = kit.pixels(20, seed=4)
    archive = _tar(tmp_path / "test.tar.gz", _class_folders(x, y, kit.CLASS_NAMES))
    assert main(["evaluate", str(files["onnx-int8"]), str(archive), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "onnx-int8" and result["samples"] == 20 and 0.9 <= result["accuracy"] <= 1
    assert main(["evaluate", str(files["onnx"]), str(archive)]) == 0
    assert capsys.readouterr().out.startswith("accuracy 1.0000 (100.00%) on 20 samples [resnet8, onnx]")


def test_folders_named_by_integers_are_labels_without_class_names(tmp_path):
    student = export_student("n", kit.student(), kit.card(class_names=False), tmp_path, [])["safetensors"].path
    x, y = kit.pixels(30, seed=5)
    names = ["0", "1", "2", "3"]
    assert evaluate_file(student, _tar(tmp_path / "d.tar.gz", _class_folders(x, y, names)))["accuracy"] == 1.0
    too_high = _tar(tmp_path / "high.tar.gz", {"7/a.png": _png(x[0, 0])})
    assert "labels must be in [0, 3], found 7..7" in _error(lambda: evaluate_file(student, too_high))


def test_wrong_shapes_are_refused_naming_the_expected_shape(files, tmp_path):
    np.savez(tmp_path / "big.npz", x=np.zeros((5, 1, 9, 9), np.uint8), y=np.zeros(5, np.int64))
    assert "expects N x 1 x 8 x 8" in _error(lambda: evaluate_file(files["onnx"], tmp_path / "big.npz"))
    big = _tar(tmp_path / "big.tar.gz", {"a/x.png": _png(np.zeros((9, 9), np.uint8))})
    message = _error(lambda: evaluate_file(files["safetensors"], big))
    assert "9x9 pixels" in message and "1 x 8 x 8 (C x H x W)" in message


def test_labels_out_of_range_and_unknown_classes_are_refused(files, tmp_path):
    x, _ = kit.pixels(5, seed=6)
    np.savez(tmp_path / "y.npz", x=x, y=np.array([0, 1, 2, 3, 4]))
    assert "labels must be in [0, 3]" in _error(lambda: evaluate_file(files["onnx-int8"], tmp_path / "y.npz"))
    unknown = _tar(tmp_path / "u.tar.gz", {"zebra/x.png": _png(x[0, 0])})
    assert "'zebra'" in _error(lambda: evaluate_file(files["onnx"], unknown))


def test_hostile_archives_and_oversized_sets_are_refused(files, tmp_path):
    img = _png(np.zeros((8, 8), np.uint8))
    dotdot = _tar(tmp_path / "dotdot.tar.gz", {"a/x.png": img, "../b/evil.png": img})
    assert "'..'" in _error(lambda: evaluate_file(files["safetensors"], dotdot))
    link = _tar(tmp_path / "link.tar.gz", {"a/x.png": img}, links={"b/passwd.png": "/etc/passwd"})
    assert "links" in _error(lambda: evaluate_file(files["onnx"], link))
    x, y = kit.pixels(5, seed=7)
    many = _tar(tmp_path / "many.tar.gz", _class_folders(x, y, kit.CLASS_NAMES))
    assert "limit" in _error(lambda: evaluate_file(files["onnx"], many, limits=ArchiveLimits(max_images=3)))
    np.savez(tmp_path / "many.npz", x=x, y=y)
    assert "limit" in _error(lambda: evaluate_file(files["onnx"], tmp_path / "many.npz",
                                                   limits=ArchiveLimits(max_images=3)))
    (tmp_path / "data.csv").write_text("1,2\n")
    assert ".npz" in _error(lambda: evaluate_file(files["onnx"], tmp_path / "data.csv"))


def test_an_onnx_file_without_a_card_is_refused(files, tmp_path, capsys):
    plain = export_onnx(kit.student(), kit.card(), tmp_path / "plain.onnx")
    model = onnx.load(str(plain))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    x, y = kit.pixels(5, seed=8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(CardError, match="no dfmscd model card in the ONNX metadata"):
        evaluate_file(plain, tmp_path / "d.npz")
    assert main(["evaluate", str(plain), str(tmp_path / "d.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dfmscd: error: plain.onnx: no dfmscd model card") and "\n" not in err
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    assert main(["evaluate", str(tmp_path / "junk.onnx"), str(tmp_path / "d.npz")]) == 2
    assert "junk.onnx" in capsys.readouterr().err


def test_a_set_is_described_without_a_card_and_hostile_ones_are_refused(tmp_path):
    from dfmscd.evaluate import describe_evaluation_set

    x, y = kit.pixels(12, seed=9)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert describe_evaluation_set(tmp_path / "d.npz") == {
        "kind": "npz", "images": 12, "x_shape": [1, 8, 8], "dtype": "uint8",
        "labels": {"min": int(y.min()), "max": int(y.max())}}
    archive = _tar(tmp_path / "d.tar.gz", _class_folders(x, y, kit.CLASS_NAMES))
    described = describe_evaluation_set(archive)
    assert described["kind"] == "archive" and described["images"] == 12 and described["image_size"] == [8, 8]
    assert described["channels"] == 1 and described["subset"] == "test"
    assert set(described["classes"]) <= set(kit.CLASS_NAMES)
    np.savez(tmp_path / "neg.npz", x=x, y=-np.ones(12, np.int64))
    assert "labels must be >= 0" in _error(lambda: describe_evaluation_set(tmp_path / "neg.npz"))
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 64), np.uint8), y=np.zeros(4, np.int64))
    assert "N x C x H x W" in _error(lambda: describe_evaluation_set(tmp_path / "flat.npz"))
    img = _png(np.zeros((8, 8), np.uint8))
    assert "'..'" in _error(lambda: describe_evaluation_set(_tar(tmp_path / "up.tar.gz", {"a/x.png": img, "../y.png": img})))
    assert "links" in _error(lambda: describe_evaluation_set(
        _tar(tmp_path / "ln.tar.gz", {"a/x.png": img}, links={"b/p.png": "/etc/passwd"})))
    assert "limit" in _error(lambda: describe_evaluation_set(tmp_path / "d.npz", ArchiveLimits(max_images=3)))
