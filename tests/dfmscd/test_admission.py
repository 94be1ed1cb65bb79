"""pool_admission="balanced": the keep-mask by hand, the balance it holds, and a run that uses it."""

import pytest
import torch

import synthetic_task as task
from dfmscd.config import Budget, resolve_config
from dfmscd.engine import Distiller, StudentSpec
from dfmscd.synthesis.admission import BALANCE, LEAK, admission_floor, balanced_admission


def test_keep_mask_by_hand():
    # counts [2, 0, 1], target 0.5, floor 1; image by image:
    # c0: cap max(1, 0/0.5)=1, 2+1 > 1 -> drop | c1: cap 1, 0+1 <= 1 -> keep, counts [2, 1, 1]
    # c1: cap max(1, 1/0.5)=2, 1+1 <= 2 -> keep, [2, 2, 1] | c0: cap 2, 3 > 2 -> drop
    # c2: cap 2, 1+1 <= 2 -> keep, [2, 2, 2]
    keep = balanced_admission([2, 0, 1], torch.tensor([0, 1, 1, 0, 2]), 0.5, 1.0)
    assert keep.tolist() == [False, True, True, False, True]
    assert balanced_admission([0, 0], torch.tensor([0, 0, 0]), 1.0, 2.0).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        balanced_admission([1], torch.tensor([0]), 0.0, 1.0)


def test_floor_is_a_batch_share_then_the_leak_of_everything_synthesized():
    assert admission_floor(0, 10, 128, 0.5) == 12.8
    assert admission_floor(10_000, 10, 128, 0.5) == 500.0


def test_a_skewed_stream_keeps_the_balance_once_past_the_floor():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])  # class 0 produced 4x as often as class 3
    counts, seen = [0, 0, 0, 0], 0
    for _ in range(200):
        argmax = torch.multinomial(probs, 64, replacement=True, generator=g)
        floor = admission_floor(seen, 4, 64, 0.25)
        keep = balanced_admission(counts, argmax, 0.85, floor)
        for c in argmax[keep].tolist():
            counts[c] += 1
        seen += 64
        assert max(counts) <= max(floor, min(counts) / 0.85) + 1
    assert min(counts) / max(counts) >= 0.85
    assert sum(counts) >= 0.25 * seen  # the floor's leak: the pool kept growing


@pytest.mark.usefixtures("one_thread")
def test_a_run_with_balanced_admission_reports_what_it_turned_away():
    cfg = resolve_config("fast", dict(synth_batch_size=16, kd_batch_size=16, kd_steps=2, latent_dim=8, generator_width=4,
                                      pool_capacity=512, inner_steps=1, warmup_epochs=1, epochs=3,
                                      pool_admission="balanced"))
    events = []
    specs = [StudentSpec("resnet8", "a"), StudentSpec("resnet8", "b")]
    result = Distiller(task.teacher(), task.card(), specs, cfg, Budget(epochs=3), callbacks=[events.append]).run()
    report = result.report
    assert report["pool"]["size"] + sum(e.data.get("dropped_images", 0) for e in events if e.kind == "metrics") == report["images_synthesized"]
    hist = report["pool"]["teacher_argmax_histogram"]
    floor = admission_floor(report["images_synthesized"], len(hist), 16, LEAK)
    assert max(hist) <= max(floor, min(hist) / BALANCE) + 1
