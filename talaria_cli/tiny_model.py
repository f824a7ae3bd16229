"""`talaria tiny-model`: write a small random-weight Hugging Face checkpoint, fully offline.

The engine's correctness tests, the demo (`talaria up`) and the benchmarks need a real
checkpoint that `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
load, without any access to a model hub. This module builds one from scratch:

* a byte-level BPE tokenizer trained on a small embedded English corpus (so any UTF-8 text
  round-trips), with ChatML special tokens and a ChatML chat template;
* a config for one of four architectures, each chosen to exercise a feature the engine must
  handle (Llama-3 rope scaling, Qwen2 QKV bias + tied embeddings, Qwen3 per-head q/k norms
  with a decoupled head_dim, Mistral), all with grouped-query attention;
* random weights drawn tensor by tensor from seeded generators, so a given
  (arch, seed, size) always yields a byte-identical `model.safetensors`.

Sizes: "tiny" (hidden 64, 2 layers; loads and generates in milliseconds) and "0.5b"
(Qwen2-0.5B dimensions, for benchmarks).

Everything is written into a temporary sibling directory and renamed into place at the end,
so an interrupted run never leaves a half checkpoint behind. The tokenizer is built in
`tiny_tokenizer`, the configs and weight draws in `tiny_weights`; this module assembles them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from talaria_cli.tiny_chat_templates import QWEN_TOOLS_CHAT_TEMPLATE
from talaria_cli.tiny_tokenizer import SPECIAL_TOKENS, build_tokenizer
from talaria_cli.tiny_weights import ARCHS, SIZES, build_config, init_tensor, numel, parameter_shapes

# Written next to the checkpoint: identifies a directory as ours (so it may be replaced
# without --force) and records what it was generated from.
PROVENANCE_FILE = "talaria_tiny_model.json"
FORMAT_VERSION = 2  # 2: the qwen2 model's chat template renders tools


# ----------------------------------------------------------------------------- weights


def _write_weights(path: Path, config, seed: int, used_vocab: int, log) -> None:
    from safetensors.torch import save_file

    shapes = parameter_shapes(config)
    total = sum(numel(s) for s in shapes.values())
    log(f"drawing {len(shapes)} tensors, {total / 1e6:.1f}M parameters (float32)")
    tensors = {}
    done = 0
    next_report = 0.25
    for name in sorted(shapes):
        tensors[name] = init_tensor(
            name, shapes[name], seed, config.hidden_size, config.tie_word_embeddings, used_vocab
        )
        done += numel(shapes[name])
        if total > 50_000_000 and done / total >= next_report:
            log(f"  {done / total:.0%} drawn")
            next_report += 0.25
    log(f"writing {path.name}")
    save_file(tensors, str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- directory handling


class TinyModelError(Exception):
    """The target directory cannot be used (e.g. it holds something that is not ours)."""


def _read_provenance(directory: Path) -> dict | None:
    try:
        return json.loads((directory / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _check_target(out: Path, force: bool) -> None:
    if not out.exists() or force:
        return
    if not out.is_dir():
        raise TinyModelError(f"{out} exists and is not a directory (use --force to replace it)")
    if any(out.iterdir()) and _read_provenance(out) is None:
        raise TinyModelError(
            f"{out} is not empty and is not a Talaria tiny model; refusing to overwrite it "
            "(use --force to replace it)"
        )


def _install(tmp: Path, out: Path) -> None:
    """Move the finished checkpoint into place, replacing whatever was at `out`."""
    if not out.exists():
        os.rename(tmp, out)
        return
    # Move the old one aside first so `out` is never a mix of old and new files.
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old = trash / "old"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def _apply_umask(directory: Path) -> None:
    """mkdtemp creates the directory 0700 (and some writers use 0600); give the result the
    modes a plain mkdir/open would have, so e.g. a service running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~umask)


def _stderr(msg: str) -> None:
    print(f"[tiny-model] {msg}", file=sys.stderr, flush=True)


