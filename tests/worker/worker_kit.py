"""A real ``celery worker`` in its own process group (so a test can SIGKILL all of it)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_kit import ROOT, wait_for


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


@pytest.fixture(scope="session")
def celery_worker(service: dict[str, str], client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    # Cancel poll 0: the worker reads the job's status before every step, so a cancel request
    # must stop it within one step (asserted in test_end_to_end.py).
    env = {**service, "DFMSCD_CANCEL_POLL_SECONDS": "0"}
    w = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log").start()
    try:
        yield w
    finally:
        w.stop()
