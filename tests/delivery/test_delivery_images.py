"""The Dockerfiles, checked without a Docker engine: what they copy exists, what they run exists,
they run unprivileged with a health check, and no image carries model weights."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from talaria_cli.main import SUBCOMMANDS

from .test_delivery_boundary import installed_packages, imported_modules, python_files

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"client": ("Dockerfile.client", "proxy", "8000"), "cloud": ("Dockerfile.cloud", "cloud", "8100")}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.ckpt")


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def copy_sources(args: str) -> list[str]:
    """Sources of a COPY/ADD (shell or JSON form), without its --flags and destination."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"CMD should use the exec form (signals reach the server): {args}"
    return json.loads(args)


@pytest.fixture(params=list(IMAGES), scope="module")
def image(request):
    name, subcommand, port = IMAGES[request.param]
    return request.param, parse_dockerfile(REPO / name), subcommand, port


def test_copy_sources_exist_and_hold_no_weights(image):
    kind, instructions, _, _ = image
    copies = [args for op, args in instructions if op in ("COPY", "ADD")]
    assert copies
    for args in copies:
        assert "--from" not in args, "single-stage images copy from the build context only"
        for src in copy_sources(args):
            path = REPO / src
            assert path.exists(), f"{kind}: COPY source {src!r} is not in the repository"
            assert src not in (".", "./"), f"{kind}: copying the whole context may pick up weights"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            weights = [p for p in files if any(fnmatch.fnmatch(p.name, pat) for pat in WEIGHT_PATTERNS)]
            assert not weights, f"{kind}: COPY {src} would put weights into the image: {weights}"


def first_party_closure(package: str) -> set[str]:
    """`package` and every Talaria package it imports, directly or through another (any import
    anywhere in a file counts, also inside functions)."""
    ours, seen, todo = set(installed_packages()), set(), [package]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += [n.split(".")[0] for f in python_files(current) for n in imported_modules(f)
                     if n.split(".")[0] in ours]
    return seen


def test_image_copies_every_package_its_side_imports(image):
    """The served side's package, what it imports, and the `talaria` command must all be in the image."""
    kind, instructions, subcommand, _ = image
    side = SUBCOMMANDS[subcommand][0].split(".")[0]
    copied = {s.rstrip("/").split("/")[-1] for op, args in instructions if op == "COPY" for s in copy_sources(args)}
    needed = first_party_closure(side) | {"talaria_cli"}
    assert needed <= copied, f"{kind}: the image lacks {sorted(needed - copied)}"


def test_client_image_has_no_cloud_code():
    """The CVM image needs neither the weights nor the code that handles them."""
    instructions = parse_dockerfile(REPO / IMAGES["client"][0])
    sources = [s for op, args in instructions if op in ("COPY", "ADD") for s in copy_sources(args)]
    assert not any(s.rstrip("/").split("/")[0] == "cloud_backend" for s in sources), sources


def test_cmd_runs_an_existing_subcommand_with_a_copied_config(image):
    kind, instructions, subcommand, _ = image
    cmds = [args for op, args in instructions if op == "CMD"]
    assert len(cmds) == 1, f"{kind}: exactly one CMD"
    argv = exec_form(cmds[0])
    assert argv[:2] == ["talaria", subcommand]
    module = SUBCOMMANDS[subcommand][0]
    assert importlib.util.find_spec(module) is not None, f"{module} (talaria {subcommand}) does not exist"
    config = argv[argv.index("--config") + 1]
    destinations = [shlex.split(args)[-1] for op, args in instructions if op == "COPY"]
    assert config in destinations, f"{kind}: {config} is not copied into the image"


def test_runs_unprivileged(image):
    kind, instructions, _, _ = image
    users = [args.split(":")[0] for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{kind}: the final USER must not be root"
    last_user = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    cmd = next(i for i, (op, _) in enumerate(instructions) if op == "CMD")
    assert last_user < cmd


def test_healthcheck_and_port(image):
    kind, instructions, _, port = image
    checks = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert len(checks) == 1 and "/health" in checks[0] and port in checks[0], f"{kind}: {checks}"
    exposed = [p for op, args in instructions if op == "EXPOSE" for p in args.split()]
    assert port in exposed
    if kind == "cloud":  # the frame socket needs a fixed, published port in a container
        env = " ".join(args for op, args in instructions if op == "ENV")
        assert "TALARIA_CLOUD_FRAME_PORT=8101" in env and "8101" in exposed


def test_installs_pinned_versions_and_cpu_torch_for_the_client(image):
    kind, instructions, _, _ = image
    installs = [args for op, args in instructions if op == "RUN" and "pip install" in args]
    assert installs and all("-c constraints.txt" in args for args in installs)
    base = next(args for op, args in instructions if op == "FROM")
    assert "python:3.11" in base or "cuda" in base
    if kind == "client":
        args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
        assert args.get("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
        assert any('--index-url "$TORCH_INDEX"' in a for a in installs)


def test_dockerignore_keeps_weights_and_secrets_out():
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for needed in (".git", ".venv", "**/*.safetensors", "**/*.bin", "**/*.pt", "**/*.gguf"):
        assert needed in patterns, f".dockerignore lacks {needed}"
    # Nothing a Dockerfile copies may be ignored away.
    for name, _, _ in IMAGES.values():
        for op, args in parse_dockerfile(REPO / name):
            if op == "COPY":
                for src in copy_sources(args):
                    assert src not in patterns, f"{name} copies {src}, which .dockerignore drops"
