"""The trust boundary is the package layout: plaintext code (talaria_proxy) and weight code
(cloud_backend) never import each other, and the wire protocol (talaria_wire) imports neither.
Checked on the source with `ast`, including `importlib.import_module("...")` with a literal."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "cloud_backend": {"talaria_proxy"},
    "talaria_proxy": {"cloud_backend"},
    "talaria_wire": {"talaria_proxy", "cloud_backend", "talaria_cli"},
}
MAX_LINES = 400


def python_files(package: str) -> list[Path]:
    files = sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)
    assert files, f"no sources under {package}/"
    return files


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("package", FORBIDDEN)
def test_no_import_across_the_boundary(package):
    offending = []
    for path in python_files(package):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                offending.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offending, "\n".join(offending)


def test_proxy_works_without_the_cloud_package():
    """The client image ships without cloud_backend: every proxy module and `talaria proxy --help`
    must work when it cannot be imported at all."""
    script = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cloud_backend': raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import talaria_proxy\n"
        "for m in pkgutil.walk_packages(talaria_proxy.__path__, 'talaria_proxy.'):\n"
        "    importlib.import_module(m.name)\n"
        "from talaria_cli.main import main\n"
        "main(['proxy', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "usage: talaria proxy" in result.stdout


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_files_stay_small(package):
    long = []
    for path in sorted((REPO / package).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            n = len(path.read_text(errors="replace").splitlines())
            if n > MAX_LINES:
                long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, f"over {MAX_LINES} lines:\n" + "\n".join(long)
