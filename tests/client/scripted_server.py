"""A real HTTP server (``http.server``, a thread of the test process) that answers from a script.

For the client behaviours the dfmscd service cannot be made to show on demand: a 429 then a 200,
a 502/503, a connection dropped before any answer, a download whose bytes do not match its ETag.
Every request is recorded (method, path, headers, body) so that tests can assert what the client
sent, e.g. that a retried job creation carried the same Idempotency-Key.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DROP = "drop"  # close the connection (RST) without answering


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Script:
    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], list[Reply | str]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    def add(self, method: str, path: str, *replies: Reply | str) -> None:
        self.replies.setdefault((method, path), []).extend(replies)

    def next(self, method: str, path: str) -> Reply | str:
        with self.lock:
            queue = self.replies.get((method, path.split("?", 1)[0]))
            if not queue:
                return Reply(599, {"error": {"code": "unscripted", "message": f"{method} {path}"}})
            return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with script.lock:
                script.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = script.next(self.command, self.path)
            if reply == DROP:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            assert isinstance(reply, Reply)
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **reply.headers}
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _any

    return Handler


@contextmanager
def scripted_server() -> Iterator[tuple[str, Script]]:
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
