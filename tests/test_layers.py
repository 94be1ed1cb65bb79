"""The dependency rules of docs/architecture.md, checked on the source (every import, lazy ones
included) and on what importing the library really loads."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_STACK = ("fastapi", "starlette", "sqlalchemy", "celery", "kombu", "alembic", "psycopg", "redis", "uvicorn")


def _imports(folder: Path) -> list[tuple[str, int, str]]:
    """(file, line, module) for every absolute import under ``folder``, inside functions too."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path.name, node.lineno, node.module))
    return found


def _violations(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f}:{line} imports {mod}" for f, line, mod in _imports(folder)
            if any(mod == x or mod.startswith(x + ".") for x in forbidden)]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("dfmscd", ("dfmscd_service",) + WEB_STACK),
    ("dfmscd_service/core", ("dfmscd_service.api", "dfmscd_service.worker", "dfmscd_service.cli")),
    ("dfmscd_service/api", ("dfmscd_service.worker", "dfmscd_service.cli")),
    ("dfmscd_service/worker", ("dfmscd_service.api", "dfmscd_service.cli")),
])
def test_dependencies_run_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(ROOT / package, forbidden) == []


def test_the_rule_check_sees_a_violation(tmp_path: Path) -> None:
    # The check above must be able to fail: a lazy import inside a function is found too.
    (tmp_path / "probe.py").write_text("import os\n\ndef f():\n    from dfmscd_service.api.main import app\n")
    assert _violations(tmp_path, ("dfmscd_service.api",)) == ["probe.py:4 imports dfmscd_service.api.main"]


def test_importing_the_library_loads_no_web_stack() -> None:
    code = ("import sys, dfmscd, dfmscd.engine, dfmscd.io, dfmscd.cli, dfmscd.cli.distill; "
            "from dfmscd.cli import build_parser; build_parser(); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({WEB_STACK!r})))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_service_commands_come_through_the_entry_point_group() -> None:
    from importlib.metadata import entry_points

    from dfmscd.cli.main import COMMANDS_GROUP, build_parser

    assert [ep.value for ep in entry_points(group=COMMANDS_GROUP)] == ["dfmscd_service.cli:register"]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"distill", "architectures", "evaluate", "serve", "keys"} <= set(sub.choices)
