"""The ``dfmscd`` command line: distill, architectures, evaluate, card, the remote teachers/jobs/students/evalsets
(``remote.py``), and the commands other packages add.

Every user mistake (a ``DfmscdError``, a missing file, a bad argument) becomes one line on
stderr and exit code 2, never a traceback; a traceback means a bug. Heavy imports (torch, the
engine) happen inside the commands so that ``--help`` and argument errors are
instant and the library stays free of web imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Sequence

from dfmscd import __version__
from dfmscd.cli.card import add_card_parser
from dfmscd.cli.distill import run_distill
from dfmscd.cli.options import (
    EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, Parser, existing_file, export_list, fail,
    parse_set_option, parse_student_option,
)
from dfmscd.cli.remote import register as add_remote_parsers
from dfmscd.config import PRESETS
from dfmscd.errors import ConfigError, DfmscdError

# Other installed packages (the web service) add commands through this entry-point group: each
# entry point is a callable taking the sub-parsers action. The library never names them.
COMMANDS_GROUP = "dfmscd.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Data-free multi-student coevolved distillation (DF-MSCD).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    d = sub.add_parser("distill", help="distill a teacher into several students without data")
    d.add_argument("--teacher", required=True, type=existing_file, help="teacher weights (.safetensors, or a weights-only .pt/.pth state_dict)")
    d.add_argument("--card", required=True, type=existing_file, help="teacher model card (JSON)")
    d.add_argument("--student", action="append", required=True, metavar="ARCH|NAME=ARCH", help="a student architecture; repeat for several")
    d.add_argument("--preset", default="balanced", choices=sorted(PRESETS))
    d.add_argument("--budget", help="wall-clock ('300s', '5m', '2h') or epochs ('40e', '40 epochs'); a bare number is refused; default: the preset's epochs")
    d.add_argument("--out", required=True, type=Path, help="output folder")
    d.add_argument("--seed", type=int, help="random seed (default: the config's)")
    d.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field, e.g. --set lr_s=0.1; repeatable")
    d.add_argument("--export", type=export_list, default=[], metavar="FORMATS",
                   help="also export students, each file verified: onnx,torchscript,onnx-int8 (INT8 calibrated on the run's images)")
    d.add_argument("--latency-repeats", type=int, default=5, metavar="N",
                   help="timed runs per format and batch size for student_report.json's CPU latency (0: no latency)")
    d.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=_cmd_distill)

    a = sub.add_parser("architectures", help="list the model zoo")
    a.add_argument("--all", action="store_true", help="also list the torchvision models (tv/<name>)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--num-classes", type=int, default=10, help="classes used to count parameters (default 10)")
    a.add_argument("--in-channels", type=int, default=3, choices=(1, 3))
    a.add_argument("--image-size", type=int, default=32)
    a.set_defaults(func=_cmd_architectures)

    e = sub.add_parser("evaluate", help="accuracy of a model file on labelled images (.npz or class-folder archive)")
    e.add_argument("model", type=existing_file,
                   help="a .safetensors, .onnx or .int8.onnx written by dfmscd (card embedded), or any weights file with --card (e.g. a teacher)")
    e.add_argument("data", type=existing_file,
                   help=".npz with 'x' (images) and 'y' (integer labels), or a .tar/.tar.gz/.zip of CLASS/IMAGE.png folders")
    e.add_argument("--card", type=existing_file, help="model card JSON for weights without an embedded card (a teacher)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", action="store_true", help="print a JSON object instead of a sentence")
    e.set_defaults(func=_cmd_evaluate)

    add_card_parser(sub)
    add_remote_parsers(sub)  # teachers / jobs / students / evalsets: a remote service through dfmscd.client

    for ep in entry_points(group=COMMANDS_GROUP):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code instead of raising it."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args))
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except DfmscdError as exc:
        return fail(str(exc) or type(exc).__name__)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED


# --- architectures -------------------------------------------------------------------------

def _cmd_architectures(args: argparse.Namespace) -> int:
    from dfmscd.models import count_parameters, create_model, list_models

    builtins = list_models(include_torchvision=False)
    tv_names = [n for n in list_models() if n not in set(builtins)]
    rows: list[dict[str, Any]] = []
    for name in builtins:
        try:
            params: int | None = count_parameters(create_model(name, args.num_classes, args.in_channels, args.image_size))
        except DfmscdError:
            params = None  # e.g. too small an input for this architecture
        rows.append({"name": name, "parameters": params, "source": "builtin"})
    if args.all:
        rows += [{"name": n, "parameters": None, "source": "torchvision"} for n in tv_names]

    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    shape = f"{args.num_classes} classes, {args.in_channels}x{args.image_size}x{args.image_size}"
    width = max(len(r["name"]) for r in rows) if rows else 10
    print(f"{'architecture':<{width}}  parameters ({shape})")
    for r in rows:
        count = f"{r['parameters']:,}" if r["parameters"] is not None else ("-" if r["source"] == "torchvision" else "n/a")
        print(f"{r['name']:<{width}}  {count:>12}")
    if not args.all and tv_names:
        print(f"... and {len(tv_names)} torchvision models as tv/<name> (list them with --all)")
    return EXIT_OK


# --- evaluate ------------------------------------------------------------------------------

def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dfmscd.evaluate import evaluate_file

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    card = None
    if args.card is not None:  # a teacher (or any weights-only file): the card comes separately
        from dfmscd.io import read_card

        card = read_card(args.card)
    result = evaluate_file(args.model, args.data, card=card, batch_size=args.batch_size)
    accuracy, n = float(result["accuracy"]), int(result["n"])
    if args.json:
        print(json.dumps({"model": str(args.model), "data": str(args.data), "format": result["format"],
                          "architecture": result["architecture"], "samples": n, "accuracy": accuracy}))
    else:
        print(f"accuracy {accuracy:.4f} ({accuracy * 100:.2f}%) on {n} samples [{result['architecture']}, {result['format']}]")
    return EXIT_OK


# --- distill -------------------------------------------------------------------------------

def _cmd_distill(args: argparse.Namespace) -> int:
    return run_distill(args)


__all__ = ["main", "build_parser", "parse_set_option", "parse_student_option"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
