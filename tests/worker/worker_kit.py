"""A real ``celery worker`` in its own process group (so a test can SIGKILL all of it), and the
test side of the worker's pause point (``PausePoint``), so that a test kills, restarts or cancels
a job at an exact point instead of hoping it is still running."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from service_kit import ROOT, wait_for

from dfmscd_service.worker.faults import PAUSE_ENV_VAR, PAUSE_METADATA_KEY, paused_marker, release_marker

TERMINAL = ("succeeded", "failed", "cancelled")


def stop_process_group(proc: subprocess.Popen[bytes] | None) -> bool:
    """SIGTERM a process started with ``start_new_session`` and its children, SIGKILL after 20 s.

    False when there was nothing running to stop.
    """
    if proc is None or proc.poll() is not None:
        return False
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return True


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> "WorkerProcess":
        name = f"test-{secrets.token_hex(3)}@%h"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dfmscd_service.worker.celery_app", "worker", "-Q", self.env.get("DFMSCD_QUEUE_NAME", "distill"),
             "--concurrency", "1", "--loglevel", "INFO", "-n", name,
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 180) -> "WorkerProcess":
        assert self.proc is not None
        wait_for(lambda: self.proc.poll() is not None or b" ready." in self.log_path.read_bytes(), timeout,
                 interval=0.2, what="celery worker ready")
        assert self.proc.poll() is None, self.log()
        return self

    def start(self, timeout: float = 180) -> "WorkerProcess":
        return self.launch().wait_ready(timeout)

    def log(self) -> str:
        """The log's tail, for assertion messages."""
        return self.log_path.read_text(errors="replace")[-6000:]

    def full_log(self) -> str:
        """The whole log, for counting what the worker did (the tail can lose early lines)."""
        return self.log_path.read_text(errors="replace")

    def kill_all(self) -> None:
        """SIGKILL the whole worker (main process and the job's child): a crashed machine."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if stop_process_group(self.proc):
            self._log.close()


class PausePoint:
    """Holds chosen jobs at a checkpoint (``dfmscd_service.worker.faults``, ``DFMSCD_TEST_PAUSE_DIR``).

    Every worker that may run a held job (a rescuer included) gets ``env``; a job is chosen by
    ``metadata(epoch)`` in its create request. ``wait_paused`` returns once the job sits right
    after its checkpoint at epoch >= N (saved and recorded), ``release`` lets it go on. A job is
    held once: the attempt that resumes it after a kill runs through.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {PAUSE_ENV_VAR: str(self.directory)}

    @staticmethod
    def metadata(epoch: int) -> dict[str, int]:
        return {PAUSE_METADATA_KEY: epoch}

    def is_paused(self, job_id: str) -> dict[str, Any] | None:
        """The hook's marker (``job_id``, ``epoch``, ``pid``) once the job has been held."""
        marker = paused_marker(self.directory, job_id)
        return json.loads(marker.read_text()) if marker.exists() else None

    def wait_paused(self, job_id: str, status: Callable[[], str | None] | None = None,
                    timeout: float = 600) -> dict[str, Any]:
        """Until the job is held; ``status`` (the job's status, or None when unknown) fails fast
        when the job ended without pausing. ``timeout`` only bounds a broken run."""

        def held() -> dict[str, Any] | None:
            marker = self.is_paused(job_id)
            if marker is None and status is not None:
                current = status()
                assert current not in TERMINAL, f"job {job_id} ended ({current}) without reaching its pause point"
            return marker

        return wait_for(held, timeout, 0.05, what=f"job {job_id} to be held at its pause point")

    def release(self, job_id: str) -> None:
        release_marker(self.directory, job_id).touch()

    def release_all(self) -> None:
        """Let every held job go on (a failed test must not leave a worker blocked for the next)."""
        for marker in self.directory.glob("*.paused"):
            self.release(marker.name.removesuffix(".paused"))


@pytest.fixture(scope="session")
def pause_point(tmp_path_factory: pytest.TempPathFactory) -> PausePoint:
    """One pause directory for every worker of the session (held once per job across them)."""
    return PausePoint(tmp_path_factory.mktemp("pause"))


@pytest.fixture(scope="session")
def celery_worker(service: dict[str, str], client: Any, pause_point: PausePoint,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    # Cancel poll 0: the worker reads the job's status before every step, so a cancel request
    # must stop it within one step (asserted in test_end_to_end.py).
    env = {**service, **pause_point.env, "DFMSCD_CANCEL_POLL_SECONDS": "0"}
    w = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log").start()
    try:
        yield w
    finally:
        w.stop()
