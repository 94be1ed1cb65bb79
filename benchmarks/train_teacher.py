"""Train a benchmark teacher on a dataset's training split and store it in ``benchmarks/teachers/``.

    uv run python benchmarks/train_teacher.py --dataset cifar10            # the recipe's arch and epochs
    uv run python benchmarks/train_teacher.py --dataset mnist --threads 1

Prints and stores the command, the validation and test accuracy, and the wall and CPU time. An
existing teacher of the same key is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``dfmscd`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.data import DATASETS, DatasetUnavailable, load_dataset
from benchmarks.teacher import RECIPES, TEACHERS_DIR, get_teacher, recipe_for, teacher_paths
from benchmarks.train import pick_device


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--arch", help=f"default: the recipe's ({', '.join(f'{k} {r.arch}' for k, r in RECIPES.items())})")
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", type=Path, default=TEACHERS_DIR)
    p.add_argument("--force", action="store_true", help="retrain even if a teacher of this key exists")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_dataset(args.dataset, seed=args.split_seed, log=log)
    except DatasetUnavailable as exc:
        print(f"train_teacher: error: {exc}", file=sys.stderr)
        return 2
    recipe = recipe_for(data, args.arch, args.epochs)
    paths = teacher_paths(data, recipe.arch, recipe.epochs, args.split_seed, args.out_dir)
    if args.force:
        for path in paths.values():
            path.unlink(missing_ok=True)
    _, _, meta, paths = get_teacher(data, recipe.arch, recipe.epochs, args.split_seed, pick_device(args.device),
                                    cache_dir=args.out_dir, log=log, train_missing=True, recipe=recipe)
    print(f"{paths['weights']}: val {meta['val_accuracy']:.4f} test {meta['test_accuracy']:.4f} "
          f"wall {meta.get('train_wall_s')} s cpu {meta.get('train_cpu_s')} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
