"""Smoke of the benchmark's data code: the split it reports figures on must be what it says."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.data import (ARCHIVES, DATA_DIR, DatasetUnavailable, load_dataset, load_digits_dataset, random_crop_flip,
                             stratified_split)
from benchmarks.tables import markdown_report, target_checks


def test_digits_split_is_fixed_disjoint_stratified_and_normalised_on_train_only():
    a, b = load_digits_dataset(seed=0), load_digits_dataset(seed=0)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)  # fixed
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (1077, 360, 360)  # 60/20/20 of 1797
    assert a.input_shape == (1, 8, 8) and float(a.x_train.min()) == 0.0 and float(a.x_train.max()) == 1.0
    # each class keeps its share in every split (within one image of rounding)
    for part in (a.y_val, a.y_test):
        counts = np.bincount(part.numpy(), minlength=10)
        expected = np.bincount(a.y_train.numpy(), minlength=10) * len(part) / len(a.y_train)
        assert np.abs(counts - expected).max() <= 1.5
    assert a.mean[0] == pytest.approx(float(a.x_train.mean()), abs=1e-5)
    assert a.std[0] == pytest.approx(float(a.x_train.std()), abs=1e-5)
    assert float(a.normalise(a.x_train).mean()) == pytest.approx(0.0, abs=1e-4)
    card = a.card_dict("resnet20")
    assert card["input_shape"] == [1, 8, 8] and card["mean"] == list(a.mean) and len(card["class_names"]) == 10


def test_stratified_split_indices_partition_the_data():
    y = np.repeat(np.arange(5), 20)
    tr, va, te = stratified_split(y, seed=3)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    assert set(np.bincount(y[te]).tolist()) == {4} and set(np.bincount(y[va]).tolist()) == {4}
    assert not np.array_equal(te, stratified_split(y, seed=4)[2])


def test_crop_is_a_translation_and_flip_mirrors():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=1, flip=False, generator=g)
    assert out.shape == x.shape
    # interior pixels survive a shift of at most one pixel
    for i in range(2):
        assert any(torch.equal(out[i, 0, 1:-1, 1:-1], x[i, 0, 1 + dy:5 + dy, 1 + dx:5 + dx])
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    flipped = random_crop_flip(x.repeat(16, 1, 1, 1), pad=0, flip=True, generator=g)
    mirrored = [torch.equal(f, xi.flip(2)) for f, xi in zip(flipped, x.repeat(16, 1, 1, 1))]
    assert any(mirrored) and not all(mirrored)


def test_a_missing_archive_or_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetUnavailable, match="nothing is downloaded"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetUnavailable, match="unknown dataset"):
        load_dataset("cifar100", None)
    assert not any(tmp_path.iterdir())


def _shared_archive(name: str) -> Path:
    path = DATA_DIR / ARCHIVES[name]
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI has ../shared/data")
        pytest.skip(f"{path} is not on this machine")
    return path


@pytest.mark.parametrize(("name", "subset", "shape", "classes", "per_class"), [
    ("mnist", "train", (28, 28, 1), 10, 30),
    ("cifar10", "test", (32, 32, 3), 10, 30),
    ("tiny_imagenet32", "train", (32, 32, 3), 200, 2),
])
def test_a_sample_of_each_real_archive_has_the_documented_layout(name, subset, shape, classes, per_class):
    from dfmscd.image_archive import read_class_folders

    sample = read_class_folders(_shared_archive(name), subset, channels=shape[2], limit_per_class=per_class)
    assert sample.x.shape[1:] == shape and sample.x.dtype == np.uint8
    assert len(sample.class_names) == classes
    assert sample.y.min() == 0 and sample.y.max() == classes - 1
    assert np.bincount(sample.y, minlength=classes).tolist() == [per_class] * classes
    assert 20 < float(sample.x.mean()) < 200  # real pixels, not blank


def test_tiny_imagenet_test_split_is_labelled_by_its_annotation_file():
    from dfmscd.image_archive import read_class_folders, read_text_member

    archive = _shared_archive("tiny_imagenet32")
    wnids = sorted(read_text_member(archive, "wnids.txt").split())
    labels = dict(line.split("\t")[:2] for line in read_text_member(archive, "val/val_annotations.txt").splitlines() if line)
    assert len(wnids) == 200 and len(labels) == 10_000 and set(labels.values()) == set(wnids)
    sample = read_class_folders(archive, "val", class_names=wnids, channels=3,
                                class_of=lambda member: labels.get(member.name), limit_per_class=1)
    assert sample.x.shape == (200, 32, 32, 3) and sorted(sample.y.tolist()) == list(range(200))


def test_decoded_archives_are_cached_by_checksum(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from benchmarks.data import decoded_archive

    def make(values):
        with tarfile.open(tmp_path / ARCHIVES["mnist"], "w:gz") as tf:
            for split in ("train", "test"):
                for i, v in enumerate(values):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((28, 28), v, dtype=np.uint8)).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{i % 2}/{i}.png")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))

    make([0, 100, 200, 250])
    arrays, classes, sha = decoded_archive("mnist", tmp_path, cache_dir=tmp_path / "cache")
    assert classes == ["0", "1"] and arrays["x_train"].shape == (4, 28, 28, 1)
    assert sorted(arrays["x_train"][:, 0, 0, 0].tolist()) == [0, 100, 200, 250]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"mnist-{sha[:16]}"]
    make([1, 2, 3, 4])  # a changed archive is another key, never the old arrays
    arrays2, _, sha2 = decoded_archive("mnist", tmp_path, cache_dir=tmp_path / "cache")
    assert sha2 != sha and sorted(arrays2["x_train"][:, 0, 0, 0].tolist()) == [1, 2, 3, 4]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_targets_and_table_from_a_result_dict():
    student = {"test_accuracy": 0.96, "val_accuracy": 0.95, "ratio_to_teacher": 0.98}
    result = {
        "dataset": "digits", "run_kind": "quick", "preset": "balanced", "budget_s": 45, "baseline_match": "epochs",
        "teacher": {"architecture": "resnet20", "test_accuracy": 0.98, "val_accuracy": 0.97},
        "split": {"train": 1077, "val": 360, "test": 360, "seed": 0},
        "machine": {"device": "cpu", "torch_threads": 2},
        "dfmscd": {"wall_s": 45.0, "images_per_s": 100.0, "pool_balance": 0.85, "epochs": 12,
                   "students": {"resnet8": student}},
        "baseline": {"resnet8": {**student, "test_accuracy": 0.97, "wall_s": 30.0, "images_per_s": 50.0,
                                 "pool_balance": 0.2, "epochs": 12}},
    }
    checks = target_checks(result)
    assert checks["every_student_ratio_ge_0.97"] and checks["pool_balance_ge_0.8"]
    assert not checks["dfmscd_ge_baseline_every_student"]  # 0.96 < 0.97
    assert not checks["dfmscd_wall_lt_baselines_total"]  # 45 s vs 30 s
    result["targets"] = checks
    table = markdown_report(result)
    assert "| DF-MSCD | resnet8 | 96.00% | 0.980 |" in table
    assert "| baseline (Fast-DFKD) | resnet8 | 97.00% |" in table
    assert "dfmscd_ge_baseline_every_student: MISSED" in table


def test_baseline_gets_the_same_epochs_and_warmup_as_the_dfmscd_run():
    from benchmarks.compare import _baseline_config
    from dfmscd.config import resolve_config

    config = resolve_config("balanced", {"seed": 5, "kd_steps": 40})  # kd_steps=40 per epoch, pinned
    base, budget = _baseline_config(config, {"epochs": 20, "kd_steps": 17 * 40 - 25}, "epochs", 300.0)
    assert budget.epochs == 20 and budget.seconds is None
    assert (base.epochs, base.warmup_epochs) == (20, 3)  # 17 epochs had KD steps
    assert (base.num_generators, base.label_bridging, base.peer_beta, base.student_adv) == (1, False, 0.0, 0.0)
    assert base.seed == 5 and base.kd_steps == 40
    base, budget = _baseline_config(config, {"epochs": 2, "kd_steps": 0}, "epochs", 45.0)
    assert base.warmup_epochs == 1  # at least one epoch of KD
    _, budget = _baseline_config(config, {"epochs": 2, "kd_steps": 15}, "seconds", 45.0)
    assert budget.seconds == 45.0


def test_time_budgeted_training_stops_by_its_clock_and_anneals_the_rate(monkeypatch):
    # A clock that advances one "second" per reading: the loop reads it once before the run and once
    # per step, so a 10 s budget allows exactly 9 steps whatever the machine's speed.
    import itertools

    import torch.nn.functional as F

    from benchmarks.train import _fit
    from dfmscd.models import create_model

    data = load_digits_dataset(seed=0)
    ticks = itertools.count()
    model = create_model("resnet8", 10, in_channels=1, image_size=8)
    rates = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    stats = _fit(model, data, lambda logits, y, _x: F.cross_entropy(logits, y), 1, 0.1, 32, 0.0,
                 torch.device("cpu"), 0, budget_s=10.0, clock=lambda: float(next(ticks)))
    assert stats.steps == 9 and stats.images == 9 * 32
    assert rates[0] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 0.1)))  # the first step at 1 s of 10
    assert all(a > b for a, b in zip(rates, rates[1:]))  # cosine, decreasing
