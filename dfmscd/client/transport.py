"""httpx underneath, with bounded retries and exponential backoff.

What is retried:

* answers **429** (honouring ``Retry-After``), **502** and **503**, for every request: the service
  answers them before it has done anything (rate limit, busy proxy, unreachable queue);
* connection errors (refused, reset, dropped before the answer): always when the connection
  could not be made, and for idempotent requests (GET/DELETE, a cancel, a job creation carrying
  its Idempotency-Key) also when it broke later. A teacher upload is not retried after the
  request was sent: the service might have stored it, and a second upload would be a second
  teacher;
* never any other 4xx (the request itself is wrong) nor a 500.

``Retry-After`` above ``max_retry_after`` seconds is not waited for: the error is raised with
its ``retry_after`` at once.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from dfmscd.client.errors import DfmscdConnectionError, from_response

RETRY_STATUSES = frozenset({429, 502, 503})


@dataclass
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff: float = 0.5  # first wait; doubled each retry
    max_backoff: float = 8.0
    max_retry_after: float = 120.0
    jitter: float = 0.2  # +- this fraction of each backoff wait
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def backoff_delay(self, retry_number: int) -> float:
        base = min(self.max_backoff, self.backoff * (2 ** retry_number))
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        response.read()
        body: Any = response.json()
    except Exception:  # noqa: BLE001 - a proxy's HTML page, an empty body...
        body = None
    text = ""
    try:
        text = response.text
    except Exception:  # noqa: BLE001
        pass
    raise from_response(response.status_code, dict(response.headers), body, text)


_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class Transport:
    """One ``httpx.Client`` and the retry loop around it."""

    def __init__(self, http: httpx.Client, retry: RetryPolicy) -> None:
        self.http = http
        self.retry = retry

    def _wait_before_retry(self, n: int, response: httpx.Response | None) -> bool:
        """Sleep before retry number ``n`` (0-based); False when no retry is allowed."""
        if n + 1 >= self.retry.attempts:
            return False
        delay = self.retry.backoff_delay(n)
        if response is not None:
            after = parse_retry_after(response.headers.get("retry-after"))
            if after is not None:
                if after > self.retry.max_retry_after:
                    return False
                delay = after
        self.retry.sleep(delay)
        return True

    def send(self, build: Callable[[], httpx.Request], *, idempotent: bool, stream: bool = False) -> httpx.Response:
        """Send the request ``build()`` makes (called again for every attempt, so a file body is
        re-read from the start); raise the mapped error for a 4xx/5xx answer."""
        n = 0
        while True:
            try:
                response = self.http.send(build(), stream=stream)
            except httpx.TransportError as exc:
                retriable = isinstance(exc, _CONNECT_ERRORS) or idempotent
                if not retriable or not self._wait_before_retry(n, None):
                    raise DfmscdConnectionError(
                        f"cannot reach the service at {self.http.base_url}: {type(exc).__name__}: {exc}"
                    ) from exc
                n += 1
                continue
            if response.status_code in RETRY_STATUSES:
                if self._wait_before_retry(n, response):
                    response.close()
                    n += 1
                    continue
            if response.status_code >= 400:
                try:
                    raise_for_error(response)
                finally:
                    response.close()
            return response


__all__ = ["RETRY_STATUSES", "RetryPolicy", "Transport", "parse_retry_after", "raise_for_error"]
