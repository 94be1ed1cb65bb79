"""Load figures for the API (a script, not a test): wrk against the job poll and list pages, then concurrent uploads.

    uv run python benchmarks/load.py --mode both                # embedded and PostgreSQL+Redis, 200 connections, 15 s
    uv run python benchmarks/load.py --mode embedded --connections 200 --seconds 15 --uploads 20

Each mode starts its own server on a free 127.0.0.1 port with a temporary DATA_DIR (embedded:
``dfmscd serve`` on SQLite; pg: uvicorn + celery on a fresh database on the local PostgreSQL,
dropped afterwards, and a unique Redis key prefix), creates an API key, uploads a teacher and
runs a few tiny jobs to the end (so each poll carries a full report). Then ``wrk`` (1 thread,
``--connections`` keep-alive connections, ``--seconds`` each; a separate C process, so that the
load generator does not starve a Python server of CPU) hits, one after the other: ``/healthz``
(the framework's own rate on this machine), ``GET /v1/jobs/{id}`` (rotating over the jobs),
``GET /v1/jobs?limit=20`` and ``GET /v1/teachers?limit=20``. Each endpoint reports requests/s,
p50/p99 latency, errors (non-2xx and socket errors) and its ratio to ``/healthz``; the API
process's RSS is read from /proc after the load. Finally ``--uploads`` different teachers are
uploaded at once and each one's sha256 is checked three ways: the response, a GET of the
teacher, and the stored file on disk. The request-rate limit is raised for the run (wrk shares
one key). Only 127.0.0.1 is ever contacted. Needs ``wrk`` on PATH (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("DFMSCD_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DFMSCD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CARD = {"architecture": "resnet8", "num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}
TINY = dict(synth_batch_size=16, kd_batch_size=16, kd_steps=2, latent_dim=8, generator_width=8,
            pool_capacity=256, checkpoint_every=1, device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (psutil-free: /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def api_pids(pid: int) -> list[int]:
    """The processes that answer requests: ``pid`` itself, or, when it is uvicorn's ``--workers``
    supervisor (which only watches them), its children."""
    if "--workers" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0"):
        return [pid]
    children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return [c for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


# --------------------------------------------------------------------------- servers
@dataclass
class Server:
    """A running API (and worker) started by this script; ``api_pid`` is the API process."""

    base_url: str
    key: str
    data_dir: Path
    api_pid: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanup: list[Any] = field(default_factory=list)
    log_paths: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for fn in reversed(self.cleanup):
            fn()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMSCD_")}
    env.update({"DFMSCD_DATA_DIR": str(data_dir), "DFMSCD_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT),
                "DFMSCD_RATE_LIMIT_PER_MINUTE": "10000000"})
    env.update(extra)
    return env


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def start_embedded(**settings: str) -> Server:
    """``dfmscd serve`` (API in this child process, its own worker as a grandchild)."""
    data_dir = Path(tempfile.mkdtemp(prefix="dfmscd-load-"))
    port = free_port()
    log = data_dir / "serve.log"
    env = _env(data_dir, **settings)
    proc = subprocess.Popen([sys.executable, "-m", "dfmscd", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", "", data_dir, proc.pid, [proc], log_paths=[log])
    server.cleanup.append(lambda: subprocess.run(["rm", "-rf", str(data_dir)], check=False))
    try:
        _wait_ready(server.base_url, proc, log)
        key = next((ln.strip() for ln in log.read_text().splitlines() if ln.strip().startswith("dfk_")), "")
        if not key:
            raise RuntimeError("dfmscd serve printed no API key")
        server.key = key
    except BaseException:
        server.stop()
        raise
    return server


def start_pg_redis(api_processes: int = 1, **settings: str) -> Server:
    """uvicorn (``--workers api_processes``) + one celery worker on a fresh PostgreSQL database and
    a unique Redis prefix."""
    from sqlalchemy import create_engine, text

    data_dir = Path(tempfile.mkdtemp(prefix="dfmscd-load-pg-"))
    name = f"dfmscd_load_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    prefix = f"dfmscd-load-{secrets.token_hex(4)}:"

    def drop() -> None:
        import redis

        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)

    env = _env(data_dir, DFMSCD_DATABASE_URL=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
               DFMSCD_BROKER_URL=REDIS_URL, DFMSCD_BROKER_KEY_PREFIX=prefix, **settings)
    port = free_port()
    api_log, worker_log = data_dir / "api.log", data_dir / "worker.log"
    server = Server(f"http://127.0.0.1:{port}", "", data_dir, 0, cleanup=[drop], log_paths=[api_log, worker_log])
    try:
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "dfmscd_service.api.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", "--timeout-keep-alive", "75", "--loop", "asyncio",
             *(["--workers", str(api_processes)] if api_processes > 1 else [])],
            env=env, cwd=ROOT, stdout=open(api_log, "wb"), stderr=subprocess.STDOUT)
        server.procs.append(api)
        server.api_pid = api.pid
        _wait_ready(server.base_url, api, api_log)  # migrations ran in its lifespan
        from dfmscd_service.cli import worker_command

        server.procs.insert(0, subprocess.Popen(worker_command(), env=env, cwd=ROOT, stdout=open(worker_log, "wb"),
                                                stderr=subprocess.STDOUT))
        out = subprocess.run([sys.executable, "-m", "dfmscd", "keys", "create", "--name", "load"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True)
        server.key = out.stdout.strip().splitlines()[-1]
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------- workload
def make_teacher(path: Path, seed: int) -> str:
    """A small resnet8 teacher (1x8x8) with non-trivial BN statistics; returns its sha256."""
    import torch
    from safetensors.torch import save_file

    from dfmscd.models import create_model

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=8).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(32, 1, 8, 8, generator=g) * 0.25 + 0.5)
    save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


WRK_SCRIPT = """
local paths = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n %% #paths) + 1])
end
"""


def _wrk_ms(value: str) -> float:
    """wrk's latency text (``812.34us``, ``1.34ms``, ``1.78s``) in milliseconds."""
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if value.endswith(suffix):
            return round(float(value[: -len(suffix)]) * scale, 2)
    return float("nan")


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, p50/p90/p99 and errors (non-2xx + connect/read/write/timeout) from ``wrk --latency``."""
    out: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            out["req_per_s"] = float(parts[1])
        elif len(parts) >= 2 and parts[0] in ("50%", "90%", "99%"):
            out[f"p{parts[0][:-1]}_ms"] = _wrk_ms(parts[1])
        elif "requests in" in line:
            out["requests"] = int(parts[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non_2xx"] = int(parts[-1])
        elif line.strip().startswith("Socket errors:"):
            out["socket_errors"] = sum(int(v.strip(",")) for v in parts[3::2])
    out["errors"] = out["non_2xx"] + out["socket_errors"]
    return out


def run_wrk(base_url: str, paths: list[str], key: str | None, connections: int, seconds: float,
            workdir: Path) -> dict[str, Any]:
    """One wrk run (1 thread) cycling over ``paths``; its figures plus the raw output's tail."""
    script = workdir / "paths.lua"
    script.write_text(WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", str(script)]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    done = subprocess.run(cmd + [base_url], capture_output=True, text=True, timeout=seconds + 60, check=True)
    return {"paths": paths if len(paths) <= 3 else paths[:3] + ["..."], **parse_wrk(done.stdout)}


def poll_load(server: Server, job_ids: list[str], connections: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """wrk on /healthz, then the job poll and the two list pages; ratios to /healthz."""
    targets = {
        "healthz": (["/healthz"], None),
        "job_poll": ([f"/v1/jobs/{j}" for j in job_ids], server.key),
        "job_list": (["/v1/jobs?limit=20"], server.key),
        "teacher_list": (["/v1/teachers?limit=20"], server.key),
    }
    figures: dict[str, Any] = {"connections": connections, "seconds": seconds, "threads": 1}
    for name, (paths, key) in targets.items():
        figures[name] = run_wrk(server.base_url, paths, key, connections, seconds, workdir)
    base = figures["healthz"].get("req_per_s") or float("nan")
    for name in ("job_poll", "job_list", "teacher_list"):
        figures[name]["ratio_to_healthz"] = round(figures[name].get("req_per_s", 0.0) / base, 3)
    return figures


async def concurrent_uploads(server: Server, n: int, workdir: Path) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.key}"}
    files = []
    for i in range(n):
        path = workdir / f"teacher-{i}.safetensors"
        files.append((path, make_teacher(path, 100 + i)))

    async def one(client: httpx.AsyncClient, path: Path) -> httpx.Response:
        with open(path, "rb") as fh:
            return await client.post("/v1/teachers", files={"file": (path.name, fh, "application/octet-stream")},
                                     data={"card": json.dumps(CARD)})

    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=httpx.Timeout(120.0)) as client:
        t0 = time.monotonic()
        responses = await asyncio.gather(*(one(client, p) for p, _ in files), return_exceptions=True)
        elapsed = time.monotonic() - t0
        ok = mismatched = 0
        problems: list[str] = []
        for (path, digest), r in zip(files, responses):
            if isinstance(r, BaseException) or r.status_code != 201:
                problems.append(f"{path.name}: {r if isinstance(r, BaseException) else r.status_code}")
                continue
            body = r.json()
            again = (await client.get(f"/v1/teachers/{body['id']}")).json()
            stored = next((server.data_dir / "storage" / "teachers" / body["id"]).glob("weights.*"), None)
            on_disk = hashlib.sha256(stored.read_bytes()).hexdigest() if stored else None
            if body["sha256"] == digest == again["sha256"] == on_disk and body["size_bytes"] == path.stat().st_size:
                ok += 1
            else:
                mismatched += 1
                problems.append(f"{path.name}: sha256 mismatch")
    return {"uploads": n, "verified": ok, "mismatched": mismatched, "failed": n - ok - mismatched,
            "seconds": round(elapsed, 1), "problems": problems[:5]}


