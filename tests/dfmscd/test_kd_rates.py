"""Per-student KD rates (config ``kd_max_rate``): cheap students take several updates per shared
step. The rates come from a timing, so the tests fix the timing and check what follows from it:
the rates by hand, who is updated in each round, and that a resumed run keeps the first rates."""

import pytest
import torch

import synthetic_task as task
from dfmscd.config import Budget, resolve_config
from dfmscd.costs import kd_rates
from dfmscd.engine import Distiller, StudentSpec
from dfmscd.engine.students import StudentGroup
from dfmscd.models import create_model

TINY = dict(
    synth_batch_size=16, kd_batch_size=16, kd_steps=3, latent_dim=8, generator_width=4,
    pool_capacity=256, inner_steps=1, warmup_epochs=1, epochs=4, checkpoint_every=2,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dfmscd/conftest.py


def test_rates_by_hand():
    # floor(100 / c), clipped to [1, max_rate]
    assert kd_rates([100.0, 10.0, 40.0], 4) == [1, 4, 2]
    assert kd_rates([100.0, 10.0, 40.0], 8) == [1, 8, 2]
    assert kd_rates([100.0, 10.0, 40.0], 1) == [1, 1, 1]
    assert kd_rates([30.0, 31.0], 4) == [1, 1]  # within a factor of 2: lockstep
    assert kd_rates([None, 5.0, 0.0], 4) == [1, 1, 1]  # unknown or zero cost: lockstep
    with pytest.raises(ValueError):
        kd_rates([1.0], 0)


def test_a_round_updates_its_members_only_and_their_peer_term_is_over_members():
    torch.manual_seed(0)
    cfg = resolve_config("fast", {"peer_beta": 0.5})
    mods = [create_model("resnet8", num_classes=4, in_channels=1, image_size=8) for _ in range(3)]
    group = StudentGroup(mods, cfg)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in mods]
    x, t = torch.randn(8, 1, 8, 8), torch.randn(8, 4)
    losses = group.kd_step(x, t, members=[0, 2])
    assert losses.shape == (2,)
    untouched = mods[1].state_dict()
    assert all(torch.equal(before[1][k], untouched[k]) for k in untouched)
    changed = [any(not torch.equal(before[i][k], v) for k, v in mods[i].state_dict().items()) for i in (0, 2)]
    assert changed == [True, True]


def _distiller(ms, **kw):
    cfg = resolve_config("fast", {**TINY, "kd_max_rate": 3})
    specs = [StudentSpec("resnet8", "slow"), StudentSpec("resnet8", "cheap")]
    d = Distiller(task.teacher(), task.card(), specs, cfg, Budget(epochs=4), **kw)
    d._kd_ms_per_student = lambda repeats=1: list(ms)  # the timing, fixed (what a real one measures varies)
    return d


def _count_updates(d):
    counts = [0, 0]
    real_setup = d._setup

    def setup():
        real_setup()
        real_step = d.students.kd_step

        def kd_step(x, t, members=None):
            for i in (range(2) if members is None else members):
                counts[i] += 1
            return real_step(x, t, members)

        d.students.kd_step = kd_step

    d._setup = setup
    return counts


def test_cheap_student_takes_rate_updates_per_shared_step_and_the_report_says_so():
    d = _distiller([30.0, 10.0])
    counts = _count_updates(d)
    result = d.run()
    steps = result.report["kd_steps"]
    assert steps == (4 - result.report["warmup_epochs"]) * TINY["kd_steps"] > 0
    assert result.report["kd_rates"] == {"slow": 1, "cheap": 3}
    assert counts == [steps, 3 * steps]


def test_resumed_run_keeps_the_rates_of_its_first_start_and_is_bitwise_identical(tmp_path):
    straight = _distiller([30.0, 10.0]).run()
    path = tmp_path / "run.ckpt"
    stop = {"now": False}

    def on_event(e):
        if e.kind == "checkpoint" and e.data["epoch"] == 2:
            stop["now"] = True

    first = _distiller([30.0, 10.0], callbacks=[on_event], should_cancel=lambda: stop["now"], checkpoint_path=path).run()
    assert first.status == "cancelled"
    # the machine is now timed the other way round: the checkpoint's rates must win
    resumed = _distiller([10.0, 30.0], checkpoint_path=path).run()
    assert resumed.report["resumed_from_epoch"] == 2
    assert resumed.report["kd_rates"] == {"slow": 1, "cheap": 3}
    for name in straight.students:
        a, b = straight.students[name].state_dict(), resumed.students[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
