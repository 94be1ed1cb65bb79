"""The ``dfmscd`` command line: distill, architectures, evaluate, and the service commands.

Every user mistake (a ``DfmscdError``, a missing file, a bad argument) becomes one line on
stderr and exit code 2, never a traceback; a traceback means a bug. Heavy imports (torch, the
engine, the web service) happen inside the commands so that ``--help`` and argument errors are
instant and the library stays free of web imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from dfmscd.errors import ConfigError, DfmscdError

PROG = "dfmscd"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXPORT_FORMATS = ("onnx", "torchscript")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    return path


def _export_list(text: str) -> list[str]:
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


def build_parser() -> argparse.ArgumentParser:
    from dfmscd import __version__
    from dfmscd.config import PRESETS

    parser = _Parser(prog=PROG, description="Data-free multi-student coevolved distillation (DF-MSCD).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser("distill", help="distill a teacher into several students without data")
    d.add_argument("--teacher", required=True, type=_existing_file, help="teacher weights (.safetensors, or a weights-only .pt/.pth state_dict)")
    d.add_argument("--card", required=True, type=_existing_file, help="teacher model card (JSON)")
    d.add_argument("--student", action="append", required=True, metavar="ARCH|NAME=ARCH", help="a student architecture; repeat for several")
    d.add_argument("--preset", default="balanced", choices=sorted(PRESETS))
    d.add_argument("--budget", help="wall-clock ('300s', '5m', '2h') or epochs ('40e'); default: the preset's epochs")
    d.add_argument("--out", required=True, type=Path, help="output folder")
    d.add_argument("--seed", type=int, help="random seed (default: the config's)")
    d.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field, e.g. --set lr_s=0.1; repeatable")
    d.add_argument("--export", type=_export_list, default=[], metavar="FORMATS", help="also export students: onnx,torchscript")
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

    e = sub.add_parser("evaluate", help="accuracy of a student file on a labelled .npz")
    e.add_argument("model", type=_existing_file, help="a .safetensors written by dfmscd (card embedded)")
    e.add_argument("data", type=_existing_file, help=".npz with 'x' (images) and 'y' (integer labels)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", action="store_true", help="print a JSON object instead of a sentence")
    e.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=_cmd_serve)

    k = sub.add_parser("keys", help="manage API keys of the service")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_Parser)
    ksub.required = True
    kc = ksub.add_parser("create", help="create an API key and print it once")
    kc.add_argument("--name", required=True)
    kc.set_defaults(func=_cmd_keys_create)
    kr = ksub.add_parser("revoke", help="revoke an API key by its id (key_...)")
    kr.add_argument("key_id")
    kr.set_defaults(func=_cmd_keys_revoke)
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
        return _fail(str(exc) or type(exc).__name__)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
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
    from dfmscd.evaluate import evaluate, read_labelled_npz
    from dfmscd.io import load_model

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    module, card = load_model(args.model)
    x, y = read_labelled_npz(args.data, card)
    accuracy = float(evaluate(module, card, x, y, batch_size=args.batch_size))
    if args.json:
        print(json.dumps({"model": str(args.model), "data": str(args.data), "architecture": card.architecture,
                          "samples": int(len(y)), "accuracy": accuracy}))
    else:
        print(f"accuracy {accuracy:.4f} ({accuracy * 100:.2f}%) on {len(y)} samples [{card.architecture}]")
    return EXIT_OK


# --- service commands (web imports stay out of the library) --------------------------------

def _service() -> Any:
    try:
        import app.cli as service_cli
    except ImportError as exc:
        raise DfmscdError(f"the web service is not available in this installation ({exc})") from None
    return service_cli


def _cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    return int(_service().serve(host=args.host, port=args.port))


def _cmd_keys_create(args: argparse.Namespace) -> int:
    return int(_service().create_key(name=args.name))


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    return int(_service().revoke_key(args.key_id))


# --- distill -------------------------------------------------------------------------------

def _cmd_distill(args: argparse.Namespace) -> int:
    from dfmscd.cli_distill import run_distill

    return run_distill(args)


__all__ = ["main", "build_parser", "parse_set_option", "parse_student_option"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
