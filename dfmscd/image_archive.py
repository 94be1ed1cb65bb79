"""Class-folder image archives (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``), read safely.

Layout: ``[SUBSET/]CLASS/.../IMAGE.png|jpg|jpeg``: the first folder below the subset (``train``,
``test``, or the archive's root) names the class, and labels follow the sorted class names
unless the caller gives them. Nothing is extracted to disk: members are read into memory and
decoded with Pillow, so what an archive holds can only become pixels.

Refused, naming the member: absolute names, ``..`` components, links and device files anywhere
in the archive; a member, the whole read, or an image's pixel count above its cap; too many
images; undecodable images. Other regular files (``README``, ``*.txt``) are ignored here, and can
be read on request with ``read_text_member``.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

import numpy as np

from dfmscd.errors import DfmscdError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


class ImageArchiveError(DfmscdError):
    """The archive is unreadable, unsafe, too large, or not laid out in class folders."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one read may take (the defaults hold Tiny-ImageNet's 110,000 images)."""

    max_images: int = 200_000
    max_member_bytes: int = 16 * 2**20
    max_total_bytes: int = 2 * 2**30  # uncompressed bytes of the members read
    max_pixels: int = 4096 * 4096  # per image, checked before decoding


@dataclass(frozen=True)
class LabelledImages:
    """``x``: uint8 N x H x W x C; ``y``: int64 N; ``names``: each image's member name."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    names: list[str]


def is_archive(path: str | os.PathLike[str]) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in ARCHIVE_SUFFIXES)


def _checked_name(raw: str) -> PurePosixPath:
    name = raw.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ImageArchiveError(f"archive member {raw!r}: absolute paths are refused")
    if any(part == ".." for part in path.parts):
        raise ImageArchiveError(f"archive member {raw!r}: '..' in a path is refused")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def iter_members(path: str | os.PathLike[str], wanted: Callable[[PurePosixPath], bool],
                 limits: ArchiveLimits = ArchiveLimits()) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(name, bytes) of each regular file ``wanted`` accepts; every member's name and kind is checked,
    wanted or not, so an unsafe archive is refused whichever part of it is read."""
    path = Path(path)
    if not path.is_file():
        raise ImageArchiveError(f"{path.name}: file not found")
    total = [0]

    def take(name: PurePosixPath, size: int, read: Callable[[], bytes]) -> bytes:
        if size > limits.max_member_bytes:
            raise ImageArchiveError(f"archive member {str(name)!r}: {size} bytes (limit {limits.max_member_bytes})")
        total[0] += size
        if total[0] > limits.max_total_bytes:
            raise ImageArchiveError(f"{path.name}: more than {limits.max_total_bytes} bytes to read (limit)")
        data = read()
        if len(data) != size:
            raise ImageArchiveError(f"archive member {str(name)!r}: truncated")
        return data

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _checked_name(info.filename)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):  # a link or a device
                        raise ImageArchiveError(f"archive member {info.filename!r}: links and special files are refused")
                    if info.is_dir() or not name.parts or not wanted(name):
                        continue
                    yield name, take(name, info.file_size, lambda i=info: zf.read(i))
            return
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:  # streaming: one pass, members in archive order
                name = _checked_name(member.name)
                if member.issym() or member.islnk() or not (member.isfile() or member.isdir()):
                    raise ImageArchiveError(f"archive member {member.name!r}: links and special files are refused")
                if member.isdir() or not name.parts or not wanted(name):
                    continue
                fileobj = tf.extractfile(member)
                assert fileobj is not None  # a regular file
                yield name, take(name, member.size, fileobj.read)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ImageArchiveError(f"{path.name}: not a readable .tar/.tar.gz/.zip archive ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _is_image(name: PurePosixPath) -> bool:
    return name.suffix.lower() in IMAGE_SUFFIXES


def decode_image(name: str, data: bytes, limits: ArchiveLimits = ArchiveLimits()) -> np.ndarray:
    """H x W (grey) or H x W x 3 uint8; other modes are converted (alpha dropped, palettes expanded)."""
    from PIL import Image, UnidentifiedImageError  # deferred on purpose: only image input needs Pillow

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > limits.max_pixels:
                raise ImageArchiveError(f"{name}: {im.width}x{im.height} pixels (limit {limits.max_pixels})")
            grey = im.mode in ("L", "1", "I;16", "I", "LA")
            return np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
    except ImageArchiveError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageArchiveError(f"{name}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def stack_images(arrays: Sequence[np.ndarray], names: Sequence[str], channels: int | None = None) -> np.ndarray:
    """N x H x W x C uint8 from decoded images of one size; ``channels`` None: 1 when all are grey, else 3."""
    if not arrays:
        raise ImageArchiveError("no images")
    if channels is None:
        channels = 1 if all(a.ndim == 2 for a in arrays) else 3
    first = arrays[0].shape[:2]
    out = np.empty((len(arrays), *first, channels), dtype=np.uint8)
    for i, (a, name) in enumerate(zip(arrays, names)):
        if a.shape[:2] != first:
            raise ImageArchiveError(f"{name}: {a.shape[1]}x{a.shape[0]} pixels where the first image has "
                                    f"{first[1]}x{first[0]}; the images must all be the same size")
        if a.ndim == 2:
            out[i] = a[..., None] if channels == 1 else np.repeat(a[..., None], 3, axis=2)
        elif channels == 3:
            out[i] = a
        else:  # RGB to grey, ITU-R 601 as Pillow's convert("L")
            out[i] = np.round(a @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)[..., None]
    return out


def has_top_folder(path: str | os.PathLike[str], folder: str, limits: ArchiveLimits = ArchiveLimits()) -> bool:
    """Whether any image lies under ``folder/`` at the archive's root (reads names, not images)."""
    for _ in iter_members(path, lambda n: _is_image(n) and n.parts[0] == folder, limits):
        return True
    return False


def read_class_folders(path: str | os.PathLike[str], subset: str | None = None, class_names: Sequence[str] | None = None,
                       channels: int | None = None, limits: ArchiveLimits = ArchiveLimits(),
                       class_of: Callable[[PurePosixPath], str | None] | None = None,
                       limit_per_class: int | None = None) -> LabelledImages:
    """The images of a class-folder archive (below ``subset/`` when given) with their labels.

    ``class_names`` None: the sorted names of the class folders found; given (a card's), each folder
    must be one of them and its index is the label. ``class_of`` overrides how a member's class is
    found (for archives whose labels live in a side file); it returns None to skip a member.
    ``limit_per_class`` keeps the first images of each class in the archive's order (a sample).
    Images are sorted by member name, so the result does not depend on the archive's order.
    """
    prefix = () if not subset else PurePosixPath(subset).parts
    depth = len(prefix)

    def wanted(name: PurePosixPath) -> bool:
        return _is_image(name) and name.parts[:depth] == prefix

    found: list[tuple[str, str, np.ndarray]] = []
    per_class: dict[str, int] = {}
    for name, data in iter_members(path, wanted, limits):
        rest = PurePosixPath(*name.parts[depth:])
        if class_of is not None:
            cls = class_of(name)
            if cls is None:
                continue
        elif len(rest.parts) < 2:
            raise ImageArchiveError(f"archive member {str(name)!r}: an image outside a class folder "
                                    f"(expected {'/'.join(prefix) + '/' if prefix else ''}CLASS/IMAGE)")
        else:
            cls = rest.parts[0]
        if limit_per_class is not None:
            if per_class.get(cls, 0) >= limit_per_class:
                continue
            per_class[cls] = per_class.get(cls, 0) + 1
        if len(found) >= limits.max_images:
            raise ImageArchiveError(f"{Path(path).name}: more than {limits.max_images} images (limit)")
        found.append((str(name), cls, decode_image(str(name), data, limits)))
    where = f"{Path(path).name}{' under ' + subset + '/' if subset else ''}"
    if not found:
        raise ImageArchiveError(f"{where}: no .png/.jpg/.jpeg images found")
    found.sort(key=lambda t: t[0])
    folders = sorted({cls for _, cls, _ in found})
    names = list(class_names) if class_names is not None else folders
    index = {n: i for i, n in enumerate(names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ImageArchiveError(f"{where}: class folder(s) {unknown[:5]} are not among the class names {names[:10]}"
                                f"{' ...' if len(names) > 10 else ''}")
    x = stack_images([a for _, _, a in found], [n for n, _, _ in found], channels)
    y = np.array([index[cls] for _, cls, _ in found], dtype=np.int64)
    return LabelledImages(x, y, names, [n for n, _, _ in found])


def read_text_member(path: str | os.PathLike[str], member: str, limits: ArchiveLimits = ArchiveLimits()) -> str:
    """One text file of the archive (e.g. a label list), UTF-8."""
    target = PurePosixPath(member)
    for _, data in iter_members(path, lambda n: n == target, limits):
        return data.decode("utf-8")
    raise ImageArchiveError(f"{Path(path).name}: no member {member!r}")


__all__ = [
    "ARCHIVE_SUFFIXES", "ArchiveLimits", "IMAGE_SUFFIXES", "ImageArchiveError", "LabelledImages", "decode_image",
    "has_top_folder", "is_archive", "iter_members", "read_class_folders", "read_text_member", "stack_images",
]
