"""Assemble the proxy's engine from a cloud session: manifest -> scheme (+ pad pool) -> skeleton -> engine."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

from talaria_proxy.engine import AsyncEngine
from talaria_proxy.masked_linear import MaskedLinearClient
from talaria_proxy.model import SplitModel
from talaria_proxy.pads.dealer import DealerSource
from talaria_proxy.pads.pool import PadPool
from talaria_proxy.pads.source import PadShape
from talaria_proxy.schemes.base import COMPUTE, MaskScheme
from talaria_proxy.schemes.pad import PadScheme
from talaria_proxy.schemes.remo import NoMask, RemoMask
from talaria_proxy.transports.base import LinearTransport, build_transport
from talaria_proxy.scheduler import SchedulerConfig
from talaria_wire import PROTOCOL_VERSION, Manifest

log = logging.getLogger(__name__)

SCHEMES = ("remo", "none", "pad")


class ProtocolMismatch(RuntimeError):
    pass


@dataclass
class ProxyRuntime:
    backend: object  # the compute cloud's session (CloudSession, or the in-process fake)
    manifest: Manifest
    linear: MaskedLinearClient
    model: SplitModel
    engine: AsyncEngine
    tokenizer: object | None
    pads: PadPool | None = None  # the pad scheme's pool
    transport: LinearTransport | None = None

    def close(self) -> None:
        """Stop background work and close every connection (transport, pad source, session)."""
        if self.pads is not None:
            self.pads.close()
        if self.transport is not None and self.transport is not self.backend:
            self.transport.close()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


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


def build_scheme(name: str, manifest: Manifest, *, mask_scale: float = 10.0, mask_seed: int | None = None,
                 pool: PadPool | None = None) -> MaskScheme:
    if name == "remo":
        return RemoMask(manifest, mask_scale=mask_scale, seed=mask_seed)
    if name == "none":
        return NoMask(manifest)
    if name == "pad":
        if pool is None:
            raise ValueError("the pad scheme needs a pad pool")
        return PadScheme(manifest, pool)
    raise ValueError(f"unknown masking scheme {name!r}; available: {', '.join(SCHEMES)}")


def build_pad_pool(manifest: Manifest, compute, pad_source: str, dealer, *, capacity_bytes: int,
                   timeout: float, block_rows: int) -> PadPool:
    """The pad pool of a `pad` runtime, with its source: `dealer` (a second cloud) or `he`."""
    shapes = {op.name: PadShape(op.name, op.pad_dim or op.d_in, op.d_out) for op in manifest.ops}
    if pad_source == "dealer":
        if dealer is None:
            raise ValueError("the pad scheme with pad source 'dealer' needs a dealer cloud (dealer_url)")
        theirs = dealer.manifest()
        if theirs.scheme != "pad" or theirs.fingerprint != manifest.fingerprint:
            raise ProtocolMismatch(
                f"the pad dealer serves {theirs.model_name!r} (scheme {theirs.scheme}, fingerprint "
                f"{theirs.fingerprint}); the compute cloud serves {manifest.model_name!r} (fingerprint "
                f"{manifest.fingerprint}): both must run `talaria cloud --scheme pad` on the same checkpoint")
        if theirs.max_rows is not None and block_rows > theirs.max_rows:
            raise ValueError(f"pad_block_rows {block_rows} is over the dealer's max_rows {theirs.max_rows}")
        source = DealerSource(shapes, dealer, rows_per_block=block_rows)
    elif pad_source == "he":
        from talaria_proxy.pads.he_source import HeSource

        # a batch packs N rows per op; the pool holds up to two batches (one in reserve while the next is
        # made), so keep fewer rows per batch (same cloud work, less memory) when the budget asks for it
        row_bytes = sum(8 * (s.d + s.o) for s in shapes.values())
        source = HeSource(shapes, compute, rows=max(1, capacity_bytes // row_bytes // 2))
        batch_rows = source.max_rows  # N - check_rows
        if source.rows < batch_rows:  # said once at start: it sets the he source's throughput
            log.warning("he pad source: pad_pool_mb %d keeps %d of the %d pad rows of each batch (a batch costs the "
                        "cloud the same work either way); full batches need pad_pool_mb >= %d",
                        capacity_bytes >> 20, source.rows, batch_rows, -(-(2 * batch_rows * row_bytes) >> 20))
    else:
        raise ValueError(f"unknown pad source {pad_source!r}; expected dealer or he")
    return PadPool(source, [op.name for op in manifest.ops], capacity_bytes=capacity_bytes, timeout=timeout)


def build_runtime(compute, scheme: str = "remo", *, transport: str | LinearTransport = "tcp", mask_scale: float = 10.0,
                  scheduler: SchedulerConfig | None = None, max_model_len: int | None = None,
                  mask_seed: int | None = None, dealer=None, pad_source: str = "dealer",
                  pad_pool_bytes: int = 256 << 20, pad_timeout: float = 10.0, pad_block_rows: int = 32) -> ProxyRuntime:
    """Fetch the public state from the compute cloud (a CloudSession, or the in-process fake) and
    build the engine (not started). Linear calls travel over `transport` (a name or a transport;
    the in-process fake is its own); `pad` also starts its pad pool."""
    t0 = time.monotonic()
    manifest = compute.manifest()
    if manifest.protocol != PROTOCOL_VERSION:
        raise ProtocolMismatch(f"cloud speaks {manifest.protocol}, this proxy {PROTOCOL_VERSION}")
    config = scheduler or SchedulerConfig()
    if manifest.max_rows is not None and config.max_batch_tokens > manifest.max_rows:
        raise ValueError(f"max_batch_tokens {config.max_batch_tokens} is over the cloud's max_rows {manifest.max_rows}: "
                         "a step would be refused; lower max_batch_tokens or raise the cloud's max_rows")
    if isinstance(compute, LinearTransport):
        link = compute
    elif isinstance(transport, LinearTransport):
        link = transport
    else:
        link = build_transport(transport, compute)
    pool = None
    if scheme == "pad":
        pool = build_pad_pool(manifest, compute, pad_source, dealer, capacity_bytes=pad_pool_bytes,
                              timeout=pad_timeout, block_rows=pad_block_rows)
    mask = build_scheme(scheme, manifest, mask_scale=mask_scale, mask_seed=mask_seed, pool=pool)
    ops = [op.name for op in manifest.ops]
    log.info("model %s (%s, %d layers); scheme %s; fetching public tensors of %d ops",
             manifest.model_name, manifest.arch.family, manifest.arch.num_layers, scheme, len(ops))
    linear = MaskedLinearClient({COMPUTE: link}, mask, ops, compute.public)
    params, attention_scaling = compute.cvm_params()
    model = SplitModel(manifest.arch, params, attention_scaling, linear)
    tokenizer = load_tokenizer(compute.tokenizer_files())
    engine = AsyncEngine(model, config, max_model_len)
    if pool is not None:
        pool.start()
    log.info("proxy runtime ready in %.1fs", time.monotonic() - t0)
    return ProxyRuntime(compute, manifest, linear, model, engine, tokenizer, pool, link)
