"""LocalStorage: atomic writes, recorded sha256, no path escapes."""

from __future__ import annotations

import hashlib

import pytest

from dfmscd_service.core.storage_local import LocalStorage


def test_write_is_atomic_and_hashed(tmp_path):
    st = LocalStorage(tmp_path / "root")
    obj = st.write("a/b/file.bin", lambda p: p.write_bytes(b"hello"))
    assert obj.sha256 == hashlib.sha256(b"hello").hexdigest() and obj.size_bytes == 5
    assert st.open("a/b/file.bin").read() == b"hello" and st.exists("a/b/file.bin")

    def failing(p):
        p.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        st.write("a/b/file.bin", failing)
    assert st.open("a/b/file.bin").read() == b"hello"  # the old object is intact
    assert [p.name for p in (tmp_path / "root" / "a" / "b").iterdir()] == ["file.bin"]  # no temp left


def test_put_file_moves_and_hashes(tmp_path):
    st = LocalStorage(tmp_path / "root")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    obj = st.put_file("t/1.bin", src)
    assert not src.exists() and obj.sha256 == hashlib.sha256(b"x" * 1000).hexdigest()
    st.delete_prefix("t")
    assert not st.exists("t/1.bin")


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../../b", "", "a//b", "./x"])
def test_keys_cannot_escape_the_root(tmp_path, key):
    st = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError):
        st.write(key, lambda p: p.write_bytes(b"1"))


def test_stale_temp_files_are_removed_and_fresh_ones_and_objects_kept(tmp_path):
    import os
    import time

    from dfmscd_service.core.storage_local import remove_stale_temp_files

    st = LocalStorage(tmp_path / "root")
    kept = st.write("teachers/t1/weights.safetensors", lambda p: p.write_bytes(b"w"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = [tmp / "upload-abc.part", st.root / "teachers" / "t1" / ".tmp-x1", st.root / "jobs" / "j" / "..tmp-y.z.tmp"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
        old = time.time() - 3600
        os.utime(p, (old, old))
    fresh = tmp / "upload-live.part"
    fresh.write_bytes(b"still being written")
    removed = remove_stale_temp_files([tmp, st.root], older_than_s=600)
    assert sorted(removed) == sorted(stale)
    assert fresh.exists() and st.open(kept.key).read() == b"w"


def test_streamed_writer_commits_atomically_or_leaves_nothing(tmp_path):
    from dfmscd_service.core.storage_base import local_copy

    st = LocalStorage(tmp_path / "root")
    w = st.open_writer("s/obj.bin")
    for part in (b"abc", b"", b"def" * 1000):
        w.write(part)
    assert not st.exists("s/obj.bin")  # nothing visible before commit
    obj = w.commit()
    data = b"abc" + b"def" * 1000
    assert obj.sha256 == hashlib.sha256(data).hexdigest() and obj.size_bytes == len(data)
    assert b"".join(st.iter_bytes("s/obj.bin", 2, 5)) == data[2:7]
    with local_copy(st, "s/obj.bin", tmp_path / "copies") as p:
        assert p == st.local_path("s/obj.bin")  # on disk: the stored file itself, no copy
    aborted = st.open_writer("s/obj.bin")
    aborted.write(b"replacement that never lands")
    aborted.abort()
    assert st.open("s/obj.bin").read() == data  # the old object is intact
    assert [p.name for p in (tmp_path / "root" / "s").iterdir()] == ["obj.bin"]  # no temp left
