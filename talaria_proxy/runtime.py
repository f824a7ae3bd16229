"""Assemble the proxy's engine from a linear backend: manifest -> masks -> skeleton -> engine."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

from talaria_proxy.engine import AsyncEngine
from talaria_proxy.linear_backend import LinearBackend
from talaria_proxy.masked_linear import MaskedLinearClient
from talaria_proxy.masking import build_scheme
from talaria_proxy.model import SplitModel
from talaria_proxy.scheduler import SchedulerConfig
from talaria_wire import PROTOCOL_VERSION, Manifest

log = logging.getLogger(__name__)


class ProtocolMismatch(RuntimeError):
    pass


@dataclass
class ProxyRuntime:
    backend: LinearBackend
    manifest: Manifest
    linear: MaskedLinearClient
    model: SplitModel
    engine: AsyncEngine
    tokenizer: object | None


def load_tokenizer(files: dict[str, str]):
    """Build the tokenizer (and chat template) from the files the cloud published.

    The result must equal `AutoTokenizer.from_pretrained(checkpoint)`, whose class depends on the
    checkpoint's config.json when tokenizer_config.json names a generic class (a qwen2 checkpoint
    gets Qwen2Tokenizer, which splits digits, instead of TokenizersBackend). The cloud publishes a
    minimal config.json for that; only its model_type and tokenizer_class are written here.
    """
    if "tokenizer.json" not in files and "tokenizer_config.json" not in files:
        return None  # a checkpoint without a tokenizer: token-id API only
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            if "/" in name or name.startswith("."):
                continue  # only plain file names
            if name == "config.json":
                published = json.loads(text)
                text = json.dumps({k: published[k] for k in ("model_type", "tokenizer_class") if published.get(k)})
            Path(tmp, name).write_text(text, encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)


def build_runtime(backend: LinearBackend, scheme: str = "remo", *, mask_scale: float = 10.0,
                  scheduler: SchedulerConfig | None = None, max_model_len: int | None = None,
                  mask_seed: int | None = None) -> ProxyRuntime:
    """Fetch the public state from the cloud and build the engine (not started)."""
    t0 = time.monotonic()
    manifest = backend.manifest()
    if manifest.protocol != PROTOCOL_VERSION:
        raise ProtocolMismatch(f"cloud speaks {manifest.protocol}, this proxy {PROTOCOL_VERSION}")
    options = {"mask_scale": mask_scale, "seed": mask_seed} if scheme == "remo" else {}
    mask = build_scheme(scheme, manifest, **options)
    ops = [op.name for op in manifest.ops]
    log.info("model %s (%s, %d layers); scheme %s; fetching public tensors of %d ops",
             manifest.model_name, manifest.arch.family, manifest.arch.num_layers, scheme, len(ops))
    linear = MaskedLinearClient(backend, mask, ops)
    params, attention_scaling = backend.cvm_params()
    model = SplitModel(manifest.arch, params, attention_scaling, linear)
    tokenizer = load_tokenizer(backend.tokenizer_files())
    engine = AsyncEngine(model, scheduler, max_model_len)
    log.info("proxy runtime ready in %.1fs", time.monotonic() - t0)
    return ProxyRuntime(backend, manifest, linear, model, engine, tokenizer)
