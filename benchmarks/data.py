"""Benchmark datasets held in memory as tensors, with a fixed stratified split.

Images are floats in [0, 1], N x C x H x W; the normalisation (per-channel mean/std) is
computed on the training split only and goes into the teacher's model card, so the
generator, the students and the evaluation all see the same input convention.
Nothing is downloaded: digits ship with scikit-learn, CIFAR must already be on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

DATASETS = ("digits", "cifar10", "cifar100")


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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
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


def load_cifar_dataset(name: str, data_dir: str | Path, seed: int = 0, val_size: int = 5000) -> Dataset:
    """CIFAR-10/100 from torchvision's folder layout; the official test set is the test split."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        train = cls(str(data_dir), train=True, download=False)
        test = cls(str(data_dir), train=False, download=False)
    except RuntimeError:
        raise DatasetUnavailable(
            f"{name} not found or corrupted under {data_dir} (expected torchvision's layout, e.g. "
            f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'}/; nothing is downloaded)") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    x, y = tensors(train)
    x_test, y_test = tensors(test)
    tr, va = train_test_split(np.arange(len(y)), test_size=val_size, stratify=y.numpy(), random_state=seed)
    tr, va = np.sort(tr), np.sort(va)
    mean, std = _channel_stats(x[tr])
    return Dataset(name, len(train.classes), list(train.classes), x[tr], y[tr], x[va], y[va], x_test, y_test,
                   mean, std, flip=True)


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    if name == "digits":
        return load_digits_dataset(seed)
    if name in ("cifar10", "cifar100"):
        if data_dir is None:
            raise DatasetUnavailable(f"--data-dir is required for {name} (nothing is downloaded)")
        return load_cifar_dataset(name, data_dir, seed)
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
