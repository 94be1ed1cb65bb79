"""The benchmarks' teachers: trained by ``benchmarks/train_teacher.py``, kept in ``benchmarks/teachers/``.

A teacher is keyed by everything that changes its weights: the dataset and the sha256 of the
archive it came from, the split seed, the architecture and the recipe's epochs. The files are
exactly what a user hands to ``dfmscd distill``: safetensors weights plus a JSON model card, and a
meta file with the command, the accuracies, the wall and CPU time and the CPU that trained it.
The small teachers are committed, so every machine distils from the same weights; a benchmark
never retrains one silently (``train_missing`` is a flag of the caller's).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.data import Dataset
from benchmarks.train import accuracy, train_supervised

TEACHERS_DIR = Path(__file__).resolve().parent / "teachers"


@dataclass(frozen=True)
class Recipe:
    """How a dataset's teacher is trained (SGD, Nesterov, cosine; random translations, flips where valid)."""

    arch: str
    epochs: int
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4


RECIPES = {
    "digits": Recipe("resnet20", 40),
    "digits24": Recipe("resnet20", 40),
    "mnist": Recipe("lenet5", 10, lr=0.05, batch_size=128),
    # About two CPU-hours of one core on a 2-core AMD EPYC (resnet20: ~0.55 s per step of 128).
    "cifar10": Recipe("resnet20", 35, lr=0.1, batch_size=128),
    # About one CPU-hour: 200 classes matter here more than accuracy.
    "tiny_imagenet32": Recipe("resnet20", 9, lr=0.1, batch_size=128),
}


class TeacherMissing(Exception):
    """No stored teacher for this key, and the caller did not ask for training."""


def teacher_paths(data: Dataset, arch: str, epochs: int, seed: int, cache_dir: Path = TEACHERS_DIR) -> dict[str, Path]:
    checksum = f"_{data.sha256[:12]}" if data.sha256 else ""
    stem = f"{data.name}_{arch.replace('/', '-')}_split{seed}_e{epochs}{checksum}"
    return {"weights": cache_dir / f"{stem}.safetensors", "card": cache_dir / f"{stem}.card.json",
            "meta": cache_dir / f"{stem}.meta.json"}


def recipe_for(data: Dataset, arch: str | None = None, epochs: int | None = None) -> Recipe:
    base = RECIPES.get(data.name, Recipe(arch or "resnet20", epochs or 40))
    return Recipe(arch or base.arch, epochs or base.epochs, base.lr, base.batch_size, base.weight_decay)


def get_teacher(data: Dataset, arch: str, epochs: int, seed: int, device: torch.device,
                cache_dir: Path = TEACHERS_DIR, log=print, train_missing: bool = True,
                recipe: Recipe | None = None) -> tuple[nn.Module, Any, dict[str, Any], dict[str, Path]]:
    """(teacher in eval mode on CPU, its card, meta with accuracies and training time, paths).

    A missing teacher is trained only with ``train_missing``; otherwise ``TeacherMissing`` says which
    command trains it."""
    from dfmscd.io import load_teacher, parse_card, save_model
    from dfmscd.models import create_model
    from dfmscd.report import write_json_atomic

    paths = teacher_paths(data, arch, epochs, seed, cache_dir)
    if all(p.exists() for p in paths.values()):
        card = parse_card(paths["card"].read_text())
        teacher = load_teacher(paths["weights"], card)
        meta = json.loads(paths["meta"].read_text())
        log(f"teacher: {paths['weights'].name} (val {meta['val_accuracy']:.4f}, test {meta['test_accuracy']:.4f})")
        return teacher, card, meta, paths
    if not train_missing:
        raise TeacherMissing(
            f"no {arch} teacher for {data.name} ({paths['weights'].name}); train it with "
            f"`uv run python benchmarks/train_teacher.py --dataset {data.name} --arch {arch} --epochs {epochs}` "
            "or pass --train-teacher")
    recipe = recipe or recipe_for(data, arch, epochs)
    card = parse_card(data.card_dict(arch))
    c, h, _ = data.input_shape
    torch.manual_seed(seed)
    model = create_model(arch, data.num_classes, in_channels=c, image_size=h)
    log(f"teacher: training {arch} for {epochs} epochs on {len(data.y_train)} images ({device}, "
        f"lr {recipe.lr}, batch {recipe.batch_size}, {torch.get_num_threads()} threads)")
    cpu0 = time.process_time()
    stats = train_supervised(model, data, epochs, device, seed=seed, lr=recipe.lr, batch_size=recipe.batch_size,
                             weight_decay=recipe.weight_decay, log=log)
    from benchmarks.machine import cpu_model

    meta = {"architecture": arch, "epochs": epochs, "seed": seed, "lr": recipe.lr, "batch_size": recipe.batch_size,
            "weight_decay": recipe.weight_decay, "data_sha256": data.sha256,
            "train_wall_s": round(stats.wall_s, 2), "train_cpu_s": round(time.process_time() - cpu0, 2),
            "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__,
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "val_accuracy": accuracy(model, data, "val", device), "test_accuracy": accuracy(model, data, "test", device)}
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, card, paths["weights"])
    write_json_atomic(paths["card"], json.loads(card.to_json()))
    write_json_atomic(paths["meta"], meta)
    log(f"teacher: trained in {stats.wall_s:.1f}s (val {meta['val_accuracy']:.4f}, test {meta['test_accuracy']:.4f})")
    # Reload through the same path a user's teacher takes (also checks BN layers exist).
    return load_teacher(paths["weights"], card), card, meta, paths
