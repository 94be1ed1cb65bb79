"""A Server-Sent Events parser (the WHATWG event-stream format), over lines of text."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class SSEMessage:
    """One dispatched message; ``event`` defaults to ``"message"``. A comment line (``: ...``,
    the service's keep-alive) is reported as a message with ``comment`` set and nothing else, so
    that a reader can notice the connection is alive without data."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comment: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[SSEMessage]:
    event, data, ident, retry = "", [], None, None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line == "":
            if data or event or ident is not None or retry is not None:
                yield SSEMessage(event or "message", "\n".join(data), ident, retry)
            event, data, ident, retry = "", [], None, None
            continue
        if line.startswith(":"):
            yield SSEMessage(event="", comment=line[1:].lstrip())
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            if "\x00" not in value:
                ident = value
        elif name == "retry":
            if value.isdigit():
                retry = int(value)
    # A message without its final blank line was cut off: it is not dispatched (per the spec).


__all__ = ["SSEMessage", "parse_sse"]
