"""Every `talaria` subcommand answers --help, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from talaria_cli.main import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[2]


def talaria(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "talaria_cli.main", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_top_level_help_lists_every_subcommand():
    result = talaria("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: talaria")
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name):
    result = talaria(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: talaria {name}"), result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["cloud", "proxy", "up", "tiny-model"])
def test_serving_subcommands_are_installed(name):
    """The commands the README and the images use must not be placeholders."""
    from talaria_cli.main import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[name]  # argparse keeps no public accessor
    assert sub.get_default("_unavailable") is None, sub.get_default("_unavailable")


def test_no_subcommand_prints_usage_and_fails():
    result = talaria()
    assert result.returncode == 2 and "usage: talaria" in result.stdout
