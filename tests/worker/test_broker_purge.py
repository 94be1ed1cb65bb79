"""The embedded broker (kombu's SQLAlchemy transport on SQLite) does not grow for ever.

kombu marks a delivered message invisible and keeps its row; the worker's sweep deletes those
rows. Real kombu, a real SQLite file: what is still queued must survive the purge.
"""

from __future__ import annotations

from kombu import Connection
from sqlalchemy import create_engine, text

from dfmscd_service.core.broker import purge_delivered_messages


def _rows(db) -> dict[bool, int]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return {bool(v): n for v, n in conn.execute(text("SELECT visible, count(*) FROM kombu_message GROUP BY visible"))}
    finally:
        engine.dispose()


def test_purge_removes_delivered_messages_and_keeps_queued_ones(tmp_path):
    db = tmp_path / "broker.sqlite"
    url = f"sqla+sqlite:///{db}"
    assert purge_delivered_messages(url) == 0  # no broker tables yet: nothing to do, no error
    with Connection(url) as conn:
        q = conn.SimpleQueue("distill-test")
        for i in range(3):
            q.put({"n": i})
        for expected in (0, 1):
            msg = q.get(timeout=60)  # a bound for a loaded machine: returns as soon as it is there
            assert msg.payload == {"n": expected}
            msg.ack()
        q.close()
    assert _rows(db) == {False: 2, True: 1}

    assert purge_delivered_messages(url) == 2
    assert _rows(db) == {True: 1}
    with Connection(url) as conn:
        q = conn.SimpleQueue("distill-test")
        assert q.get(timeout=60).payload == {"n": 2}  # the queued message survived
        q.close()
    assert purge_delivered_messages("redis://127.0.0.1:6379/0") == 0  # other brokers: untouched
