"""A TCP proxy in front of the live service that cuts chosen responses part way (a real dropped
connection), so the client's resume paths run against the real service.

One request per connection (the test clients keep no idle connections). The first ``times``
requests whose request line contains ``match`` get only ``cut_after`` bytes of their response
(headers included), then the connection is closed under it. Every request head is recorded.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int], match: str, cut_after: int, times: int = 1) -> None:
        self.upstream = upstream
        self.match = match
        self.cut_after = cut_after
        self.cuts_left = times
        self.cuts_done = 0
        self.heads: list[str] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        up = socket.create_connection(self.upstream)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            with self.lock:
                self.heads.append(head)
                cut = self.match in head.split("\r\n", 1)[0] and self.cuts_left > 0
                if cut:
                    self.cuts_left -= 1
            up.sendall(buf)
            threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()
            budget = self.cut_after if cut else None
            while True:
                data = up.recv(65536)
                if not data:
                    break
                if budget is not None:
                    data = data[:budget]
                    budget -= len(data)
                conn.sendall(data)
                if budget == 0:
                    with self.lock:
                        self.cuts_done += 1
                    break
        except OSError:
            pass
        finally:
            # shutdown, not only close: the pump thread is blocked in recv on these sockets, and
            # a close alone would leave them open (no FIN) until that recv returns.
            for s in (conn, up):
                for step in (lambda: s.shutdown(socket.SHUT_RDWR), s.close):
                    try:
                        step()
                    except OSError:
                        pass

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        self.listener.close()

    def header_of(self, index: int, name: str) -> str | None:
        for line in self.heads[index].split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


@contextmanager
def cutting_proxy(upstream_url: str, match: str, cut_after: int, times: int = 1) -> Iterator[CuttingProxy]:
    host, port = upstream_url.removeprefix("http://").rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)), match, cut_after, times)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
