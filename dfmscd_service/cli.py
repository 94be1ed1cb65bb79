"""``dfmscd serve`` and ``dfmscd keys create|revoke``, added to the ``dfmscd`` command through the
``dfmscd.commands`` entry point (``register``); the library never names this module.

``serve`` is the embedded mode: migrations, then one Celery worker as a child process and
uvicorn in this process; the worker is stopped when the server exits. With no settings it
needs no server at all (SQLite database and SQLite-backed broker under ``DFMSCD_DATA_DIR``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from dfmscd.errors import ConfigError
from dfmscd_service.core.settings import get_settings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM if `dfmscd serve` is killed, so it never outlives it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def worker_command(concurrency: int = 1) -> list[str]:
    settings = get_settings()
    return [
        sys.executable, "-m", "celery", "-A", "dfmscd_service.worker.celery_app", "worker",
        "-Q", settings.queue_name, "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"dfmscd-embedded-{os.getpid()}@%h",
    ]


def _child_env() -> dict[str, str]:
    """The worker must import ``app`` and ``worker`` from wherever ``dfmscd serve`` was started."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def start_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen(worker_command(), env=_child_env(), preexec_fn=_die_with_parent)


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Warm shutdown first; a job still running after ``grace`` is killed and resumes next start."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGQUIT)  # cold shutdown
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _first_key_if_none() -> str | None:
    from dfmscd_service.api.auth import count_api_keys, create_api_key
    from dfmscd_service.core.db import session_scope

    with session_scope() as session:
        if count_api_keys(session):
            return None
        _row, secret = create_api_key(session, "default")
        return secret


def detect_worker_gpus(environ: dict[str, str] | None = None) -> int | None:
    """The embedded worker runs on this machine: its GPU count, unless WORKER_GPUS is set.

    Sets ``DFMSCD_WORKER_GPUS`` (read by the API and inherited by the worker) so that a job
    asking for ``cuda`` on a CPU-only machine is refused at creation. Returns the count set, or
    None when the operator's explicit value is kept.
    """
    env = os.environ if environ is None else environ
    if "DFMSCD_WORKER_GPUS" in env:
        return None
    # Counted by torch in a child: this process becomes the API, which must not hold torch
    # (~500 MiB, docs/reliability.md "A lean API"); the child's answer is torch's own view.
    probe = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
        count = int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        count = 0  # a machine whose torch cannot even say is treated as CPU-only
    env["DFMSCD_WORKER_GPUS"] = str(count)
    get_settings.cache_clear()
    return count


def serve(host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the API and one worker until interrupted. Returns the exit code."""
    import uvicorn

    from dfmscd_service.api.main import EVENT_LOOP, create_app
    from dfmscd_service.core.startup import prepare

    gpus = detect_worker_gpus()
    settings = get_settings()
    if gpus is not None:
        print(f"dfmscd: the embedded worker has {gpus} GPU(s) (set DFMSCD_WORKER_GPUS to override)", flush=True)
    prepare(migrate=True)
    secret = _first_key_if_none()
    if secret:
        print("No API key existed; created one (shown once, store it now):", flush=True)
        print(secret, flush=True)
    print(f"dfmscd: data in {settings.data_dir.resolve()}; API on http://{host}:{port}", flush=True)
    class _Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would kill this
        # process before the worker is stopped; a signal here means "shut down cleanly, exit 0".
        def handle_exit(self, sig: int, frame: object) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    worker = start_worker()
    try:
        # Keep-alive longer than a client's (or load balancer's) idle time: a server closing an
        # idle connection just as a request arrives on it resets it (client: ReadError).
        # asyncio's loop, not uvloop: see api.main.EVENT_LOOP.
        config = uvicorn.Config(create_app(), host=host, port=port, log_level="info", timeout_graceful_shutdown=5,
                                timeout_keep_alive=75, loop=EVENT_LOOP)
        server = _Server(config)
        server.run()
        return 0 if server.started else 1
    finally:
        stop_worker(worker)


def create_key(name: str) -> int:
    """Create an API key named ``name``; the key alone is printed on the last line."""
    from dfmscd_service.api.auth import create_api_key
    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.startup import prepare

    name = name.strip()
    if not name or len(name) > 128:
        print("error: --name must be 1-128 characters", file=sys.stderr)
        return 2
    prepare(migrate=True)
    with session_scope() as session:
        row, secret = create_api_key(session, name)
    print(f"created API key {row.id} ({name}); it is shown only once:", file=sys.stderr)
    print(secret, flush=True)
    return 0


def revoke_key(key_id: str) -> int:
    """Revoke a key by id (``key_...``); it stops working on the next request."""
    from dfmscd_service.api.auth import revoke_api_key
    from dfmscd_service.core.db import session_scope
    from dfmscd_service.core.startup import prepare

    prepare(migrate=True)
    with session_scope() as session:
        ok = revoke_api_key(session, key_id)
    if not ok:
        print(f"error: no active key {key_id!r}", file=sys.stderr)
        return 2
    print(f"revoked {key_id}")
    return 0


def register(sub: Any) -> None:
    """Add ``serve`` and ``keys`` to the ``dfmscd`` parser (``sub`` is its sub-parsers action)."""
    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=_cmd_serve)

    k = sub.add_parser("keys", help="manage API keys of the service")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=type(k))
    ksub.required = True
    kc = ksub.add_parser("create", help="create an API key and print it once")
    kc.add_argument("--name", required=True)
    kc.set_defaults(func=lambda args: create_key(name=args.name))
    kr = ksub.add_parser("revoke", help="revoke an API key by its id (key_...)")
    kr.add_argument("key_id")
    kr.set_defaults(func=lambda args: revoke_key(args.key_id))


def _cmd_serve(args: Any) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    return serve(host=args.host, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dfmscd_service.cli serve|keys-create|keys-revoke``, without the dfmscd console script."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dfmscd_service.cli")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    k = sub.add_parser("keys-create")
    k.add_argument("--name", required=True)
    r = sub.add_parser("keys-revoke")
    r.add_argument("key_id")
    a = p.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.host, a.port)
    if a.cmd == "keys-create":
        return create_key(a.name)
    return revoke_key(a.key_id)


if __name__ == "__main__":
    raise SystemExit(main())
