"""The trust boundary is the package layout: plaintext code (talaria_proxy) and weight code
(cloud_backend) never import each other; below them sit only the wire protocol (talaria_wire) and
the start-up helpers (talaria_base), which import no other Talaria package; the `talaria` command
(talaria_cli), the audit and the benchmarks sit above. Checked on the source with `ast`, including
`importlib.import_module("...")` with a literal, plus a 400-line ceiling on every package."""

from __future__ import annotations

import ast
import os
import tomllib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ABOVE_BOTH_SIDES = {"talaria_cli", "evaluation", "benchmarks"}
FORBIDDEN = {
    "cloud_backend": {"talaria_proxy"} | ABOVE_BOTH_SIDES,
    "talaria_proxy": {"cloud_backend"} | ABOVE_BOTH_SIDES,
    "talaria_wire": {"talaria_proxy", "cloud_backend", "talaria_base"} | ABOVE_BOTH_SIDES,
    "talaria_base": {"talaria_proxy", "cloud_backend", "talaria_wire"} | ABOVE_BOTH_SIDES,
}
MAX_LINES = 400


def installed_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (`include` patterns without their `*`)."""
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return sorted(pattern.rstrip("*") for pattern in found["include"])


def test_every_package_is_installed_and_checked():
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert on_disk == set(installed_packages()), "pyproject.toml's packages list differs from the source tree"
    assert set(FORBIDDEN) | ABOVE_BOTH_SIDES == on_disk, "every package needs its place in FORBIDDEN"


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


@pytest.mark.parametrize("side, other", [("talaria_proxy", "cloud_backend"), ("cloud_backend", "talaria_proxy")])
def test_each_side_imports_without_the_other_side_and_the_command(side, other):
    """The client image ships without cloud_backend, the cloud image without talaria_proxy: every
    module of one side must import while the other side and talaria_cli cannot be imported at all
    (imports inside functions are covered by the `ast` check above), and `talaria <side> --help`
    must work once the command itself is back."""
    command = "proxy" if side == "talaria_proxy" else "cloud"
    script = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    blocked = {%r, 'talaria_cli'}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.blocked: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import %s as side\n"
        "for m in pkgutil.walk_packages(side.__path__, side.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "Block.blocked = {%r}\n"
        "from talaria_cli.main import main\n"
        "main([%r, '--help'])\n"
    ) % (other, side, other, command)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert f"usage: talaria {command}" in result.stdout


@pytest.mark.parametrize("package", installed_packages())
def test_files_stay_small(package):
    long = []
    for path in sorted((REPO / package).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            n = len(path.read_text(errors="replace").splitlines())
            if n > MAX_LINES:
                long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, f"over {MAX_LINES} lines:\n" + "\n".join(long)
