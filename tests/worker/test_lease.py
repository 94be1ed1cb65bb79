"""The claim/lease/orphan rules against the real PostgreSQL database (no worker process)."""

from __future__ import annotations

import secrets
from datetime import timedelta, timezone

import pytest
import redis
from service_kit import REDIS_URL
from sqlalchemy import update

from dfmscd_service.core.db import session_factory, session_scope
from dfmscd_service.core.models import Job, JobStudent, new_id, utcnow
from dfmscd_service.core.settings import get_settings
from dfmscd_service.worker.lease import claim, renew, still_owner
from dfmscd_service.worker.sweeper import sweep_once


@pytest.fixture
def private_queue(service, monkeypatch):
    """Send to a queue no worker listens on, so the test can count the messages."""
    name = f"lease-{secrets.token_hex(4)}"
    monkeypatch.setenv("DFMSCD_QUEUE_NAME", name)
    get_settings.cache_clear()
    r = redis.Redis.from_url(REDIS_URL)
    yield lambda: r.llen(f"{service['DFMSCD_BROKER_KEY_PREFIX']}{name}")
    r.delete(f"{service['DFMSCD_BROKER_KEY_PREFIX']}{name}")
    monkeypatch.undo()
    get_settings.cache_clear()


def _job(status: str = "queued", **values) -> str:
    jid = new_id("job")
    with session_scope() as s:
        s.add(Job(id=jid, owner_id="key_test", status=status, preset="fast", config={}, budget={"epochs": 1},
                  seed=0, job_metadata={}, progress=0.0, epoch=0, attempts=0, **values))
        s.add(JobStudent(job_id=jid, position=0, name="s", architecture="resnet8", arch_kwargs={}, status="queued",
                         partial=False, metrics={}, exports={}))
    return jid


def _get(jid: str) -> Job:
    with session_factory()() as s:
        return s.get(Job, jid)


def test_only_one_claim_wins_and_a_finished_job_is_never_claimed(service, client):
    jid = _job()
    with session_factory()() as s:
        assert claim(s, jid, "w1", 30)
        assert not claim(s, jid, "w2", 30)  # running with a valid lease
    job = _get(jid)
    assert job.status == "running" and job.lease_owner == "w1" and job.attempts == 1 and job.started_at
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == jid).values(status="succeeded", lease_owner=None))
    with session_factory()() as s:
        assert not claim(s, jid, "w3", 30)
    assert _get(jid).status == "succeeded"


def test_an_expired_lease_is_taken_over_and_the_old_owner_notices(service, client):
    jid = _job()
    with session_factory()() as s:
        assert claim(s, jid, "dead", 30)
        s.execute(update(Job).where(Job.id == jid).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
        assert claim(s, jid, "alive", 30)
        assert not renew(s, jid, "dead", 30)
        assert renew(s, jid, "alive", 30)
        assert still_owner(s, jid, "dead")[:2] == (False, "running")
    job = _get(jid)
    assert job.lease_owner == "alive" and job.attempts == 2


def test_a_cancelling_orphan_stays_cancelling_when_claimed(service, client):
    jid = _job("cancelling", lease_owner="dead", lease_expires_at=utcnow() - timedelta(seconds=5))
    with session_factory()() as s:
        assert claim(s, jid, "new", 30)
    assert _get(jid).status == "cancelling"


def _enqueued_at(jid: str):
    with session_scope() as s:
        ts = s.get(Job, jid).enqueued_at
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def test_sweep_resends_an_orphan_once_per_expiry(service, client, private_queue):
    # Taken before the jobs exist: another worker's sweeper may re-send them as soon as they do.
    before = utcnow()
    expired = utcnow() - timedelta(seconds=5)
    orphan = _job("running", lease_owner="dead", lease_expires_at=expired, enqueued_at=expired - timedelta(hours=1))
    healthy = _job("running", lease_owner="w", lease_expires_at=utcnow() + timedelta(minutes=5))
    fresh_queued = _job("queued", enqueued_at=utcnow())
    stale_queued = _job("queued", enqueued_at=utcnow() - timedelta(days=1))
    sent = sweep_once()
    # A worker left by another test may sweep the same database at the same moment; mark_enqueued
    # lets exactly one sweeper send, so each job must have been re-sent by us or by that one.
    for jid in (orphan, stale_queued):
        assert jid in sent or _enqueued_at(jid) >= before, jid
    assert healthy not in sent and fresh_queued not in sent
    assert private_queue() == len(sent)
    again = sweep_once()
    assert orphan not in again and stale_queued not in again
    # the orphan is claimed, then its new owner dies too: it is re-sent again
    with session_factory()() as s:
        assert claim(s, orphan, "second", 30)
        # its lease runs out (any time after the re-send, as a real lease does)
        expired_again = utcnow()
        s.execute(update(Job).where(Job.id == orphan).values(lease_expires_at=expired_again))
        s.commit()
    assert orphan in sweep_once() or _enqueued_at(orphan) >= expired_again  # by us or the other sweeper
