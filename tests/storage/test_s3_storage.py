"""S3Storage against a real S3-compatible server (moto's, started by s3_kit): every operation
the service uses, multipart across a 5 MiB part boundary, and failed writes leaving nothing."""

from __future__ import annotations

import hashlib
import secrets
import urllib.request

import pytest
from s3_kit import object_names, open_uploads

from dfmscd_service.core.storage_base import StorageUnavailable, local_copy
from dfmscd_service.core.storage_s3 import S3Storage, make_client

MiB = 1024 * 1024


@pytest.fixture
def st(moto_s3, s3_bucket, tmp_path) -> S3Storage:
    return S3Storage(s3_bucket, f"unit-{secrets.token_hex(3)}", moto_s3.client(), 5 * MiB, tmp_path / "tmp")


def test_write_read_range_exists_delete(st, tmp_path):
    data = bytes(range(256)) * 40
    obj = st.write("a/b/file.bin", lambda p: p.write_bytes(data))
    assert obj.sha256 == hashlib.sha256(data).hexdigest() and obj.size_bytes == len(data) and obj.key == "a/b/file.bin"
    assert object_names(st.client, st.bucket, st.prefix) == [f"{st.prefix}/a/b/file.bin"]  # under the prefix
    assert st.exists("a/b/file.bin") and not st.exists("a/b/other.bin") and st.size("a/b/file.bin") == len(data)
    assert st.open("a/b/file.bin").read() == data
    assert b"".join(st.iter_bytes("a/b/file.bin", 100, 1000)) == data[100:1100]
    assert b"".join(st.iter_bytes("a/b/file.bin", len(data) - 1, 1)) == data[-1:]
    with local_copy(st, "a/b/file.bin", tmp_path / "copies", ".bin") as p:
        assert p.read_bytes() == data and p.suffix == ".bin"
    assert list((tmp_path / "copies").iterdir()) == []  # the copy is gone afterwards
    assert list((tmp_path / "tmp").iterdir()) == []  # and so is write()'s temp file
    st.delete("a/b/file.bin")
    assert not st.exists("a/b/file.bin")
    with pytest.raises(FileNotFoundError):
        st.size("a/b/file.bin")
    with pytest.raises(FileNotFoundError):
        list(st.iter_bytes("a/b/file.bin", 0, 10))


def test_streamed_multipart_upload_across_part_boundaries(st):
    chunks = [secrets.token_bytes(64 * 1024 + 7) for _ in range(int(11.5 * MiB) // (64 * 1024))]
    data = b"".join(chunks)
    assert len(data) > 2 * 5 * MiB  # three parts: 5 MiB, 5 MiB, the rest
    w = st.open_writer("big/object.bin")
    for c in chunks:
        w.write(c)
    assert not st.exists("big/object.bin")  # nothing visible before commit
    assert open_uploads(st.client, st.bucket, st.prefix) == [f"{st.prefix}/big/object.bin"]
    obj = w.commit()
    assert obj.sha256 == hashlib.sha256(data).hexdigest() and obj.size_bytes == len(data)
    assert st.size("big/object.bin") == len(data)
    head = st.client.head_object(Bucket=st.bucket, Key=f"{st.prefix}/big/object.bin")
    assert head["ETag"].strip('"').endswith("-3")  # really a 3-part multipart object
    boundary = 5 * MiB
    assert b"".join(st.iter_bytes("big/object.bin", boundary - 10, 20)) == data[boundary - 10:boundary + 10]
    assert open_uploads(st.client, st.bucket, st.prefix) == []


def test_failed_writes_leave_nothing(st):
    w = st.open_writer("fail/one.bin")
    w.write(secrets.token_bytes(6 * MiB))  # one part already sent
    assert open_uploads(st.client, st.bucket, st.prefix) == [f"{st.prefix}/fail/one.bin"]
    w.abort()

    def failing(p):
        p.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        st.write("fail/two.bin", failing)
    assert object_names(st.client, st.bucket, st.prefix) == []
    assert open_uploads(st.client, st.bucket, st.prefix) == []


def test_put_file_moves_and_delete_prefix_removes_objects_and_uploads(st, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    obj = st.put_file("t/1/weights.pt", src)
    assert not src.exists() and obj.sha256 == hashlib.sha256(b"x" * 1000).hexdigest()
    st.put_file("t/10/weights.pt", _file(tmp_path / "keep.bin", b"keep"))
    pending = st.open_writer("t/1/pending.bin")
    pending.write(secrets.token_bytes(5 * MiB))
    st.delete_prefix("t/1")
    assert object_names(st.client, st.bucket, st.prefix) == [f"{st.prefix}/t/10/weights.pt"]  # not a sibling
    assert open_uploads(st.client, st.bucket, st.prefix) == []


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../../b", "", "a//b", "./x"])
def test_keys_cannot_escape_the_prefix(st, key):
    with pytest.raises(ValueError):
        st.write(key, lambda p: p.write_bytes(b"1"))


def test_presigned_url_serves_the_object(st):
    st.write("p/x.bin", lambda p: p.write_bytes(b"presigned bytes"))
    url = st.presigned_url("p/x.bin", "x.bin", 60)
    assert url and "Signature" in url or "X-Amz-Signature" in url
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"presigned bytes"
        assert 'filename="x.bin"' in r.headers["Content-Disposition"]


def test_an_unreachable_server_raises_storage_unavailable(s3_bucket, tmp_path, monkeypatch):
    from s3_kit import CREDENTIALS, free_port

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    dead = S3Storage(s3_bucket, "x", make_client(f"http://127.0.0.1:{free_port()}", 2, 1), 5 * MiB, tmp_path)
    with pytest.raises(StorageUnavailable):
        dead.exists("a")
    with pytest.raises(StorageUnavailable):
        dead.write("a", lambda p: p.write_bytes(b"1"))


def _file(path, data):
    path.write_bytes(data)
    return path


def test_missing_credentials_are_a_storage_error_not_an_outage(moto_s3, s3_bucket, tmp_path, monkeypatch):
    from dfmscd_service.core.storage_base import StorageError

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    st = S3Storage(s3_bucket, "x", make_client(moto_s3.url, 2, 1), 5 * MiB, tmp_path)
    with pytest.raises(StorageError) as info:
        st.exists("a")
    assert not isinstance(info.value, StorageUnavailable) and "credentials" in str(info.value)
