"""`talaria proxy`: connect to the cloud backend, build the split engine, serve the OpenAI API.

Start-up order: settings (defaults < YAML < env < flags) -> wait for the cloud -> fetch the
manifest, public masking tensors and tokenizer -> serve. SIGTERM/SIGINT stop accepting
connections, let in-flight requests finish (up to `shutdown_drain` seconds), then stop the engine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

# Every ProxySettings field is a flag named after it (talaria_base.flags), except these.
_RENAMED_FLAGS = {"cloud_url": "--cloud"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from talaria_base.flags import add_setting_flags
    from talaria_proxy.settings import ProxySettings

    p.add_argument("--config", help="YAML config file (see configs/proxy.yaml)")
    add_setting_flags(p, ProxySettings, _RENAMED_FLAGS)


def run(args: argparse.Namespace) -> int:
    from talaria_base.flags import given_settings
    from talaria_base.config import ConfigError, exit_on_config_error, load_settings
    from talaria_proxy.settings import ProxySettings

    try:
        settings = load_settings(ProxySettings, args.config, **given_settings(args, ProxySettings))
    except ConfigError as exc:
        return exit_on_config_error(exc)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s proxy %(levelname)s %(message)s")
    # The cloud clients log every call (4 per layer per step; websockets even dumps frame bytes at
    # DEBUG): keep them for real problems only.
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("talaria_proxy.cli")
    if settings.scheme == "none":
        log.warning("masking scheme 'none': the cloud sees plaintext activations (audit use only)")

    import uvicorn

    from talaria_proxy.api import build_app
    from talaria_proxy.cloud_session import CloudSession
    from talaria_proxy.errors import CloudError
    from talaria_proxy.runtime import ProtocolMismatch, build_runtime
    from talaria_proxy.scheduler import SchedulerConfig

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    if settings.scheme == "pad" and settings.pad_source == "dealer" and not settings.dealer_url:
        print("talaria proxy: scheme pad with pad_source dealer needs --dealer-url (a second `talaria cloud "
              "--scheme pad` on the same checkpoint), or use --pad-source he", file=sys.stderr)
        return 2
    sessions = []
    try:
        backend = CloudSession(settings.cloud_url, settings.cloud_api_key, timeout=settings.cloud_timeout,
                               ca_file=settings.cloud_ca_file)
        sessions.append(backend)
        dealer = None
        if settings.scheme == "pad" and settings.pad_source == "dealer":
            dealer = CloudSession(settings.dealer_url, settings.dealer_api_key, timeout=settings.cloud_timeout,
                                  ca_file=settings.cloud_ca_file, role="pad dealer")
            sessions.append(dealer)
    except OSError as exc:  # unreadable or invalid cloud_ca_file (ssl.SSLError is an OSError)
        print(f"talaria proxy: cannot use cloud_ca_file {settings.cloud_ca_file!r}: {exc}", file=sys.stderr)
        return 2
    try:
        for session in sessions:
            log.info("waiting for the %s at %s (up to %.0fs)", session.role, session.base_url, settings.cloud_wait)
            session.wait_ready(settings.cloud_wait)
        runtime = build_runtime(
            backend, settings.scheme, transport=settings.cloud_transport, mask_scale=settings.mask_scale,
            max_model_len=settings.max_model_len,
            scheduler=SchedulerConfig(settings.max_batch_tokens, settings.max_running, settings.max_waiting,
                                      settings.batch_wait_ms),
            dealer=dealer, pad_source=settings.pad_source, pad_pool_bytes=settings.pad_pool_mb << 20,
            pad_timeout=settings.pad_timeout, pad_block_rows=settings.pad_block_rows,
        )
    except (CloudError, ProtocolMismatch, ValueError) as exc:
        print(f"talaria proxy: {exc}", file=sys.stderr)
        for session in sessions:
            session.close()
        return 1
    if runtime.pads is not None:  # warm the pool first, so that the first requests do not wait on the source
        pads = runtime.pads
        log.info("pad scheme: source %s; making %d pad rows per op ahead (%d MiB), waiting up to %.0fs",
                 pads.source.name, pads.target_rows, settings.pad_pool_mb, settings.pad_warm_wait)
        t0 = time.monotonic()
        while not (warm := pads.wait_warm(min(15.0, max(0.0, settings.pad_warm_wait - (time.monotonic() - t0))))):
            if time.monotonic() - t0 >= settings.pad_warm_wait:
                break
            log.info("pad pool: %d of %d ops ready (%.0fs)%s", pads.warm_ops(), len(pads.ops), time.monotonic() - t0,
                     f"; source failing: {pads.source_error}" if pads.source_error else "")
        if warm:
            log.info("pad pool warm in %.0fs", time.monotonic() - t0)
        else:
            log.warning("pad pool not warm after %.0fs (source error: %s); serving anyway, calls wait for pads "
                        "up to pad_timeout", settings.pad_warm_wait, pads.source_error)
    if runtime.tokenizer is None:
        log.warning("the cloud published no tokenizer: text requests will be refused")
    import torch

    # the engine thread keeps the thread count it was built with; tensor ops on the event loop
    # (creating samplers, rendering) must not start a second OpenMP team (see engine.py)
    torch.set_num_threads(1)
    app = build_app(runtime, settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"talaria proxy: OpenAI-compatible API at http://{host}:{settings.port}/v1 "
          f"(model '{settings.served_model_name or runtime.manifest.model_name}')", flush=True)
    try:
        # Uvicorn drains connections for up to timeout_graceful_shutdown, then runs the lifespan
        # shutdown (engine.stop); one extra second lets streams end before they are cancelled.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                    timeout_graceful_shutdown=int(settings.shutdown_drain) + 1)
    finally:
        runtime.close()
        for session in sessions:
            session.close()
    return 0