def setup_jobs(server: Server, workdir: Path, n_jobs: int, wait_s: float = 300.0) -> list[str]:
    """A teacher and ``n_jobs`` tiny jobs, waited for (up to ``wait_s``) so that polls carry reports."""
    headers = {"Authorization": f"Bearer {server.key}"}
    path = workdir / "poll-teacher.safetensors"
    make_teacher(path, 7)
    # generous: the first upload may wait for the API's torch process to start (seconds; minutes on a busy host)
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=600) as c, open(path, "rb") as fh:
        r = c.post("/v1/teachers", files={"file": (path.name, fh, "application/octet-stream")},
                   data={"card": json.dumps(CARD)})
        r.raise_for_status()
        tid = r.json()["id"]
        ids = []
        for _ in range(n_jobs):
            body = {"teacher_id": tid, "students": [{"architecture": "resnet8"}], "preset": "fast",
                    "budget": {"epochs": 2}, "hyperparameters": TINY}
            r = c.post("/v1/jobs", json=body)
            r.raise_for_status()
            ids.append(r.json()["id"])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if all(c.get(f"/v1/jobs/{j}").json()["status"] in ("succeeded", "failed", "cancelled") for j in ids):
                break
            time.sleep(1.0)
    return ids


def run_mode(mode: str, connections: int, seconds: float, uploads: int,
             settings: dict[str, str] | None = None, api_processes: int = 1) -> dict[str, Any]:
    settings = settings or {}
    server = start_embedded(**settings) if mode == "embedded" else start_pg_redis(api_processes, **settings)
    try:
        with tempfile.TemporaryDirectory(prefix="dfmscd-load-files-") as tmp:
            work = Path(tmp)
            job_ids = setup_jobs(server, work, 5)
            load_before = load_average()
            pids = api_pids(server.api_pid)
            rss_before = max(rss_kib(p) for p in pids)
            polling = poll_load(server, job_ids, connections, seconds, work)
            polling["load_average_before"], polling["load_average_after"] = load_before, load_average()
            polling["api_rss_mib_before_after"] = [round(rss_before / 1024), round(max(rss_kib(p) for p in pids) / 1024)]
            up = asyncio.run(concurrent_uploads(server, uploads, work))
            with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"},
                              timeout=60) as c:
                statuses = [c.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids]
        rss = [rss_kib(p) for p in pids]
        return {"mode": mode, "settings": settings, "api_processes": len(pids), "polling": polling, "uploads": up,
                "job_statuses_after": statuses, "api_rss_mib": round(max(rss) / 1024),
                "api_rss_mib_all_processes": round(sum(rss) / 1024)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["embedded", "pg", "both"], default="both")
    ap.add_argument("--connections", type=int, default=200, help="wrk connections (one thread)")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each wrk run")
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--api-processes", type=int, default=1,
                    help="pg mode: uvicorn --workers (embedded mode is always one process)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a server setting, e.g. --set API_THREADS=8 (becomes DFMSCD_API_THREADS)")
    args = ap.parse_args(argv)
    settings = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error(f"--set wants NAME=VALUE, got {item!r}")
        settings[f"DFMSCD_{name.upper()}"] = value
    modes = ["embedded", "pg"] if args.mode == "both" else [args.mode]
    results = []
    for m in modes:
        results.append(run_mode(m, args.connections, args.seconds, args.uploads, settings, args.api_processes))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # each mode as soon as it is done
    text = json.dumps({"cpus": os.cpu_count(), "load_average_end": load_average(), "results": results}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    bad = any(any(r["polling"][k]["errors"] for k in ("healthz", "job_poll", "job_list", "teacher_list"))
              or r["uploads"]["verified"] != args.uploads for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
