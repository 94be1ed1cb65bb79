"""The Distiller end to end on 8×8 inputs: results, events, cancellation, checkpoints, resume."""

import json
import math
import pickle

import pytest
import torch
import torch.nn as nn
from PIL import Image

import synthetic_task as task
from dfmscd.config import Budget, resolve_config
from dfmscd.engine import Distiller, Event, StudentSpec
from dfmscd.report import save_samples_png
from dfmscd.errors import CardError, CheckpointError, ConfigError, DfmscdError
from dfmscd.io.card import ModelCard

TINY = dict(
    synth_batch_size=16, kd_batch_size=16, kd_steps=4, latent_dim=8, generator_width=4,
    pool_capacity=256, inner_steps=2, warmup_epochs=1, epochs=4, checkpoint_every=2,
)  # fmt: skip
STUDENTS = [StudentSpec("resnet8", "a"), StudentSpec("resnet8", "b")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/dfmscd/conftest.py


def _distiller(seed=0, budget=Budget(epochs=4), overrides=None, **kw):
    cfg = resolve_config("fast", {**TINY, "seed": seed, **(overrides or {})})
    return Distiller(task.teacher(), task.card(), STUDENTS, cfg, budget, **kw)


def _same_students(r1, r2):
    for name in r1.students:
        s1, s2 = r1.students[name].state_dict(), r2.students[name].state_dict()
        if s1.keys() != s2.keys() or not all(torch.equal(s1[k], s2[k]) for k in s1):
            return False
    return True


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 4-epoch run with checkpoints, and the events it emitted."""
    events: list[Event] = []
    path = tmp_path_factory.mktemp("straight") / "run.ckpt"
    result = _distiller(callbacks=[events.append], checkpoint_path=path).run()
    return result, events, path


def test_result_has_students_cards_report_and_samples(straight, tmp_path):
    result, _, _ = straight
    assert result.status == "completed"
    assert set(result.students) == {"a", "b"} and set(result.cards) == {"a", "b"}
    for name, module in result.students.items():
        assert not module.training
        assert all(p.device.type == "cpu" for p in module.parameters())
        card = result.cards[name]
        assert card.architecture == "resnet8" and tuple(card.input_shape) == (1, 8, 8)
        assert card.mean == task.card().mean and card.num_classes == task.NUM_CLASSES
    report = json.loads(json.dumps(result.report))  # JSON-serialisable
    assert report["epochs_completed"] == 4 and report["num_generators"] == 2
    assert report["generator_partners"] == ["a", "b"]
    assert report["generator_conditional"] == [True, True]
    assert report["config"]["seed"] == 0 and report["budget"] == {"epochs": 4}
    assert report["kd_steps"] == (4 - report["warmup_epochs"]) * TINY["kd_steps"]
    for s in report["students"].values():
        assert s["params"] > 0 and math.isfinite(s["final_loss"]) and 0.0 <= s["teacher_agreement"] <= 1.0
    pool = report["pool"]
    assert pool["size"] == 4 * 2 * TINY["synth_batch_size"] == report["images_synthesized"]
    assert sum(pool["teacher_argmax_histogram"]) == pool["size"] == sum(pool["label_histogram"])
    assert pool["balance"] == min(pool["teacher_argmax_histogram"]) / max(pool["teacher_argmax_histogram"])
    assert set(report["timings"]) >= {"total_s", "synthesis_s", "kd_s"}
    assert result.samples.dtype == torch.uint8 and result.samples.shape[1:] == (1, 8, 8)
    assert result.sample_labels.shape[0] == result.samples.shape[0] > 0
    png = tmp_path / "samples.png"
    save_samples_png(result.samples, result.sample_labels, png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 32 and im.size[1] >= 32 * len(set(result.sample_labels.tolist()))


def test_events_report_progress_metrics_and_checkpoints(straight):
    _, events, path = straight
    kinds = [e.kind for e in events]
    assert kinds.count("metrics") == 4
    progress = [e.progress for e in events]
    assert all(0.0 <= p <= 1.0 for p in progress) and progress == sorted(progress)
    assert events[-1].progress == 1.0
    metrics = [e for e in events if e.kind == "metrics"]
    assert [m.epoch for m in metrics] == [1, 2, 3, 4]
    first = metrics[-1].data
    assert set(first) >= {"student_loss", "pool_size", "label_histogram", "teacher_argmax_histogram", "images_per_s"}
    assert set(first["student_loss"]) == {"a", "b"}
    checkpoints = [e.data["epoch"] for e in events if e.kind == "checkpoint"]
    assert checkpoints == [2, 4] and path.exists()
    json.dumps([e.data for e in events])


def test_resume_after_interruption_gives_bitwise_identical_students(straight, tmp_path):
    path = tmp_path / "run.ckpt"
    stop = {"now": False}

    def on_event(e: Event) -> None:
        if e.kind == "checkpoint" and e.data["epoch"] == 2:
            stop["now"] = True  # simulate a crash right after the epoch-2 checkpoint

    first = _distiller(callbacks=[on_event], should_cancel=lambda: stop["now"], checkpoint_path=path).run()
    assert first.status == "cancelled" and first.report["epochs_completed"] == 2
    resumed = _distiller(checkpoint_path=path).run(resume=True)
    assert resumed.status == "completed" and resumed.report["resumed_from_epoch"] == 2
    assert _same_students(resumed, straight[0])
    assert resumed.report["pool"] == straight[0].report["pool"]


def test_a_mixture_with_an_unconditional_generator_resumes_bitwise(tmp_path):
    """One conditional and one unconditional generator (``unconditional_generators=1``): each takes its
    own inner-loop copy, the report says which is which, and a resume is still bitwise."""
    mixed = {"unconditional_generators": 1}
    straight = _distiller(overrides=mixed).run()
    assert straight.report["generator_conditional"] == [True, False]
    assert not _same_students(straight, _distiller().run())  # the unconditional generator changed the run
    path = tmp_path / "mixed.ckpt"
    stop = {"now": False}

    def on_event(e: Event) -> None:
        if e.kind == "checkpoint" and e.data["epoch"] == 2:
            stop["now"] = True

    first = _distiller(overrides=mixed, callbacks=[on_event], should_cancel=lambda: stop["now"], checkpoint_path=path).run()
    assert first.status == "cancelled" and first.report["epochs_completed"] == 2
    resumed = _distiller(overrides=mixed, checkpoint_path=path).run(resume=True)
    assert resumed.report["resumed_from_epoch"] == 2 and _same_students(resumed, straight)


def test_same_seed_reproduces_and_another_seed_differs(straight):
    again = _distiller().run()
    assert _same_students(again, straight[0])
    other = _distiller(seed=1).run()
    assert not _same_students(other, straight[0])


def test_cancellation_stops_within_one_step():
    polls = {"n": 0, "after": 0}
    cancel_at = 7

    def should_cancel() -> bool:
        polls["n"] += 1
        if polls["n"] > cancel_at:
            polls["after"] += 1
        return polls["n"] >= cancel_at

    result = _distiller(should_cancel=should_cancel).run()
    assert result.status == "cancelled"
    assert polls["after"] == 0  # not asked again: the run returned at the first True
    assert set(result.students) == {"a", "b"} and all(not m.training for m in result.students.values())
    assert result.report["status"] == "cancelled"


def test_finished_checkpoint_resumes_to_the_same_result(straight):
    _, _, path = straight
    again = _distiller(checkpoint_path=path).run(resume=True)
    assert again.status == "completed" and again.report["resumed_from_epoch"] == 4
    assert _same_students(again, straight[0])


def test_checkpoint_from_another_run_or_file_is_refused(straight, tmp_path):
    _, _, path = straight
    with pytest.raises(CheckpointError, match="different run"):
        _distiller(seed=5, checkpoint_path=path).run()
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        _distiller(checkpoint_path=garbage).run()


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickle_payload_in_checkpoint_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "dfmscd-run-checkpoint/1", "x": _Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError):
        _distiller(checkpoint_path=bad).run()
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_seconds_budget_stops_and_reports_it():
    result = _distiller(budget=Budget(seconds=1.0)).run()
    assert result.status == "completed"
    assert result.report["budget"] == {"seconds": 1.0} and result.report["epochs_completed"] >= 1


def test_generator_resets_and_the_fast_dfkd_baseline_run():
    logs: list[str] = []
    cfg = resolve_config("fast", {**TINY, "generator_reset_every": 1, "reset_first_layer_epoch": 1})
    result = Distiller(
        task.teacher(), task.card(), [StudentSpec("resnet8")], cfg, Budget(epochs=2),
        callbacks=[lambda e: logs.append(e.data["message"]) if e.kind == "log" else None],
    ).run()  # fmt: skip
    assert any("first layer" in m for m in logs) and any(m.endswith("re-initialised the generators") for m in logs)
    logs.clear()
    baseline = cfg.single_student_baseline()
    assert baseline.generator_reset_every is None and baseline.reset_first_layer_epoch == 1  # Fast-DFKD's reset_l0 only
    result = Distiller(
        task.teacher(), task.card(), [StudentSpec("resnet8")], baseline, Budget(epochs=2),
        callbacks=[lambda e: logs.append(e.data["message"]) if e.kind == "log" else None],
    ).run()  # fmt: skip
    assert result.status == "completed" and set(result.students) == {"resnet8"}
    assert result.report["num_generators"] == 1 and result.report["config"]["label_bridging"] is False
    assert any("first layer" in m for m in logs) and not any(m.endswith("re-initialised the generators") for m in logs)


class _NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, task.NUM_CLASSES)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    "students, error",
    [
        ([StudentSpec("resnet8"), StudentSpec("resnet8")], "used twice"),
        ([StudentSpec("resnet8", ".hidden")], "invalid student name"),
        ([StudentSpec("resnet8", "a/b")], "invalid student name"),
        ([StudentSpec("no_such_net")], "unknown"),
        ([], "at least one student"),
    ],
)
def test_bad_student_lists_are_config_errors(students, error):
    with pytest.raises(DfmscdError, match=error):
        Distiller(task.teacher(), task.card(), students, resolve_config("fast"))


def test_default_name_of_torchvision_students_is_sanitised():
    assert StudentSpec("tv/resnet18").resolved_name == "tv_resnet18"


def test_teacher_problems_are_reported():
    cfg = resolve_config("fast")
    with pytest.raises(ConfigError, match="BatchNorm"):
        Distiller(_NoBN(), task.card(), STUDENTS, cfg)
    wrong_classes = ModelCard(architecture="resnet8", num_classes=7, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,))
    with pytest.raises(CardError, match="7 classes"):
        Distiller(task.teacher(), wrong_classes, STUDENTS, cfg)
    with pytest.raises(ConfigError, match="CUDA|not available|does not exist"):
        if torch.cuda.is_available():
            raise ConfigError("cuda:99 does not exist")
        Distiller(task.teacher(), task.card(), STUDENTS, resolve_config("fast", {"device": "cuda:0"}))


def test_tiny_distillation_beats_chance_on_a_separable_task():
    cfg = resolve_config("fast", {"seed": 0})
    result = Distiller(task.teacher(), task.card(), STUDENTS, cfg, Budget(epochs=6)).run()
    chance = 1.0 / task.NUM_CLASSES
    for name, student in result.students.items():
        acc = task.accuracy(student)
        assert acc > 2 * chance, f"student {name}: accuracy {acc:.3f} is not well above chance {chance:.2f}"
