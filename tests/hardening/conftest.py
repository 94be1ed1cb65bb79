"""Fixtures for the hardening tests: the service fixtures of tests/api plus a few helpers.

``service_kit`` (tests/api) owns the real PostgreSQL database, Redis prefix, settings, the
ASGI client, API keys and the reference teacher; this file only re-exports them and adds the
``leaves_no_trace`` fixture. Shared helpers live in ``hardening_kit`` (test files import it by
that unique name: ``conftest`` is ambiguous when several test folders run in one session).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hardening_kit import storage_files  # noqa: E402
from service_kit import (  # noqa: E402,F401  (fixtures)
    auth,
    client,
    other_auth,
    pg_url,
    redis_prefix,
    service,
    teacher,
    teacher_file,
)


@pytest.fixture
def leaves_no_trace(client) -> Iterator[Callable[[], None]]:
    """Snapshot storage + tmp before the test; calling the fixture asserts nothing was added."""
    before = storage_files()

    def check() -> None:
        after = storage_files()
        assert after - before == set(), f"left behind: {sorted(after - before)}"

    yield check
    check()
