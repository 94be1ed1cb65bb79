"""Benchmark datasets held in memory as tensors, with a fixed stratified split.

Images are N x C x H x W, uint8 (the archives) or floats in [0, 1] (digits); the normalisation
(per-channel mean/std of [0, 1] pixels) is computed on the training split only and goes into the
teacher's model card, so the generator, the students and the evaluation all see the same input
convention. Nothing is downloaded: digits ship with scikit-learn, the archives (MNIST, CIFAR-10,
Tiny-ImageNet at 32x32) lie in ../shared/data and are decoded once into a git-ignored cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split

DATASETS = ("digits", "digits24", "mnist", "cifar10", "tiny_imagenet32")


class DatasetUnavailable(Exception):
    """The requested dataset is not on disk (we never download it)."""


@dataclass
class Dataset:
    name: str
    num_classes: int
    class_names: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips are a valid augmentation (not for digits)
    sha256: str | None = None  # of the archive the images came from

    @staticmethod
    def pixels(x: torch.Tensor) -> torch.Tensor:
        """Floats in [0, 1] from either storage (uint8 or float)."""
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pixels(x)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def card_dict(self, architecture: str) -> dict:
        """A model card (as a dict) for a model of this dataset."""
        return {"architecture": architecture, "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "mean": list(self.mean), "std": list(self.std), "class_names": self.class_names}


def stratified_split(y: np.ndarray, seed: int, val: float = 0.2, test: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a train/val/test split with every class in the same proportion in each part."""
    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1.0 - test), stratify=y[rest], random_state=seed + 1)
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def load_digits_dataset(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 0..16 grey levels) split 60/20/20."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)  # N x 1 x 8 x 8 in [0, 1]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    tr, va, te = stratified_split(bunch.target, seed)
    mean, std = _channel_stats(x[tr])
    return Dataset("digits", 10, [str(i) for i in range(10)], x[tr], y[tr], x[va], y[va], x[te], y[te],
                   mean, std, flip=False)


ARCHIVES = {  # dataset -> archive in ../shared/data (see its README for provenance and checksums)
    "mnist": "mnist-png.tar.gz",
    "cifar10": "cifar10-jpeg.tar.gz",
    "tiny_imagenet32": "tiny-imagenet-32-jpeg.tar.gz",
}
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
CACHE_DIR = Path(__file__).resolve().parent / "cache" / "data"
VAL_SIZE = 5000
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tiny_imagenet_parts(archive: Path) -> dict[str, np.ndarray | list[str]]:
    """Train from its class folders (``train/<wnid>/images/``); test is ``val/``, labelled by
    ``val/val_annotations.txt``. Classes: the sorted wnids, named by the first synonym in ``words.txt``."""
    from dfmscd.image_archive import read_class_folders, read_text_member

    wnids = sorted(read_text_member(archive, "wnids.txt").split())
    words = dict(line.split("\t", 1) for line in read_text_member(archive, "words.txt").splitlines() if "\t" in line)
    val_labels = dict(line.split("\t")[:2] for line in read_text_member(archive, "val/val_annotations.txt").splitlines() if line)
    train = read_class_folders(archive, "train", class_names=wnids, channels=3)
    test = read_class_folders(archive, "val", class_names=wnids, channels=3,
                              class_of=lambda name: val_labels.get(name.name))
    names, seen = [], set()
    for w in wnids:  # a readable name, unique (a few synonyms repeat across wnids)
        name = words.get(w, w).split(",")[0].strip()
        names.append(name if name not in seen else f"{name} ({w})")
        seen.add(name)
    return {"x_train": train.x, "y_train": train.y, "x_test": test.x, "y_test": test.y, "classes": names}


def _class_folder_parts(archive: Path, class_names: list[str] | None) -> dict[str, np.ndarray | list[str]]:
    from dfmscd.image_archive import read_class_folders

    train = read_class_folders(archive, "train", class_names=class_names)
    test = read_class_folders(archive, "test", class_names=train.class_names)
    return {"x_train": train.x, "y_train": train.y, "x_test": test.x, "y_test": test.y, "classes": train.class_names}


