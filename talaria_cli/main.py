"""Entry point of the `talaria` command.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported lazily so that `talaria --help` stays fast and a proxy-only install never
imports the cloud side.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": ("talaria_cli.tiny_model", "write a small random-weight checkpoint with a local tokenizer"),
    "cloud": ("cloud_backend.cli", "run the cloud masked-linear service (owns the weights)"),
    "proxy": ("talaria_proxy.cli", "run the OpenAI-compatible proxy (inside the CVM)"),
    "up": ("talaria_cli.up", "run cloud and proxy together on localhost (default: the tiny model)"),
    "eval": ("evaluation.cli", "privacy audit: attacks on what the cloud recorded"),
    "bench": ("benchmarks.cli", "benchmark Talaria against plain HF transformers"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talaria",
        description="Talaria: confidential LLM inference with ReMO-masked outsourcing of linear layers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
            module.add_arguments(p)  # may import a side's settings (up: both sides')
        except ImportError as exc:  # a part not installed in this image (e.g. proxy-only)
            p.set_defaults(_unavailable=f"{name} is not available in this installation: {exc}")
            continue
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(args._unavailable, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
