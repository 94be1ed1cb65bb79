"""The card's normalisation: computing mean/std from sample images, and checking a teacher against it.

Convention (the same everywhere: evaluation, synthesis, exports): pixels are scaled to [0, 1]
(uint8 / 255), then each channel becomes ``(x - mean[c]) / std[c]``. ``mean``/``std`` are those
of the teacher's *training* images, so the model's input has mean 0 and standard deviation 1
per channel. A wrong mean/std is not an error anywhere (any numbers make a valid card), but the
teacher then sees inputs unlike its training data and its accuracy drops silently, so
``normalisation_warnings`` compares the teacher's first BatchNorm statistics with what the card
implies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dfmscd.errors import DfmscdError
from dfmscd.io.card import ModelCard

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_SAMPLE_IMAGES = 100_000
# |estimated mean of the teacher's training inputs| above this, in units of the input's standard
# deviation, gets a warning: with the right card it is ~0, with pixels in 0..255 units or the
# [0, 1] pixels of an un-normalised training run it is 0.5 to several hundred.
MEAN_WARN_THRESHOLD = 0.5
# The first BN's running variance against its response to unit white noise: real images are
# spatially correlated, so this ratio is legitimately anywhere from ~0.3 to ~kernel area; only a
# factor of 100 (std off by 10x, e.g. a std given in 0..255 units) is flagged.
VARIANCE_WARN_FACTOR = 100.0


class SampleImagesError(DfmscdError):
    """The sample images for a card are missing, unreadable or inconsistent."""


# --- computing mean/std ----------------------------------------------------------------------

@dataclass(frozen=True)
class ImageStats:
    channels: int
    side: int | None  # None when the images are not all the same square size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int


def _scaled(x: np.ndarray, label: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
        if x.size and (not np.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise SampleImagesError(f"{label}: float images must be in [0, 1]; pass uint8 pixels or scale to [0, 1]")
        return x
    raise SampleImagesError(f"{label}: images have dtype {x.dtype}; expected uint8 or float in [0, 1]")


def _as_nchw(x: np.ndarray, label: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise SampleImagesError(f"{label}: x has shape {list(x.shape)}; expected N x H x W, N x C x H x W or N x H x W x C (C = 1 or 3)")


def _stats(batches: list[np.ndarray], label: str) -> ImageStats:
    if not batches or sum(len(b) for b in batches) == 0:
        raise SampleImagesError(f"{label}: no images")
    channels = batches[0].shape[1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    pixels = 0
    sides = set()
    for b in batches:
        total += b.sum(axis=(0, 2, 3))
        total_sq += (b * b).sum(axis=(0, 2, 3))
        pixels += b.shape[0] * b.shape[2] * b.shape[3]
        sides.add((b.shape[2], b.shape[3]))
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean * mean, 0.0))
    if (std <= 1e-6).any():
        raise SampleImagesError(f"{label}: a channel has no variation (std 0); these cannot be real sample images")
    (h, w), = sides if len(sides) == 1 else ((None, None),)
    side = h if h is not None and h == w else None
    return ImageStats(channels, side, tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std),
                      sum(len(b) for b in batches))


def stats_from_npz(path: str | os.PathLike[str]) -> ImageStats:
    """Per-channel mean/std of the ``x`` array of an ``.npz`` (uint8, or float in [0, 1])."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise SampleImagesError(f"{path.name}: needs an array 'x' of images, found {sorted(data.files)}")
            x = data["x"]
    except SampleImagesError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise SampleImagesError(f"{path.name}: unreadable .npz ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return _stats([_scaled(_as_nchw(x, path.name), path.name)], path.name)


def stats_from_folder(folder: str | os.PathLike[str], channels: int | None = None) -> ImageStats:
    """Per-channel mean/std of the PNG/JPEG files under ``folder`` (recursively).

    ``channels`` None: 1 when every image is greyscale, else 3 (greyscale images then count as RGB).
    """
    from PIL import Image, UnidentifiedImageError  # deferred on purpose: only folder input needs it

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SampleImagesError(f"{folder}: no .png/.jpg/.jpeg images found")
    if len(files) > MAX_SAMPLE_IMAGES:
        files = files[:MAX_SAMPLE_IMAGES]
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise SampleImagesError(f"{p}: not a readable image ({exc})") from None
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I;16", "I", "LA") for im in images) else 3
    mode = "L" if channels == 1 else "RGB"
    batches = [np.asarray(im.convert(mode), dtype=np.uint8).reshape(1, im.height, im.width, channels).transpose(0, 3, 1, 2)
               for im in images]
    return _stats([b.astype(np.float64) / 255.0 for b in batches], str(folder))


def stats_from_archive(path: str | os.PathLike[str], channels: int | None = None) -> ImageStats:
    """Per-channel mean/std of a class-folder archive's images (``dfmscd.image_archive``): those under
    ``train/`` when it has one (the split a teacher was trained on), else all of them."""
    from dfmscd.image_archive import ImageArchiveError, has_top_folder, read_class_folders

    path = Path(path)
    try:
        subset = "train" if has_top_folder(path, "train") else None
        images = read_class_folders(path, subset, channels=channels, class_of=lambda _name: "images")
    except ImageArchiveError as exc:
        raise SampleImagesError(str(exc)) from None
    x = images.x[:MAX_SAMPLE_IMAGES]
    stats = _stats([x.transpose(0, 3, 1, 2).astype(np.float64) / 255.0], path.name)
    return stats


def sample_stats(source: str | os.PathLike[str], channels: int | None = None) -> ImageStats:
    """A folder of images, an ``.npz`` with ``x``, or a class-folder archive (.tar, .tar.gz, .tgz, .zip)."""
    from dfmscd.image_archive import is_archive

    source = Path(source)
    if source.is_dir():
        return stats_from_folder(source, channels)
    if source.is_file() and source.suffix.lower() == ".npz":
        return stats_from_npz(source)
    if source.is_file() and is_archive(source):
        return stats_from_archive(source, channels)
    raise SampleImagesError(f"{source}: expected a folder of .png/.jpg images, an .npz file with an array 'x', "
                            "or a .tar/.tar.gz/.zip archive of images")


# --- checking a teacher against its card -------------------------------------------------------

def _first_batchnorm(model: nn.Module) -> nn.modules.batchnorm._BatchNorm | None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            return m
    return None


def _bn_inputs(model: nn.Module, bn: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """What the first BN receives for ``batch`` (the forward stops there)."""
    captured: list[torch.Tensor] = []

    class _Stop(Exception):
        pass

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().float())
        raise _Stop

    handle = bn.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise DfmscdError("the first BatchNorm layer was not reached by a forward pass")
    return captured[0]


@dataclass(frozen=True)
class NormalisationCheck:
    """``input_mean``: estimated per-channel mean of the teacher's training inputs at the model's
    input (0 when the card is right); ``variance_ratio``: median running_var / white-noise response."""

    input_mean: tuple[float, ...]
    variance_ratio: float

    def warnings(self, card: ModelCard) -> list[str]:
        out = []
        worst = max(range(len(self.input_mean)), key=lambda c: abs(self.input_mean[c]))
        if abs(self.input_mean[worst]) > MEAN_WARN_THRESHOLD:
            est = ", ".join(f"{m:.2f}" for m in self.input_mean)
            pixel = [card.mean[c] + m * card.std[c] for c, m in enumerate(self.input_mean)]
            out.append(
                f"normalisation: the teacher's first BatchNorm statistics say its training inputs had mean ≈ [{est}] "
                f"(in standard deviations) where the card's mean/std give 0; the card's mean {list(card.mean)} / "
                f"std {list(card.std)} are probably not the ones it was trained with (its pixel mean looks like "
                f"≈ [{', '.join(f'{p:.3g}' for p in pixel)}] on the 0..1 scale). Pixels are scaled to [0, 1], then "
                "(x - mean) / std; compute them with `dfmscd card --images DIR_or_NPZ` (warning threshold: "
                f"|mean| > {MEAN_WARN_THRESHOLD})"
            )
        r = self.variance_ratio
        if math.isfinite(r) and (r > VARIANCE_WARN_FACTOR or r < 1 / VARIANCE_WARN_FACTOR):
            out.append(
                f"normalisation: the teacher's first BatchNorm variance is {r:.3g}x what unit-variance inputs give; "
                f"the card's std {list(card.std)} looks off by a factor of about {math.sqrt(r) if r > 1 else 1 / math.sqrt(r):.3g} "
                f"(warning threshold: a factor of {VARIANCE_WARN_FACTOR:g} in variance)"
            )
        return out


def check_normalisation(model: nn.Module, card: ModelCard) -> NormalisationCheck | None:
    """Estimate, from the first BatchNorm layer, the mean of the inputs the teacher was trained on.

    The layers before the first BN are (close to) linear, so their output mean for an input with
    per-channel mean ``mu`` is ``r0 + A @ mu``: ``r0`` is the response to a zero image and column
    ``c`` of ``A`` the extra response to a constant 1 on channel ``c`` (padding included). The BN's
    ``running_mean`` is that output mean over the training data, so least squares gives ``mu``.
    None when the model has no BN layer the input reaches.
    """
    bn = _first_batchnorm(model)
    if bn is None:
        return None
    c, h, w = card.input_shape
    was_training = model.training
    model.eval()
    try:
        probes = torch.zeros(c + 1, c, h, w)
        for i in range(c):
            probes[i + 1, i] = 1.0
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        resp = _bn_inputs(model, bn, probes.to(device)).cpu()
        per_probe = resp.flatten(2).mean(dim=2) if resp.ndim >= 3 else resp  # (c + 1) probes x K channels
        r0, a = per_probe[0], (per_probe[1:] - per_probe[0]).T  # K, K x c
        target = bn.running_mean.detach().float().cpu() - r0
        mu = torch.linalg.lstsq(a.double(), target.double().unsqueeze(1)).solution.squeeze(1)
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(16, c, h, w, generator=gen)
        nresp = _bn_inputs(model, bn, noise.to(device)).cpu()
        noise_var = nresp.transpose(0, 1).flatten(1).var(dim=1)
        ratio = bn.running_var.detach().float().cpu() / noise_var.clamp_min(1e-12)
    finally:
        model.train(was_training)
    return NormalisationCheck(tuple(float(m) for m in mu), float(ratio.median()))


def normalisation_warnings(model: nn.Module, card: ModelCard) -> list[str]:
    """Warnings (never errors) when the teacher's BN statistics disagree with the card's mean/std."""
    check = check_normalisation(model, card)
    return check.warnings(card) if check is not None else []


__all__ = [
    "ImageStats", "MEAN_WARN_THRESHOLD", "NormalisationCheck", "SampleImagesError", "VARIANCE_WARN_FACTOR",
    "check_normalisation", "normalisation_warnings", "sample_stats", "stats_from_archive", "stats_from_folder",
    "stats_from_npz",
]
