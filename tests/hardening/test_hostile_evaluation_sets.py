"""Hostile and broken evaluation sets through the real HTTP API (POST /v1/evaluation-sets, a job
that names one, an evaluation request), and downloads of formats a student has no file in.

Each case is a real crafted file: a 4xx with the standard error body and a precise one-line
message, no code run (an object array in an .npz would need a pickle), and nothing added under
DATA_DIR/storage or DATA_DIR/tmp.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hardening_kit import settings_override, storage_files
from service_kit import (
    assert_error,
    job_body,
    make_key,
    store_results_like_the_worker,
    upload_evaluation_set,
    write_evaluation_archive,
    write_evaluation_npz,
)


def _png(side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickled_npz(path: Path, marker: Path) -> Path:
    x = np.empty(2, dtype=object)
    x[0], x[1] = _Payload(marker), _Payload(marker)
    np.savez(path, x=x, y=np.zeros(2, np.int64))  # np.savez pickles an object array
    return path


# (id, build(folder, marker) -> path, with the teacher's card?, message fragments)
CASES = [
    ("npz-wrong-shape", lambda d, m: write_evaluation_npz(d / "big.npz", x=np.zeros((4, 1, 9, 9), np.uint8),
                                                          y=np.zeros(4, np.int64)),
     True, ["big.npz", "the model card expects N x 1 x 8 x 8"]),
    ("archive-wrong-shape", lambda d, m: write_evaluation_archive(d / "big.tar.gz", n=0, members={"3/a.png": _png(9)}),
     True, ["big.tar.gz", "9x9 pixels", "1 x 8 x 8 (C x H x W)"]),
    ("labels-out-of-range", lambda d, m: write_evaluation_npz(d / "y.npz", n=4, y=np.array([0, 3, 12, 9])),
     True, ["labels must be in [0, 9], found 0..12"]),
    ("archive-class-out-of-range", lambda d, m: write_evaluation_archive(d / "c.tar.gz", n=0, members={"12/a.png": _png(8)}),
     True, ["labels must be in [0, 9], found 12..12"]),
    ("negative-labels", lambda d, m: write_evaluation_npz(d / "neg.npz", n=4, y=np.array([0, -1, 2, 3])),
     False, ["labels must be >= 0"]),
    ("dotdot-member", lambda d, m: write_evaluation_archive(d / "up.tar.gz", n=2, members={"../evil/a.png": _png(8)}),
     False, ["'../evil/a.png'", "'..' in a path is refused"]),
    ("symlink-member", lambda d, m: write_evaluation_archive(d / "ln.tar.gz", n=2, links={"test/1/p.png": "/etc/passwd"}),
     False, ["'test/1/p.png'", "links and special files are refused"]),
    ("pickled-object-array", lambda d, m: _pickled_npz(d / "evil.npz", m), False, ["evil.npz", "unreadable .npz"]),
    ("not-an-npz", lambda d, m: (d / "fake.npz").write_bytes(b"PK not a zip") and d / "fake.npz", False,
     ["fake.npz", "not an .npz archive"]),
    ("not-an-archive", lambda d, m: (d / "fake.tar.gz").write_bytes(b"\x1f\x8b junk") and d / "fake.tar.gz", False,
     ["fake.tar.gz", "not a readable .tar/.tar.gz/.zip archive"]),
    ("unknown-suffix", lambda d, m: (d / "data.csv").write_text("1,2\n") and d / "data.csv", False,
     ["'data.csv'", ".npz", ".tgz"]),
    ("flat-x", lambda d, m: write_evaluation_npz(d / "flat.npz", x=np.zeros((4, 64), np.uint8), y=np.zeros(4, np.int64)),
     False, ["x has shape (4, 64)"]),
]


@pytest.mark.parametrize(("build", "with_card", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_set_is_422_not_run_and_not_kept(client, auth, teacher, tmp_path, leaves_no_trace,
                                                 build, with_card, fragments):
    marker = tmp_path / "pwned-by-evaluation-set"
    path = build(tmp_path, marker)
    err = assert_error(upload_evaluation_set(client, auth, path, teacher["id"] if with_card else None),
                       422, "invalid_evaluation_set")
    for fragment in fragments:
        assert fragment in err["message"], err
    assert "upload-" not in err["message"] and "\n" not in err["message"]  # the user's file, never the temp file
    assert not marker.exists()
    leaves_no_trace()


def test_the_pickle_payload_really_would_run(tmp_path):
    """Guards the case above: the crafted object array is live if something did unpickle it."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


