"""Private servers and service processes for fault tests: things a test may kill and restart.

The shared PostgreSQL and Redis are never restarted: each fault module starts its own
PostgreSQL cluster (``initdb`` as the ``postgres`` user, since we may run as root) and its own
``redis-server`` (no persistence, like a cache-configured Redis) on free ports, then a real API
(uvicorn) and real Celery workers pointed at them. Data files live under a ``tmpfs`` so that a
disk-full fault is a real ENOSPC from the kernel.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for extra in (ROOT, ROOT / "tests" / "api", ROOT / "tests" / "worker"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from service_kit import require_service, wait_for  # noqa: E402
from worker_kit import PausePoint, WorkerProcess, stop_process_group  # noqa: E402,F401  (for the fault tests)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        require_service("PostgreSQL binaries", lambda: (_ for _ in ()).throw(FileNotFoundError(name)))
    return found[-1]


class PrivatePostgres:
    """A throw-away PostgreSQL cluster; ``stop()``/``start()`` is a real server restart."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="dfmscd-pg-"))
        self.port = free_port()
        self.data = self.base / "data"
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self._run([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"])

    def _run(self, cmd: list[str]) -> None:
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]} {out.stderr[-2000:]}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.base / "server.log"),
                   "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client (what a restart or failover does); ``immediate`` is a crash."""
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except AssertionError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` without persistence: a restart loses every queued message."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="dfmscd-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            require_service("redis-server", lambda: (_ for _ in ()).throw(FileNotFoundError("redis-server")))
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.base)],
            stdout=open(self.base / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, 30, 0.05, what="private redis-server")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no persistence: queued messages are gone
            self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class ApiProcess:
    """``uvicorn dfmscd_service.api.main:create_app --factory`` in its own process, restartable on the same port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> "ApiProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "dfmscd_service.api.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--timeout-keep-alive", "75", "--loop", "asyncio"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 120) -> "ApiProcess":
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.base_url + "/healthz", timeout=30).status_code == 200  # a bound, not a speed check
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, 0.1, what="the API to answer /healthz")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if stop_process_group(self.proc):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def mount_tmpfs(path: Path, size_bytes: int) -> bool:
    """A small tmpfs at ``path`` (needs root / CAP_SYS_ADMIN); False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    return out.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def temp_files(*roots: Path) -> list[Path]:
    """Leftovers of interrupted writes: the names the storage backends (dfmscd_service.core.storage_*) / dfmscd.io / dfmscd_service.api.services.uploads use for temp files."""
    from dfmscd_service.core.storage_local import _is_temp_name

    return [p for r in roots if r.is_dir() for p in r.rglob("*") if p.is_file() and _is_temp_name(p.name)]


def api_json(client: httpx.Client, method: str, url: str, **kw: Any) -> Any:
    r = client.request(method, url, **kw)
    assert r.status_code < 300, (r.status_code, r.text)
    return r.json()
