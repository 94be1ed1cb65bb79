"""A real S3-compatible server for the tests: moto's standalone server in its own process.

One server per test session (``moto_s3``), on a free port of 127.0.0.1, answered-to before use
(polled, never slept on), stopped at the end. ``MotoServer`` also serves the outage test, which
stops a private server mid-job. Each session gets its own bucket, each use a fresh prefix.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_kit import wait_for

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"moto server exited: {self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> "MotoServer":
        log = open(self.log_path, "ab")
        env = {**os.environ, **CREDENTIALS}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        wait_for(self._answers, 60, 0.1, what=f"moto server on {self.url}")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def client(self) -> Any:
        """One boto3 client per server (making one costs a second on a busy machine)."""
        import boto3
        from botocore.config import Config

        if self._client is None:  # credentials passed here: this process's environment stays as it was
            session = boto3.session.Session(aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"])
            config = Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                            connect_timeout=5, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})
            self._client = session.client("s3", endpoint_url=self.url, config=config)
        return self._client

    def new_bucket(self) -> str:
        name = f"dfmscd-test-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str) -> dict[str, str]:
        """Service settings that put storage in ``s3://bucket/prefix`` on this server."""
        return {**CREDENTIALS, "DFMSCD_STORAGE_URL": f"s3://{bucket}/{prefix}", "DFMSCD_S3_ENDPOINT_URL": self.url,
                "DFMSCD_S3_TIMEOUT_SECONDS": "5", "DFMSCD_S3_MAX_ATTEMPTS": "2"}


def object_names(client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def open_uploads(client: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []))


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(moto_s3: MotoServer) -> str:
    return moto_s3.new_bucket()