def test_a_set_over_the_size_cap_is_413(client, auth, tmp_path, leaves_no_trace):
    path = write_evaluation_npz(tmp_path / "big.npz", n=40)
    with settings_override(max_evaluation_set_bytes=str(path.stat().st_size - 1)):
        err = assert_error(upload_evaluation_set(client, auth, path), 413, "payload_too_large")
    assert f"limit of {path.stat().st_size - 1} bytes" in err["message"]
    leaves_no_trace()


def test_a_set_over_the_quota_is_413(client, teacher_file, tmp_path, leaves_no_trace):
    headers = {"Authorization": f"Bearer {make_key('set-quota')}"}
    path = write_evaluation_npz(tmp_path / "d.npz", n=40)
    with settings_override(max_storage_bytes_per_key=str(path.stat().st_size - 1)):
        assert_error(upload_evaluation_set(client, headers, path), 413, "storage_quota_exceeded")
    leaves_no_trace()


def test_form_fields_and_another_owners_teacher(client, auth, other_auth, teacher, tmp_path, leaves_no_trace):
    path = write_evaluation_npz(tmp_path / "d.npz", n=4)
    with open(path, "rb") as fh:
        r = client.post("/v1/evaluation-sets", headers=auth, files={"file": ("d.npz", fh)},
                        data={"card": json.dumps({"architecture": "resnet8"})})
    assert "unexpected form field(s): card" in assert_error(r, 422, "validation_error")["message"]
    assert_error(client.post("/v1/evaluation-sets", headers=auth, data={"teacher_id": teacher["id"]},
                             files={"other": ("x", b"1")}), 422, "validation_error")
    assert_error(upload_evaluation_set(client, other_auth, path, teacher["id"]), 404, "not_found")  # not theirs
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_error(upload_evaluation_set(client, auth, tmp_path / "empty.npz"), 422, "invalid_evaluation_set")
    leaves_no_trace()


def test_a_job_or_an_evaluation_with_a_set_that_does_not_fit_is_422(client, auth, teacher, tmp_path):
    path = write_evaluation_npz(tmp_path / "big.npz", x=np.zeros((4, 1, 9, 9), np.uint8), y=np.zeros(4, np.int64))
    stored = upload_evaluation_set(client, auth, path)  # no card yet: it holds 9x9 images, which is no error alone
    assert stored.status_code == 201, stored.text
    assert stored.json()["summary"] == {"kind": "npz", "images": 4, "x_shape": [1, 9, 9], "dtype": "uint8",
                                        "labels": {"min": 0, "max": 0}}
    before = client.get("/v1/jobs?limit=100", headers=auth).json()["data"]
    body = job_body(teacher["id"], evaluation_set_id=stored.json()["id"])
    err = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_evaluation_set")
    assert "big.npz" in err["message"] and "N x 1 x 8 x 8" in err["message"]
    assert client.get("/v1/jobs?limit=100", headers=auth).json()["data"] == before  # no job made
    assert_error(client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"], evaluation_set_id="evs_" + "0" * 28)),
                 404, "not_found")

    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    store_results_like_the_worker(jid, teacher["card"], b"\x89PNG\r\n\x1a\nx")
    err = assert_error(client.post(f"/v1/jobs/{jid}/evaluations", headers=auth,
                                   json={"evaluation_set_id": stored.json()["id"]}), 422, "invalid_evaluation_set")
    assert "N x 1 x 8 x 8" in err["message"]
    assert client.get(f"/v1/jobs/{jid}/evaluations", headers=auth).json()["data"] == []
    assert client.delete(f"/v1/evaluation-sets/{stored.json()['id']}", headers=auth).status_code == 204


def test_a_format_the_student_has_no_file_in_is_4xx_and_stores_nothing(client, auth, teacher):
    jid = client.post("/v1/jobs", headers=auth, json=job_body(teacher["id"])).json()["id"]
    store_results_like_the_worker(jid, teacher["card"], b"\x89PNG\r\n\x1a\nx")
    before = storage_files()  # the results above are this test's own; nothing more may appear below
    url = f"/v1/jobs/{jid}/students/resnet8/weights"
    assert_error(client.get(url, params={"format": "onnx-int8"}, headers=auth), 409, "no_calibration_sample")
    assert_error(client.get(url, params={"format": "tflite"}, headers=auth), 422, "validation_error")
    assert_error(client.get(url, params={"format": "../../etc/passwd"}, headers=auth), 422, "validation_error")
    assert storage_files() == before
