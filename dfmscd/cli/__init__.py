"""The ``dfmscd`` command line (console script ``dfmscd``; also ``python -m dfmscd``)."""

from dfmscd.cli.main import build_parser, main
from dfmscd.cli.options import parse_set_option, parse_student_option

__all__ = ["main", "build_parser", "parse_set_option", "parse_student_option"]
