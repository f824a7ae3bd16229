"""`talaria bench`: runnable benchmarks that write a Markdown table, a JSON file and a PNG plot.

    talaria bench [speed] [--quick]      HF transformers vs Talaria over HTTP; where the time goes
                                         -> results/bench/ (--quick: tiny model, results/bench/quick/)
    talaria bench precision [--quick]    ReMO recovery error per mask scale x GEMM dtype, and greedy
                                         identity -> results/precision/ (--quick: results/precision/quick/)

Module-level imports stay light: `talaria --help` imports this file.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", nargs="?", default="speed", choices=["speed", "precision"],
                   help="speed (default) or precision")
    p.add_argument("--quick", action="store_true", help="tiny model only, short runs (< 5 minutes)")
    p.add_argument("--models", help="comma-separated sizes among tiny,0.5b (default: tiny; full run: tiny,0.5b)")
    p.add_argument("--out", help="output directory (default results/bench or results/precision; --quick: .../quick)")
    p.add_argument("--prompt-len", type=int, help="speed: prompt length in tokens (default 16 quick, 32 full)")
    p.add_argument("--new-tokens", type=int, help="speed: greedy tokens per stream (default 32)")
    p.add_argument("--repeats", type=int, help="speed: timed repeats per point, median reported (default 3)")
    p.add_argument("--no-variants", action="store_true",
                   help="speed: skip the variant clouds (float32 wire, 2 cloud threads)")
    p.add_argument("--no-cloud2", action="store_true",
                   help="speed: skip the 2-thread ReMO cloud (the whole-machine comparison)")
    p.add_argument("--no-pad", action="store_true",
                   help="speed: skip the pad scheme (compute + dealer pad clouds); precision: skip its study")
    p.add_argument("--modes", help="precision: comma-separated GEMM modes (default: all; pad is separate, see --no-pad)")
    p.add_argument("--merge", action="store_true",
                   help="precision: keep the modes of the existing report that this run does not measure")
    p.add_argument("--scales", help="precision: comma-separated mask scales (default 0.1,1,10,100)")
    p.add_argument("--num-prompts", type=int, help="precision: prompts for the greedy check (default 8)")
    p.add_argument("--tokens", type=int, help="precision: greedy tokens per prompt (default 32)")


def run(args: argparse.Namespace) -> int:
    if args.task == "precision":
        from benchmarks import precision

        return precision.run(args)
    from benchmarks import speed

    return speed.run(args)
