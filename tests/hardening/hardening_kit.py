"""Helpers several hardening test files share (a module with a unique name, unlike ``conftest``).

A snapshot of everything under storage and tmp (to prove that a refused request left nothing
behind), temporary settings overrides, and a live uvicorn server on the test database.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def storage_files() -> set[str]:
    """Every file (relative path) under DATA_DIR/storage and DATA_DIR/tmp."""
    from dfmscd_service.core.settings import get_settings

    s = get_settings()
    out: set[str] = set()
    for root in (s.storage_dir, s.tmp_dir):
        if root.exists():
            out |= {str(p.relative_to(s.data_dir)) for p in root.rglob("*") if p.is_file()}
    return out


@contextmanager
def settings_override(**env: str) -> Iterator[None]:
    """Set ``DFMSCD_<NAME>`` variables for the duration of a block and reload the settings."""
    from dfmscd_service.core.settings import get_settings

    mp = pytest.MonkeyPatch()
    for name, value in env.items():
        mp.setenv(f"DFMSCD_{name.upper()}", value)
    get_settings.cache_clear()
    try:
        yield
    finally:
        mp.undo()
        get_settings.cache_clear()


@contextmanager
def live_server(**env: str) -> Iterator[str]:
    """A real uvicorn (a thread of this process, free port) on the test database; yields its URL.

    ``env`` overrides settings for its life. The engine is rebuilt on entry and exit so that
    pool settings take effect and later tests get the defaults back.
    """
    import uvicorn

    from dfmscd_service.core.db import dispose_engines
    from dfmscd_service.api.main import create_app
    from service_kit import wait_for

    with settings_override(**env):
        dispose_engines()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning",
                                               loop="asyncio"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, timeout=60, what="uvicorn start")
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)
            dispose_engines()
