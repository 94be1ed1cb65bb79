"""Student names, the one rule: they name files and URLs (``/students/{name}/weights``), so they
are short, portable and never hidden files. Torch-free: the API checks them before any model."""

from __future__ import annotations

import re

STUDENT_NAME_PATTERN = r"^(?!\.)[A-Za-z0-9_.-]{1,64}$"
STUDENT_NAME_RULE = "1-64 characters from A-Z a-z 0-9 _ . -, not starting with '.'"
_NAME_RE = re.compile(STUDENT_NAME_PATTERN)


def default_student_name(architecture: str) -> str:
    """The architecture, with ``/`` (as in ``tv/resnet18``) replaced by ``_``."""
    return architecture.replace("/", "_")


def is_valid_student_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))
