"""Class-folder image archives: read as labelled pixels, and refused when unsafe or oversized."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfmscd.image_archive import ArchiveLimits, ImageArchiveError, read_class_folders, read_text_member
from dfmscd.normalisation import SampleImagesError, sample_stats


def _png(value: int, size: int = 4, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def test_class_folders_give_sorted_labels_and_pixels(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {
        "train/cat/1.png": _png(10), "train/ant/2.png": _png(20), "train/ant/sub/3.png": _png(30),
        "test/cat/4.png": _png(40), "README.txt": b"not an image",
    })
    train = read_class_folders(archive, "train")
    assert train.class_names == ["ant", "cat"]  # sorted folder names
    assert train.names == ["train/ant/2.png", "train/ant/sub/3.png", "train/cat/1.png"]  # sorted by member name
    assert train.y.tolist() == [0, 0, 1]
    assert train.x.shape == (3, 4, 4, 1) and train.x.dtype == np.uint8
    assert train.x[:, 0, 0, 0].tolist() == [20, 30, 10]
    test = read_class_folders(archive, "test", class_names=["ant", "cat"])
    assert test.y.tolist() == [1]
    sample = read_class_folders(archive, "train", limit_per_class=1)
    assert sorted(sample.y.tolist()) == [0, 1]


def test_grey_and_colour_images_become_rgb_and_zip_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "b.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", _png(50))
        zf.writestr("b/2.png", _png(90, mode="RGB"))
        zf.writestr("labels.txt", "a\nb\n")
    out = read_class_folders(path)
    assert out.x.shape == (2, 4, 4, 3)
    assert out.x[0, 0, 0].tolist() == [50, 50, 50] and out.x[1, 0, 0].tolist() == [90, 90, 90]
    assert read_text_member(path, "labels.txt") == "a\nb\n"


@pytest.mark.parametrize("name", ["../evil/1.png", "/abs/1.png", "train/../../x/1.png"])
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "c.tar.gz", {"ok/1.png": _png(1), name: _png(2)})
    with pytest.raises(ImageArchiveError, match="refused"):
        read_class_folders(archive)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_special_files_are_refused_even_outside_the_subset(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("test/cat/link.png")
    link.type = kind
    link.linkname = "/etc/passwd"
    archive = _tar(tmp_path / "d.tar.gz", {"train/cat/1.png": _png(1)}, [link])
    with pytest.raises(ImageArchiveError, match="links and special files are refused"):
        read_class_folders(archive, "train")


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("cat/1.png")
        info.external_attr = (0o120777 << 16)  # a symlink's mode
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ImageArchiveError, match="links and special files"):
        read_class_folders(path)


def test_caps_and_bad_content_give_clear_errors(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "f.tar.gz", {f"c{i % 2}/{i}.png": _png(i) for i in range(6)})
    with pytest.raises(ImageArchiveError, match="more than 5 images"):
        read_class_folders(archive, limits=ArchiveLimits(max_images=5))
    with pytest.raises(ImageArchiveError, match=r"bytes \(limit 10\)"):
        read_class_folders(archive, limits=ArchiveLimits(max_member_bytes=10))
    with pytest.raises(ImageArchiveError, match=r"4x4 pixels \(limit 15\)"):
        read_class_folders(archive, limits=ArchiveLimits(max_pixels=15))
    flat = _tar(tmp_path / "g.tar.gz", {"1.png": _png(1)})
    with pytest.raises(ImageArchiveError, match="outside a class folder"):
        read_class_folders(flat)
    broken = _tar(tmp_path / "h.tar.gz", {"c/1.png": b"\x89PNG not really"})
    with pytest.raises(ImageArchiveError, match="not a readable image"):
        read_class_folders(broken)
    sizes = _tar(tmp_path / "i.tar.gz", {"c/1.png": _png(1, size=4), "c/2.png": _png(1, size=5)})
    with pytest.raises(ImageArchiveError, match="same size"):
        read_class_folders(sizes)
    with pytest.raises(ImageArchiveError, match=r"not among the class names"):
        read_class_folders(archive, class_names=["c0"])
    (tmp_path / "j.tar.gz").write_bytes(b"plainly not an archive")
    with pytest.raises(ImageArchiveError, match="not a readable"):
        read_class_folders(tmp_path / "j.tar.gz")


def test_card_images_accept_an_archive_and_use_its_train_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "k.tar.gz", {"train/a/1.png": _png(0), "train/b/2.png": _png(255), "test/a/3.png": _png(255)})
    stats = sample_stats(archive)
    assert (stats.channels, stats.side, stats.count) == (1, 4, 2)
    assert stats.mean == (0.5,) and stats.std == (0.5,)  # the test image is not counted
    (tmp_path / "bad.tar.gz").write_bytes(b"x")
    with pytest.raises(SampleImagesError):
        sample_stats(tmp_path / "bad.tar.gz")


def test_dfmscd_card_cli_reads_an_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dfmscd.cli import main

    archive = _tar(tmp_path / "l.tar.gz", {"train/a/1.png": _png(0, size=8), "train/b/2.png": _png(255, size=8)})
    assert main(["card", "--architecture", "lenet5", "--num-classes", "2", "--images", str(archive)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["input_shape"] == [1, 8, 8] and card["mean"] == [0.5]
    evil = _tar(tmp_path / "m.tar.gz", {"train/a/1.png": _png(0), "../x.png": _png(1)})
    assert main(["card", "--architecture", "lenet5", "--num-classes", "2", "--images", str(evil)]) != 0
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