def decoded_archive(name: str, data_dir: str | Path | None = None, cache_dir: Path = CACHE_DIR,
                    log: Callable[[str], None] = lambda _m: None) -> tuple[dict[str, np.ndarray], list[str], str]:
    """(uint8 N x H x W x C arrays and labels of train/ and test/, class names, the archive's sha256).

    Decoded once, then read from ``cache_dir/<dataset>-<sha256[:16]>/`` (a changed archive is a new key).
    """
    archive = Path(data_dir or DATA_DIR) / ARCHIVES[name]
    if not archive.is_file():
        raise DatasetUnavailable(f"{archive} not found (the archives live in ../shared/data; nothing is downloaded)")
    sha = sha256_of(archive)
    folder = cache_dir / f"{name}-{sha[:16]}"
    keys = ("x_train", "y_train", "x_test", "y_test")
    if not (folder / "classes.json").is_file():
        started = time.perf_counter()
        log(f"{name}: decoding {archive.name} (once; cached in {folder})")
        parts = _tiny_imagenet_parts(archive) if name == "tiny_imagenet32" else \
            _class_folder_parts(archive, CIFAR10_CLASSES if name == "cifar10" else None)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for key in keys:
            np.save(tmp / f"{key}.npy", parts[key])
        (tmp / "classes.json").write_text(json.dumps({"classes": parts["classes"], "sha256": sha}))
        if folder.exists():
            shutil.rmtree(tmp)  # another process got there first
        else:
            os.replace(tmp, folder)
        log(f"{name}: decoded in {time.perf_counter() - started:.1f}s")
    arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in keys}
    classes = json.loads((folder / "classes.json").read_text())["classes"]
    return arrays, classes, sha


def load_archive_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0, val_size: int = VAL_SIZE,
                         log: Callable[[str], None] = lambda _m: None) -> Dataset:
    """An archive of ../shared/data as uint8 tensors: a fixed stratified validation split of ``val_size``
    images carved from train/ (teachers train on the rest), test/ (Tiny-ImageNet: val/) for reporting."""
    arrays, classes, sha = decoded_archive(name, data_dir, log=log)

    def nchw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a).transpose(0, 3, 1, 2).copy())

    y = np.asarray(arrays["y_train"])
    tr, va = train_test_split(np.arange(len(y)), test_size=val_size, stratify=y, random_state=seed)
    tr, va = np.sort(tr), np.sort(va)
    x = nchw(arrays["x_train"])
    y_t = torch.from_numpy(y.astype(np.int64))
    mean, std = _channel_stats(x[torch.from_numpy(tr)])
    return Dataset(name, len(classes), classes, x[tr], y_t[tr], x[va], y_t[va], nchw(arrays["x_test"]),
                   torch.from_numpy(np.asarray(arrays["y_test"]).astype(np.int64)), mean, std,
                   flip=name != "mnist", sha256=sha)


def load_digits_upsampled(side: int, seed: int = 0) -> Dataset:
    """The 8x8 digits bilinearly upsampled to ``side`` x ``side`` (same split): a teacher and students at a
    resolution the presets were not tuned on."""
    d = load_digits_dataset(seed)

    def up(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp_(0, 1)

    x_tr = up(d.x_train)
    mean, std = _channel_stats(x_tr)
    return Dataset(f"digits{side}", 10, d.class_names, x_tr, d.y_train, up(d.x_val), d.y_val, up(d.x_test), d.y_test,
                   mean, std, flip=False)


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0,
                 log: Callable[[str], None] = lambda _m: None) -> Dataset:
    if name == "digits":
        return load_digits_dataset(seed)
    if name == "digits24":
        return load_digits_upsampled(24, seed)
    if name in ARCHIVES:
        return load_archive_dataset(name, data_dir, seed, log=log)
    raise DatasetUnavailable(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batch augmentation for real images: random translation by up to ``pad`` pixels (zero
    padding in normalised space would be a colour, so we pad by replication) and optional flips."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)  # n x h
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)  # n x w
        x = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
                   rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x