def write_tiny_model(
    out_dir: str | Path,
    arch: str = "qwen2",
    seed: int = 0,
    size: str = "tiny",
    *,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Generate a checkpoint in `out_dir` and return its path.

    An existing tiny model in `out_dir` is replaced; any other non-empty directory raises
    `TinyModelError` unless `force` is set.
    """
    from transformers import GenerationConfig

    log = _stderr if verbose else (lambda _msg: None)
    out = Path(out_dir).expanduser().absolute()
    _check_target(out, force)
    if arch not in ARCHS or size not in SIZES:
        build_config(arch, size, 0, {})  # raises the explanatory ValueError

    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling temp dir: same filesystem, so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        log(f"building tokenizer ({arch}, size {size}, seed {seed})")
        max_positions = 2048 if size == "tiny" else 32768
        tokenizer = build_tokenizer(model_max_length=max_positions)
        if arch == "qwen2":  # Qwen2.5's template: ChatML that also renders tools and tool turns
            tokenizer.chat_template = QWEN_TOOLS_CHAT_TEMPLATE
        special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        config = build_config(arch, size, len(tokenizer), special_ids)

        tokenizer.save_pretrained(tmp)
        _write_weights(tmp / "model.safetensors", config, seed, len(tokenizer), log)
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            do_sample=False,  # greedy by default: reproducible outputs for tests and demos
        ).save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(
            json.dumps({"format_version": FORMAT_VERSION, "arch": arch, "seed": seed, "size": size}, indent=2)
            + "\n"
        )
        # config.json last: its presence is what marks a finished checkpoint.
        config.save_pretrained(tmp)
        _apply_umask(tmp)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out} in {time.monotonic() - started:.1f}s")
    return out


def tiny_model_dir(arch: str = "qwen2", size: str = "tiny", root: str | Path | None = None) -> Path:
    """Where the generated model of (arch, size) lives: `<root>/tiny-<arch>` (`tiny-<arch>-<size>`
    for other sizes). `root` defaults to the shared cache `$TALARIA_HOME/models`, with TALARIA_HOME
    defaulting to `$XDG_CACHE_HOME/talaria`, i.e. `~/.cache/talaria`."""
    if root is None:
        home = os.environ.get("TALARIA_HOME")
        cache = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "talaria"
        root = cache.expanduser() / "models"
    return Path(root) / (f"tiny-{arch}" if size == "tiny" else f"tiny-{arch}-{size}")


def ensure_tiny_model(out_dir: str | Path, arch: str = "qwen2", seed: int = 0, size: str = "tiny") -> Path:
    """Return `out_dir`, generating the checkpoint first unless a finished one is there.

    A finished checkpoint is one with a config.json (only ever present after the final
    rename). A tiny model generated from different parameters is regenerated; a foreign
    checkpoint with a config.json is used as it is.
    """
    out = Path(out_dir).expanduser().absolute()
    if (out / "config.json").exists():
        prov = _read_provenance(out)
        wanted = {"format_version": FORMAT_VERSION, "arch": arch, "seed": seed, "size": size}
        if prov is None or prov == wanted:
            return out
    try:
        return write_tiny_model(out, arch=arch, seed=seed, size=size)
    except OSError:
        # Another process may have installed the same checkpoint concurrently.
        if (out / "config.json").exists() and _read_provenance(out) is not None:
            return out
        raise


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="output directory for the checkpoint")
    parser.add_argument("--arch", choices=ARCHS, default="qwen2", help="architecture (default: qwen2)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.add_argument(
        "--size", choices=SIZES, default="tiny", help="tiny (hidden 64, 2 layers) or 0.5b (Qwen2-0.5B dims)"
    )
    parser.add_argument("--force", action="store_true", help="replace DIR even if it holds something else")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_tiny_model(args.dir, arch=args.arch, seed=args.seed, size=args.size, force=args.force, verbose=True)
    except TinyModelError as exc:
        print(f"talaria tiny-model: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
