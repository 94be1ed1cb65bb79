"""A real HTTP receiver for webhook tests: http.server on 127.0.0.1 in a thread.

Each path has a script of answers (e.g. ``[500, 500, 200]``: twice 500, then 200 for ever after);
every request is recorded, and tests wait on ``wait_for`` (a Condition), never on a sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.redirects: dict[str, str] = {}
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                code = receiver._record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(code)
                if code in (301, 302, 307, 308):
                    self.send_header("Location", receiver.redirects.get(self.path, "/"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, path: str, answers: list[int], redirect_to: str | None = None) -> str:
        self.scripts[path] = list(answers)
        if redirect_to is not None:
            self.redirects[path] = redirect_to
        return self.base_url + path

    def _record(self, req: Received) -> int:
        with self._cond:
            self.requests.append(req)
            script = self.scripts.get(req.path, [404])
            code = script.pop(0) if len(script) > 1 else script[0]
            self._cond.notify_all()
            return code

    def received(self, path: str) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Callable[[list[Received]], Any], timeout: float, what: str) -> Any:
        """Block until ``predicate(all requests so far)`` is truthy; fail after ``timeout`` seconds."""
        with self._cond:
            result = self._cond.wait_for(lambda: predicate(list(self.requests)), timeout)
            if not result:
                seen = [(r.path, r.headers.get("webhook-id")) for r in self.requests]
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; received {seen}")
            return result

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
