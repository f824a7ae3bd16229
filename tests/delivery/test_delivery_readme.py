"""The README promises two commands and names real flags only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from talaria_cli.main import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.MULTILINE | re.DOTALL)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_quick_start_is_exactly_two_commands():
    blocks = re.findall(r"```\w*\n(.*?)```", section("Quick start"), flags=re.DOTALL)
    assert len(blocks) == 1
    assert [line.strip() for line in blocks[0].splitlines() if line.strip()] == ["make up", "make test"]


def mentioned_flags() -> dict[str, set[str]]:
    """{subcommand: flags} for every `talaria <sub> ...` (continued lines included) in the README."""
    text = README.replace("\\\n", " ")
    names = "|".join(re.escape(n) for n in sorted(SUBCOMMANDS, key=len, reverse=True))
    found: dict[str, set[str]] = {}
    for sub, rest in re.findall(rf"\btalaria ({names})\b([^\n`]*)", text):
        found.setdefault(sub, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))
    for args in re.findall(r'make up ARGS="([^"]*)"', text):
        found.setdefault("up", set()).update(re.findall(r"--[a-z][a-z0-9-]*", args))
    return found


@pytest.mark.parametrize("sub", sorted(mentioned_flags()))
def test_flags_in_readme_exist(sub):
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[sub]  # argparse has no public accessor
    known = set(subparser._option_string_actions)
    missing = sorted(mentioned_flags()[sub] - known)
    assert not missing, f"README mentions `talaria {sub}` flags that do not exist: {missing}"


def test_sections_the_lead_fills_in_name_their_commands():
    assert "talaria eval privacy" in section("Privacy audit") and "results/" in section("Privacy audit")
    assert "talaria bench" in section("Benchmark") and "results/" in section("Benchmark")
