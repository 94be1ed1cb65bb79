"""`create_key` / `revoke_key` (behind `dfmscd keys create`): key alone on the last line, works at once."""

from __future__ import annotations

from sqlalchemy import select

from dfmscd_service.api.auth import hash_key
from dfmscd_service.cli import create_key, revoke_key
from dfmscd_service.core.db import session_scope
from dfmscd_service.core.models import ApiKey


def test_create_key_prints_only_the_key_on_the_last_line_and_it_authenticates(client, capsys):
    assert create_key("ci-bot") == 0
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    assert key.startswith("dfk_") and " " not in key
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with session_scope() as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))
    assert revoke_key(key_id) == 0
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert revoke_key(key_id) == 2  # already revoked


def test_create_key_refuses_an_empty_name(client, capsys):
    assert create_key("   ") == 2
    assert "name" in capsys.readouterr().err
