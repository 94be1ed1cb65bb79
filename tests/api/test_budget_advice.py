"""Budget advice at job creation, from the costs workers measured before (no worker runs here: the
figures are stored through the code path the worker's recorder uses, ``core.measured_costs``).

Before any figure exists for the job's architectures the advice says the device is not yet
measured; once they exist it says what the budget buys there, and a budget below what the students
need becomes a warning on the job. A figure stored at another batch is scaled linearly.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from service_kit import job_body

from dfmscd.config import DistillConfig

from dfmscd_service.core.db import session_scope
from dfmscd_service.core.measured_costs import figures_from_sizing, record_figures
from dfmscd_service.core.models import utcnow

STUDENT = "wrn_16_1"  # measured by no other test: this file's figures are the only ones for it
# One CPU of this test run: the API takes the device that measured everything most recently.
DEVICE = f"cpu (advice test {secrets.token_hex(3)}, 1 threads)"
# Milliseconds a real 2-core CPU measured at batch 128 on 1x8x8 (resnet8 as teacher and student).
MS = {"kd": 23.0, "teacher_forward": 5.6, "synthesis_teacher": 17.1, "synthesis_generator": 20.7, "synthesis": 16.4}


def _create(client, auth, teacher, budget, **over):
    body = job_body(teacher["id"], students=[{"architecture": STUDENT}], preset="balanced", budget=budget,
                    hyperparameters={"device": "cpu"}, **over)
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=auth)  # no worker here: keep the queue clean
    return r.json()


def _store(generator: str, batch: int, scale: float, at_offset_s: float = 0.0) -> None:
    """Figures as a run's sizing event carries them, stored as the worker stores them."""
    width, latent = generator.removeprefix("generator:").split("x")
    event = {
        "message": f"on {DEVICE} this budget buys about ...",
        "config": {"generator_width": int(width), "latent_dim": int(latent)},
        "measured_ms": {
            "kd_batch_size": batch, "synth_batch_size": batch,
            "kd": {"the-student": MS["kd"] * scale}, "synthesis": {"the-student": MS["synthesis"] * scale},
            "teacher_forward": MS["teacher_forward"] * scale, "synthesis_teacher": MS["synthesis_teacher"] * scale,
            "synthesis_generator": MS["synthesis_generator"] * scale,
        },
    }
    figures = figures_from_sizing(event, {"the-student": STUDENT}, "resnet8")
    assert len(figures) == 5
    with session_scope() as s:
        record_figures(s, DEVICE, (1, 8, 8), figures, at=utcnow() + timedelta(seconds=at_offset_s))


def test_advice_is_unmeasured_then_measured_and_a_short_budget_is_a_warning(client, auth, teacher):
    epochs = _create(client, auth, teacher, {"epochs": 2})
    assert epochs["advice"] is None  # only a seconds budget has something to advise

    before = _create(client, auth, teacher, "20s")
    advice = before["advice"]
    assert advice["basis"] == "unmeasured" and advice["source"] is None
    assert "not yet measured for these architectures at 1x8x8" in advice["message"]
    assert f"kd {STUDENT}" in advice["missing"] and f"synthesis {STUDENT}" in advice["missing"]
    assert advice["below_floor"] is False and advice["message"] not in before["warnings"]
    [generator] = [m.split(" ", 1)[1] for m in advice["missing"] if m.startswith("synthesis_generator ")]
    assert generator.startswith("generator:")

    _store(generator, batch=128, scale=1.0)
    short = _create(client, auth, teacher, "8s")
    advice = short["advice"]
    assert advice["basis"] == "history" and advice["device"] == DEVICE and DEVICE in advice["source"]
    assert advice["message"].startswith(f"on {DEVICE} this budget buys about ")
    assert set(advice["kd_updates"]) == {STUDENT} and advice["min_kd_updates"] == DistillConfig().min_kd_updates
    assert advice["below_floor"] is True and advice["min_budget_s"] > 8
    assert "give at least" in advice["message"] and advice["message"] in short["warnings"]
    assert client.get(f"/v1/jobs/{short['id']}", headers=auth).json()["advice"] == advice

    ample = _create(client, auth, teacher, "2h")
    assert ample["advice"]["basis"] == "history" and ample["advice"]["below_floor"] is False
    assert ample["advice"]["kd_updates"][STUDENT] >= DistillConfig().min_kd_updates
    assert ample["advice"]["message"] not in ample["warnings"]

    # The same device measuring at half the batch in half the time: the same costs, the same advice.
    _store(generator, batch=64, scale=0.5, at_offset_s=1.0)
    again = _create(client, auth, teacher, "8s")["advice"]
    assert again["measured_at"] > advice["measured_at"]
    same = ("message", "epochs", "kd_steps_per_epoch", "kd_updates", "below_floor")
    assert {k: again[k] for k in same} == {k: advice[k] for k in same}
    assert abs(again["min_budget_s"] - advice["min_budget_s"]) < 1e-6 * advice["min_budget_s"]


def test_figures_are_upserted_and_the_newest_complete_device_is_chosen_on_sqlite(tmp_path):
    # The embedded set-up's database (the service fixtures run PostgreSQL; the same statements here).
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import Session

    from dfmscd_service.core.measured_costs import Figure, latest_figures
    from dfmscd_service.core.migrate import upgrade_head
    from dfmscd_service.core.models import MeasuredCost

    url = f"sqlite:///{tmp_path / 'costs.sqlite'}"
    upgrade_head(url)
    engine = create_engine(url)
    wanted = [("kd", "resnet8"), ("teacher_forward", "resnet20")]
    now = utcnow()
    try:
        with Session(engine) as s:
            record_figures(s, "cpu (old, 1 threads)", (1, 8, 8), [Figure("kd", "resnet8", 64, 9.0),
                                                                  Figure("teacher_forward", "resnet20", 64, 3.0)], at=now)
            record_figures(s, "cpu (new, 2 threads)", (1, 8, 8), [Figure("kd", "resnet8", 64, 5.0)],
                           at=now + timedelta(seconds=1))
            s.commit()
            found = latest_figures(s, "cpu", (1, 8, 8), wanted)
            assert found.device == "cpu (old, 1 threads)" and found.missing == []  # the only complete one
            record_figures(s, "cpu (new, 2 threads)", (1, 8, 8), [Figure("teacher_forward", "resnet20", 128, 4.0),
                                                                  Figure("kd", "resnet8", 128, 8.0)],
                           at=now + timedelta(seconds=2))
            s.commit()
            found = latest_figures(s, "cpu", (1, 8, 8), wanted)
            assert found.device == "cpu (new, 2 threads)" and found.measured_at == now + timedelta(seconds=2)
            kd = found.figures[("kd", "resnet8")]
            assert (kd.batch_size, kd.ms) == (128, 8.0)  # replaced, not added
            assert s.scalar(select(func.count()).select_from(MeasuredCost)) == 4
            assert latest_figures(s, "cuda", (1, 8, 8), wanted).missing == sorted(wanted)
            assert latest_figures(s, "cpu", (3, 8, 8), wanted).device is None
    finally:
        engine.dispose()
