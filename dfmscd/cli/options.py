"""What every ``dfmscd`` command shares: the program name, exit codes, the one-line-error parser
and the option parsers. It imports no command, so commands can import it without a circle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from dfmscd.errors import ConfigError
from dfmscd.formats import EXPORT_FORMATS

PROG = "dfmscd"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    return path


def export_list(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"unknown export format {bad[0] if bad else text!r}; choose from {', '.join(EXPORT_FORMATS)}")
    return list(dict.fromkeys(formats))


def parse_set_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, true/false, null)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def parse_student_option(text: str) -> tuple[str | None, str]:
    """``arch`` or ``name=arch`` -> (name or None, architecture)."""
    name, sep, arch = text.partition("=")
    if not sep:
        return None, text.strip()
    if not name.strip() or not arch.strip():
        raise ConfigError(f"--student expects an architecture or name=architecture, got {text!r}")
    return name.strip(), arch.strip()
