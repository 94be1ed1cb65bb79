"""Engine extras: pool metrics, admission, precision/layout paths, budget keeping,
RunState and Outcome. Tiny runs on the 8×8 toy task, epoch budgets, no timing assertions."""

import json
import time

import pytest
import torch

import synthetic_task as task
from dfmscd.config import Budget, resolve_config
from dfmscd.engine import Distiller, StudentSpec
from dfmscd.engine.distiller import RunState
from dfmscd.engine.report import penultimate_features, within_class_distance
from dfmscd.engine.runtime import has_depthwise_conv, network_memory_format
from dfmscd.models import create_model
from dfmscd.engine.types import Outcome, Phase

TINY = dict(
    synth_batch_size=16, kd_batch_size=16, kd_steps=3, latent_dim=8, generator_width=4,
    pool_capacity=256, inner_steps=1, warmup_epochs=1, epochs=3, checkpoint_every=2,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dfmscd/conftest.py


def _run(overrides=None, students=("resnet8", "resnet8"), budget=Budget(epochs=3), **kw):
    cfg = resolve_config("fast", {**TINY, **(overrides or {})})
    specs = [StudentSpec(a, f"s{i}") for i, a in enumerate(students)]
    return Distiller(task.teacher(), task.card(), specs, cfg, budget, **kw).run()


def test_metrics_and_report_carry_both_balances_confidence_diversity_and_time_use():
    events = []
    result = _run(callbacks=[events.append])
    metrics = [e.data for e in events if e.kind == "metrics"]
    assert len(metrics) == 3
    for m in metrics:
        assert 0.0 <= m["label_balance"] <= 1.0 and 0.0 <= m["pool_balance"] <= 1.0
        assert 0.0 < m["teacher_confidence"] <= 1.0 and 0.0 <= m["recognised_rate"] <= 1.0
    rep = result.report
    json.dumps(rep, allow_nan=False)
    div = rep["pool"]["diversity"]
    assert div["within_class_feature_distance"] is None or div["within_class_feature_distance"] >= 0
    assert 0.0 < div["teacher_confidence"] <= 1.0 and div["images"] > 0
    assert 0.0 <= rep["pool"]["recognised_rate"] <= 1.0 and 0.0 <= rep["pool"]["label_balance"] <= 1.0
    t = rep["timings"]
    assert {"setup_s", "synthesis_s", "kd_s", "checkpoint_s", "evaluation_s", "other_s", "over_budget_s"} <= set(t)
    assert rep["kd_steps_per_s"] > 0 and rep["precision"] == {"autocast": None, "channels_last": False,
                                                           "channels_last_students": [], "pool_device": "cpu"}


def test_recognised_admission_keeps_only_images_the_teacher_reads_as_requested():
    events = []
    result = _run({"pool_admission": "recognised"}, callbacks=[events.append])
    rep = result.report
    assert rep["pool"]["recognised_rate"] in (None, 1.0)
    assert rep["pool"]["label_histogram"] == rep["pool"]["teacher_argmax_histogram"]
    dropped = sum(e.data["dropped_images"] for e in events if e.kind == "metrics")
    assert rep["pool"]["size"] + dropped == rep["images_synthesized"]


def test_cuda_code_paths_run_on_cpu_bf16_channels_last_pool_on_device():
    """The branches a CUDA run takes by default (bf16 autocast, channels_last, pool on the
    device), forced on CPU: the same code, so a CUDA-only bug in them shows here."""
    result = _run({"autocast": "bf16", "channels_last": True, "pool_on_device": True}, students=("resnet8", "mobilenetv2"))
    assert result.status == "completed"
    assert result.report["precision"] == {"autocast": "bfloat16", "channels_last": True,
                                          "channels_last_students": ["s0", "s1"], "pool_device": "cpu"}
    for m in result.students.values():
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert all(torch.isfinite(p).all() for p in m.parameters())
        assert m(torch.zeros(2, 1, 8, 8)).shape == (2, task.NUM_CLASSES)


def test_cpu_default_layout_is_channels_last_only_for_depthwise_networks():
    assert has_depthwise_conv(create_model("mobilenetv2", num_classes=10, in_channels=1, image_size=8))
    assert has_depthwise_conv(create_model("shufflenetv2", num_classes=10, in_channels=1, image_size=8))
    plain = create_model("resnet8", num_classes=10, in_channels=1, image_size=8)
    assert not has_depthwise_conv(plain) and not has_depthwise_conv(create_model("vgg8", num_classes=10, in_channels=1))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert network_memory_format(plain, None, cpu) == torch.contiguous_format
    assert network_memory_format(plain, None, cuda) == torch.channels_last  # the decision only; nothing moves
    assert network_memory_format(plain, True, cpu) == torch.channels_last
    deep = create_model("mobilenetv2", num_classes=10, in_channels=1, image_size=8)
    assert network_memory_format(deep, None, cpu) == torch.channels_last
    assert network_memory_format(deep, False, cpu) == torch.contiguous_format
    assert network_memory_format(plain, None, cpu, image_size=28) == torch.channels_last  # 16x16 and up
    assert network_memory_format(plain, None, cpu, image_size=8) == torch.contiguous_format

    result = _run(students=("resnet8", "mobilenetv2"))
    assert result.report["precision"]["channels_last"] is False  # the teacher (a plain CNN) and the images
    assert result.report["precision"]["channels_last_students"] == ["s1"]
    # students leave the run in the default layout, whatever they trained in
    conv = next(m for m in result.students["s1"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()


def test_bf16_run_resumes_bitwise_on_cpu(tmp_path):
    over = {"autocast": "bf16", "channels_last": True}
    straight = _run(over, budget=Budget(epochs=4))
    path = tmp_path / "run.ckpt"
    polls = {"n": 0}

    def cancel_late():
        polls["n"] += 1
        return polls["n"] > 14  # inside epoch 3, after the epoch-2 checkpoint

    first = _run(over, budget=Budget(epochs=4), checkpoint_path=path, should_cancel=cancel_late)
    assert first.status == "cancelled" and path.exists()
    resumed = _run(over, budget=Budget(epochs=4), checkpoint_path=path)
    assert resumed.report["resumed_from_epoch"] == 2
    for name in straight.students:
        a, b = straight.students[name].state_dict(), resumed.students[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_seconds_budget_keeps_back_time_for_evaluation_and_the_last_checkpoint():
    cfg = resolve_config("fast", TINY)
    d = Distiller(task.teacher(), task.card(), [StudentSpec("resnet8")], cfg, Budget(seconds=100.0))
    d._session_start = time.perf_counter()
    d._setup()
    d._synth_step_s, d._save_s = 2.0, 1.0
    # reserve = 1 generator × 2.0 s + 1.0 s + 0.25 s
    assert d._reserve_s() == pytest.approx(3.25)
    assert d._deadline() == pytest.approx(96.75)
    d.st.elapsed = 90.0  # as if 90 s had passed in earlier sessions
    assert not d._out_of_time(5.0)  # 90 + 5 < 96.75
    assert d._out_of_time(7.0)  # 90 + 7 >= 96.75: that step would not fit
    d.hooks.remove()


def test_run_state_round_trips_through_a_checkpoint_dict():
    st = RunState(epoch=3, kd_steps_done=7, images_synthesized=96, elapsed=1.5, synth_s=0.5, kd_s=0.75,
                  checkpoint_s=0.1, completed=True, last_losses=[1.25, None])
    saved = st.to_checkpoint(elapsed=2.5)
    assert saved["elapsed"] == 2.5 and saved["last_losses"][1] != saved["last_losses"][1]  # NaN for None
    back = RunState.from_checkpoint(saved)
    assert back == RunState(3, 7, 96, 2.5, 0.5, 0.75, 0.1, 0.0, True, [1.25, None])


def test_outcome_and_phase_compare_and_serialise_as_their_old_strings():
    assert Outcome.CANCELLED == "cancelled" and Outcome.COMPLETED == "completed"
    assert json.dumps({"s": Outcome.OUT_OF_TIME, "p": Phase.SYNTHESIS}) == '{"s": "out_of_time", "p": "synthesis"}'
    assert f"{Outcome.DONE}" == "done"


def test_within_class_distance_by_hand():
    # class 0: points (0,0), (3,4): distance 5; class 1: (0,0), (1,0), (0,1): 1, 1, √2
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    c = torch.tensor([0, 0, 1, 1, 1, 2])
    out = within_class_distance(f, c, 3)
    assert out["per_class"][0] == pytest.approx(5.0)
    assert out["per_class"][1] == pytest.approx((2 + 2 ** 0.5) / 3)
    assert out["per_class"][2] is None  # a single image has no pair
    assert out["mean"] == pytest.approx((5.0 + (2 + 2 ** 0.5) / 3) / 2)


def test_penultimate_features_are_the_last_linear_input():
    lin = torch.nn.Linear(3, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU(), lin)
    x = torch.tensor([[[-1.0, 2.0, 3.0]]])
    assert torch.equal(penultimate_features(model, x), torch.tensor([[0.0, 2.0, 3.0]]))


def test_a_seconds_budget_on_an_injected_clock_ends_within_tolerance_evaluation_included():
    """A fake clock (0.02 s per reading) makes the budget check deterministic: no timing assertion
    on the real machine, but the same code path a real seconds budget takes."""
    ticks = {"t": 0.0}

    def clock() -> float:
        ticks["t"] += 0.02
        return ticks["t"]

    cfg = resolve_config("fast", TINY)
    result = Distiller(task.teacher(), task.card(), [StudentSpec("resnet8")], cfg, Budget(seconds=4.0), clock=clock).run()
    t = result.report["timings"]
    assert result.status == "completed" and result.report["epochs_completed"] >= 1
    assert t["total_s"] <= 4.0 + max(0.02 * 4.0, 5.0)
    assert t["over_budget_s"] == pytest.approx(t["total_s"] - 4.0)


def test_fingerprint_ignores_fields_at_their_default_so_older_jobs_still_resume():
    from dfmscd.engine.checkpoint import run_fingerprint

    new = resolve_config("fast", TINY).model_dump(mode="json")
    older = {k: v for k, v in new.items() if k != "kd_max_rate"}  # written before the field existed
    args = ({"epochs": 3}, [{"architecture": "resnet8"}], {"num_classes": 4}, "digest")
    assert new["kd_max_rate"] == 1
    assert run_fingerprint(new, *args) == run_fingerprint(older, *args)
    assert run_fingerprint({**new, "kd_max_rate": 2}, *args) != run_fingerprint(older, *args)
    assert run_fingerprint({**new, "seed": 1}, *args) != run_fingerprint(new, *args)
