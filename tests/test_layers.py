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


def _imported(node: ast.ImportFrom) -> list[str]:
    """``from P import n`` imports the module ``P.n`` when that is a module of this repository
    (``from dfmscd_service.api.services import torch_pool``), else ``P`` (a name defined in ``P``)."""
    mods = []
    for a in node.names:
        sub = ROOT.joinpath(*f"{node.module}.{a.name}".split("."))
        mods.append(f"{node.module}.{a.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else node.module)
    return list(dict.fromkeys(mods))


def _imports(where: Path) -> list[tuple[str, int, str]]:
    """(file, line, module) for every absolute import in ``where`` (a folder, every file under it;
    or one file), inside functions too. Files are named relative to the folder (``http/errors.py``)."""
    paths = sorted(where.rglob("*.py")) if where.is_dir() else [where]
    found = []
    for path in paths:
        name = path.relative_to(where).as_posix() if where.is_dir() else path.name
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(name, node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found += [(name, node.lineno, mod) for mod in _imported(node)]
    return found


def _violations(where: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f}:{line} imports {mod}" for f, line, mod in _imports(where)
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


API = ROOT / "dfmscd_service" / "api"
SHARED = ("auth", "ratelimit", "deps", "schemas", "views", "dashboard", "docs_ui")  # at the top of api/


def _api(*names: str) -> tuple[str, ...]:
    return tuple(f"dfmscd_service.api.{n}" for n in names)


# The rooms of dfmscd_service/api (docs/architecture.md): each file's path under api/, what it must not import.
API_ROOMS = [
    ("http/", _api("routes", "services", "reads", "main", *SHARED)),
    *[(f"{m}.py", _api("routes", "services", "reads", "main")) for m in SHARED],
    ("services/", _api("routes", "reads", "main")),
    ("reads/", _api("routes", "services", "main")),
    ("routes/", _api("routes", "main")),  # a route module is imported by main only
]


def _room_violations(api: Path, room: str, forbidden: tuple[str, ...]) -> list[str]:
    return [v for v in _violations(api, forbidden) if v.startswith(room)]


@pytest.mark.parametrize(("room", "forbidden"), API_ROOMS, ids=[r for r, _ in API_ROOMS])
def test_the_api_rooms_import_one_way(room: str, forbidden: tuple[str, ...]) -> None:
    assert (API / room).exists(), room
    assert _room_violations(API, room, forbidden) == []


def test_every_api_module_has_a_room() -> None:
    rooms = {r for r, _ in API_ROOMS} | {"main.py", "__init__.py"}
    homeless = [p.relative_to(API).as_posix() for p in API.rglob("*.py")
                if not any(p.relative_to(API).as_posix().startswith(r) for r in rooms)]
    assert homeless == []


def test_the_room_check_sees_a_violation(tmp_path: Path) -> None:
    # A service that reaches into the read path, lazily and through its package, is found and named.
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "probe.py").write_text(
        "import os\n\ndef f():\n    from dfmscd_service.api.reads import job_reads\n")
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "probe.py").write_text("from dfmscd_service.api.reads import job_reads\n")
    forbidden = dict(API_ROOMS)["services/"]
    assert _room_violations(tmp_path, "services/", forbidden) == [
        "services/probe.py:4 imports dfmscd_service.api.reads.job_reads"]
    assert _room_violations(tmp_path, "routes/", dict(API_ROOMS)["routes/"]) == []


STORAGE = ROOT / "dfmscd_service" / "core"
BACKENDS = ("dfmscd_service.core.storage_local", "dfmscd_service.core.storage_s3")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_storage_backend_imports_neither_the_other_nor_the_factory(backend: str) -> None:
    others = tuple(b for b in BACKENDS if b != backend) + ("dfmscd_service.core.storage",)
    assert _violations(STORAGE / f"{backend.rsplit('.', 1)[1]}.py", others) == []


def test_the_storage_factory_is_the_one_module_that_knows_both_backends() -> None:
    assert {mod for _, _, mod in _imports(STORAGE / "storage.py")} >= set(BACKENDS)
    assert _violations(STORAGE / "storage_base.py", BACKENDS + ("dfmscd_service.core.storage",)) == []
    knows_both = sorted({f for f, _, mod in _imports(ROOT / "dfmscd_service") if mod == BACKENDS[1]}
                        & {f for f, _, mod in _imports(ROOT / "dfmscd_service") if mod == BACKENDS[0]})
    assert knows_both == ["core/storage.py"]


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
