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
so an interrupted run never leaves a half checkpoint behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ("llama", "qwen2", "qwen3", "mistral")
SIZES = ("tiny", "0.5b")

# Written next to the checkpoint: identifies a directory as ours (so it may be replaced
# without --force) and records what it was generated from.
PROVENANCE_FILE = "talaria_tiny_model.json"
FORMAT_VERSION = 1

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
TOKENIZER_VOCAB = 1024  # including the 256 byte symbols and the 3 special tokens

# ChatML, as used by Qwen. Content may be a string or a list of OpenAI-style parts, of
# which only the text parts are rendered. No default system prompt is injected.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Our own text, varied in topic and punctuation, with a little non-ASCII so that common
# accented letters get merges of their own. Only used to train the tokenizer.
CORPUS = """\
The morning train left the station a few minutes late, and nobody seemed to mind.
A small cat slept on the windowsill while the rain tapped softly against the glass.
She opened the old notebook and found a list of names written in faded blue ink.
Could you tell me how far it is to the nearest library? I think I am lost.
The recipe calls for two cups of flour, one egg, a pinch of salt and some warm milk.
In 1969, astronauts walked on the Moon for the first time; millions watched on television.
He said, "Let's meet at noon by the fountain," but he arrived at a quarter past one.
Mountains covered in snow rose above the valley, and the river ran cold and clear.
Our team reviewed the report on Tuesday and agreed to publish it next week.
The museum's new exhibition shows paintings, maps, and letters from the 18th century.
Please remember to water the plants, feed the fish, and lock the back door.
Why do leaves change color in autumn? Because the green chlorophyll breaks down.
The bakery on Elm Street sells bread, croissants, and a very good apple pie.
After the storm, the streets were quiet and the air smelled of wet earth.
Learning a new language takes patience, practice, and a sense of humour.
The children built a sandcastle with towers, walls, and a moat full of seawater.
Ten thousand people ran the marathon, and the winner finished in 2 hours and 8 minutes.
The doctor asked her to rest for a week and to drink plenty of water.
A good question is often more useful than a quick answer.
The orchestra played a quiet piece by the river while the sun went down.
If the printer jams again, turn it off, wait ten seconds, and turn it back on.
Farmers in the north planted wheat, barley, and potatoes earlier than usual this year.
The lighthouse keeper wrote in his journal every night for forty years.
We walked along the beach, collecting shells and smooth grey stones.
My grandmother's garden had roses, tomatoes, beans, and a tall sunflower by the gate.
The meeting has been moved to Thursday at 3:30 pm in room 204.
Scientists measured the temperature of the ocean at different depths.
The price of the ticket was $12.50, which included a map and a cup of coffee.
She plays the violin, he plays the piano, and their son plays the drums loudly.
The bridge was closed for repairs, so we took the long road through the forest.
Stars are easier to see far from the city lights, on a clear and moonless night.
Every Saturday, the market fills the square with fruit, cheese, flowers, and music.
The pilot announced that we would land in about twenty minutes.
Reading before bed helps some people relax and fall asleep faster.
The kettle whistled, and he poured hot water over the tea leaves.
Our neighbours are friendly; they often share vegetables from their garden.
The students asked many questions about the history of the ancient city.
It is important to back up your files, because computers sometimes fail.
The wind was strong enough to blow the hats off people's heads.
A fox crossed the road at dawn and disappeared into the tall grass.
The hotel room was small but clean, with a view of the harbour and the boats.
I would like a table for two, near the window, if possible.
The committee will announce its decision at the end of the month.
Fresh snow fell overnight, and the whole town looked white and silent in the morning.
He fixed the bicycle chain, pumped up the tyres, and rode off to work.
The story ends with the two friends meeting again after many years apart.
Water boils at 100 degrees Celsius at sea level, but at a lower temperature on a mountain.
The bus was crowded, so she stood near the door and read the news on her phone.
They painted the kitchen yellow and hung a clock above the table.
When the power went out, we lit candles and played cards until midnight.
Bees carry pollen from flower to flower, which helps plants produce seeds and fruit.
The teacher wrote a long equation on the board and asked who could solve it.
The café near the station serves a naïve little crème brûlée that everyone loves.
In Zürich and München the signs say Straße, Grüße, and Größe; in Paris, déjà vu and façade.
Tokyo is written 東京, and Beijing is written 北京; both are large capital cities.
Hello, world! Is this the right way to the post office, or should we turn left?
The library opens at nine o'clock and closes at six, except on Sundays.
Numbers like 3.14159, 2.71828, and 1.41421 appear again and again in mathematics.
Good software is tested carefully, documented clearly, and released with care.
The old clock in the hall struck twelve, and everyone went quietly to bed.
"""


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(model_max_length: int = 2048):
    """Train the byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

    BPE training in `tokenizers` is deterministic for a fixed corpus, so every run produces
    the same vocabulary (and hence the same model vocab size).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols up front: this is what makes every UTF-8 string encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,  # generation stops at the end of the assistant turn
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,  # like Qwen: no BOS is prepended
        model_max_length=model_max_length,
        # Otherwise decode() may "clean up" spaces before punctuation and break round trips.
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ----------------------------------------------------------------------------- config


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def build_config(arch: str, size: str, tokenizer_vocab: int, special_ids: dict[str, int]):
    """Return the transformers config for (arch, size); see the module docstring for why."""
    import torch
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")

    if size == "tiny":
        dims = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=160,
            max_position_embeddings=2048,
            vocab_size=_round_up(tokenizer_vocab, 8),
        )
        llama3_original_max = 64  # short enough that all three llama3 frequency bands occur
        qwen3_head_dim = 32  # != 64 / 4
    else:  # Qwen2-0.5B dimensions
        dims = dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            max_position_embeddings=32768,
            vocab_size=151936,  # larger than the tokenizer, as in the real Qwen models
        )
        llama3_original_max = 8192  # as in Llama 3.1
        qwen3_head_dim = 128  # != 896 / 14, as Qwen3 itself decouples head_dim

    common = dict(
        **dims,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        # Documents the scale of the weights (std of the hidden-size projections); the weights
        # themselves are drawn by `_init_tensor`, not by transformers.
        initializer_range=round(dims["hidden_size"] ** -0.5, 4),
        bos_token_id=special_ids[ENDOFTEXT],
        eos_token_id=special_ids[IM_END],
        pad_token_id=special_ids[ENDOFTEXT],
        use_cache=True,
    )

    if arch == "llama":
        config = LlamaConfig(
            **common,
            tie_word_embeddings=False,
            attention_bias=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": llama3_original_max,
            },
        )
        config.architectures = ["LlamaForCausalLM"]
    elif arch == "qwen2":
        # Qwen2 always has biases on q/k/v (hard-wired in the modeling code).
        config = Qwen2Config(
            **common,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        config.architectures = ["Qwen2ForCausalLM"]
    elif arch == "qwen3":
        config = Qwen3Config(
            **common,
            head_dim=qwen3_head_dim,
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        config.architectures = ["Qwen3ForCausalLM"]
    else:  # mistral
        config = MistralConfig(
            **common,
            tie_word_embeddings=False,
            sliding_window=None,  # full attention: the engine does not model a window
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        config.architectures = ["MistralForCausalLM"]
    config.dtype = torch.float32
    return config


# ----------------------------------------------------------------------------- weights


def _generator(seed: int, name: str):
    """A generator seeded from (seed, tensor name): each tensor is independent of the
    order in which tensors are produced, and of every other tensor's shape."""
    import torch

    digest = hashlib.sha256(f"talaria-tiny/{seed}/{name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _init_tensor(name: str, shape, seed: int, hidden_size: int, tied: bool, used_vocab: int):
    """Draw one tensor.

    The scales are chosen so that activations stay O(1) through the layers and the final
    logits have a standard deviation of about 2: with the usual 0.02 init the logits of a
    random model are nearly flat and greedy decoding is decided by near-ties, which makes
    token-for-token comparisons against a reference fragile. Norm gains and biases are
    deliberately not at their trivial values (1 and 0) so that code folding norm gains into
    the next projection, or handling biases, is actually exercised. Vocabulary rows past
    `used_vocab` (the tokenizer's size) are near zero, like untrained rows in real
    checkpoints, so greedy decoding only ever picks tokens the tokenizer can decode.
    """
    import torch

    g = _generator(seed, name)
    randn = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    # lm_head rows of this scale turn a unit-RMS (normalized) hidden state into logits of std ~2.
    head_scale = 2.0 / hidden_size**0.5
    # Scales (per element) of what is added to the residual stream. Untied: all at unit scale.
    # Tied: the embedding is also the lm_head, so it is small (head_scale); were it a large
    # part of the final hidden state, every token would predict itself, and were everything
    # else uniformly large, the current token would be drowned and greedy decoding would fall
    # into a fixed point. Large MLP outputs (a random function of the token, from layer 0 on)
    # with unit-scale attention outputs keep the output varied and context dependent.
    if tied:
        embed_scale, attn_out_scale, mlp_out_scale = head_scale, 1.0, 4.0
    else:
        embed_scale, attn_out_scale, mlp_out_scale = 1.0, 1.0, 1.0
    if name.endswith("norm.weight"):  # input/post-attention/final norms, Qwen3 q_norm/k_norm
        return 1.0 + 0.1 * randn
    if name.endswith(".bias"):
        return 0.2 * randn
    if name.endswith(("lm_head.weight", "embed_tokens.weight")):
        scale = head_scale if name.endswith("lm_head.weight") else embed_scale
        randn[used_vocab:] *= 0.01
        return randn * scale
    if randn.dim() == 2:  # nn.Linear weight [out, in], scaled by 1/sqrt(in) for a given output scale
        if name.endswith("o_proj.weight"):
            out_scale = attn_out_scale
        elif name.endswith("down_proj.weight"):
            out_scale = mlp_out_scale
        else:  # q/k/v/gate/up: read a normalized input, produce unit-scale activations
            out_scale = 1.0
        return randn * (out_scale / shape[1] ** 0.5)
    raise ValueError(f"no init rule for parameter {name} {tuple(shape)}")


def _parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint tensors, taken from the real model class built on
    the meta device (no memory, no time), so they always match what from_pretrained expects."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        # Like the real tied checkpoints: lm_head is not stored, it is tied on load.
        shapes.pop("lm_head.weight", None)
    return shapes


def _write_weights(path: Path, config, seed: int, used_vocab: int, log) -> None:
    from safetensors.torch import save_file

    shapes = _parameter_shapes(config)
    total = sum(_numel(s) for s in shapes.values())
    log(f"drawing {len(shapes)} tensors, {total / 1e6:.1f}M parameters (float32)")
    tensors = {}
    done = 0
    next_report = 0.25
    for name in sorted(shapes):
        tensors[name] = _init_tensor(
            name, shapes[name], seed, config.hidden_size, config.tie_word_embeddings, used_vocab
        )
        done += _numel(shapes[name])
        if total > 50_000_000 and done / total >= next_report:
            log(f"  {done / total:.0%} drawn")
            next_report += 0.25
    log(f"writing {path.name}")
    save_file(tensors, str(path), metadata={"format": "pt"})


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
