"""The benchmark's teacher: trained once on the training split, then cached on disk.

The cache key holds everything that changes the weights (dataset, split seed, architecture,
epochs), so a changed setting trains a new teacher instead of silently reusing an old one.
The cached files are exactly what a user would hand to ``dfmscd distill``: safetensors
weights plus a JSON model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.data import Dataset
from benchmarks.train import accuracy, train_supervised

CACHE_DIR = Path(__file__).resolve().parent / "cache"


def teacher_paths(data: Dataset, arch: str, epochs: int, seed: int, cache_dir: Path = CACHE_DIR) -> dict[str, Path]:
    stem = f"{data.name}_{arch.replace('/', '-')}_split{seed}_e{epochs}"
    return {"weights": cache_dir / f"{stem}.safetensors", "card": cache_dir / f"{stem}.card.json",
            "meta": cache_dir / f"{stem}.meta.json"}


def get_teacher(data: Dataset, arch: str, epochs: int, seed: int, device: torch.device,
                cache_dir: Path = CACHE_DIR, log=print) -> tuple[nn.Module, Any, dict[str, Any], dict[str, Path]]:
    """(teacher in eval mode on CPU, its card, meta with accuracies and training time, paths)."""
    from dfmscd.io import load_teacher, parse_card, save_model
    from dfmscd.models import create_model
    from dfmscd.report import write_json_atomic

    paths = teacher_paths(data, arch, epochs, seed, cache_dir)
    if all(p.exists() for p in paths.values()):
        card = parse_card(paths["card"].read_text())
        teacher = load_teacher(paths["weights"], card)
        meta = json.loads(paths["meta"].read_text())
        log(f"teacher: cached {paths['weights'].name} (val {meta['val_accuracy']:.4f}, test {meta['test_accuracy']:.4f})")
        return teacher, card, meta, paths

    card = parse_card(data.card_dict(arch))
    c, h, _ = data.input_shape
    torch.manual_seed(seed)
    model = create_model(arch, data.num_classes, in_channels=c, image_size=h)
    log(f"teacher: training {arch} for {epochs} epochs on {len(data.y_train)} images ({device})")
    stats = train_supervised(model, data, epochs, device, seed=seed)
    meta = {"architecture": arch, "epochs": epochs, "seed": seed, "train_wall_s": round(stats.wall_s, 2),
            "val_accuracy": accuracy(model, data, "val", device), "test_accuracy": accuracy(model, data, "test", device)}
    model = model.cpu().eval()
    save_model(model, card, paths["weights"])
    write_json_atomic(paths["card"], json.loads(card.to_json()))
    write_json_atomic(paths["meta"], meta)
    log(f"teacher: trained in {stats.wall_s:.1f}s (val {meta['val_accuracy']:.4f}, test {meta['test_accuracy']:.4f})")
    # Reload through the same path a user's teacher takes (also checks BN layers exist).
    return load_teacher(paths["weights"], card), card, meta, paths
