"""API memory while a 1 GiB upload streams in (a script, not a test).

    uv run python benchmarks/upload_memory.py                 # 1 GiB, cap 512 MiB then 2 GiB
    uv run python benchmarks/upload_memory.py --size-mib 256  # quicker

Starts ``dfmscd serve`` (the API runs in that process) on a free 127.0.0.1 port with a temp
DATA_DIR, twice: with ``DFMSCD_MAX_UPLOAD_BYTES`` below the body size (expect 413, cut off
while streaming) and above it (the whole body goes to a temp file, then validation refuses
the junk with a 4xx). The body is a multipart form generated on the fly in 1 MiB chunks and
sent chunked (no Content-Length, so the cap cannot be judged from a header), never held in
memory. The API process's VmRSS (/proc/PID/status) is sampled every 100 ms; the report is the
baseline (idle, after start-up), the peak during the upload, and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.load import CARD, load_average, rss_kib, start_embedded  # noqa: E402

MiB = 1024 * 1024
BOUNDARY = "dfmscd-upload-memory-boundary"


def multipart_body(size: int, sent: list[int]) -> Iterator[bytes]:
    """Card first, then ``size`` bytes of junk weights, 1 MiB at a time."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"card\"\r\n\r\n{json.dumps(CARD)}\r\n"
           f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.safetensors\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    chunk = bytes(range(256)) * (MiB // 256)  # one reusable chunk: memory is one chunk whatever the size
    left = size
    while left > 0:
        piece = chunk if left >= MiB else chunk[:left]
        left -= len(piece)
        sent[0] += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.samples.append(rss_kib(self.pid))
            except OSError:
                return
            self.stop_event.wait(self.interval)

    def stop(self) -> list[int]:
        self.stop_event.set()
        self.join(5)
        return self.samples


def measure(size: int, cap: int) -> dict[str, object]:
    server = start_embedded(DFMSCD_MAX_UPLOAD_BYTES=str(cap))
    try:
        baseline = [rss_kib(server.api_pid)]
        for _ in range(9):  # a second of idle samples
            time.sleep(0.1)
            baseline.append(rss_kib(server.api_pid))
        sampler = RssSampler(server.api_pid)
        sampler.start()
        sent = [0]
        t0 = time.monotonic()
        status: object
        try:
            r = httpx.post(server.base_url + "/v1/teachers", content=multipart_body(size, sent),
                           headers={"Authorization": f"Bearer {server.key}",
                                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                           timeout=httpx.Timeout(600.0))
            status, body = r.status_code, r.text[:300]
        except httpx.HTTPError as exc:  # the server may close the connection after its 413
            status, body = type(exc).__name__, str(exc)[:300]
        elapsed = time.monotonic() - t0
        samples = sampler.stop()
        tmp_left = [str(p) for p in (server.data_dir / "tmp").rglob("*") if p.is_file()]
        base = max(baseline)
        peak = max(samples) if samples else base
        return {
            "body_bytes": size, "cap_bytes": cap, "status": status, "response": body,
            "bytes_sent_by_client": sent[0], "seconds": round(elapsed, 1),
            "rss_baseline_mib": round(base / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
            "rss_growth_mib": round((peak - base) / 1024, 1), "samples": len(samples),
            "tmp_files_left": tmp_left, "load_average": load_average(),
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    size = args.size_mib * MiB
    results = [measure(size, size // 2), measure(size, size * 2)]
    text = json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
