"""`talaria proxy`: connect to the cloud backend, build the split engine, serve the OpenAI API.

Start-up order: settings (defaults < YAML < env < flags) -> wait for the cloud -> fetch the
manifest, public masking tensors and tokenizer -> serve. SIGTERM/SIGINT stop accepting
connections, let in-flight requests finish (up to `shutdown_drain` seconds), then stop the engine.
"""

from __future__ import annotations

import argparse
import logging
import sys

# Flags whose value goes straight into ProxySettings (dest == settings field).
_SETTING_FLAGS = ("cloud_url", "cloud_api_key", "cloud_ca_file", "cloud_timeout", "cloud_transport", "cloud_wait", "threads", "host", "port", "served_model_name",
                  "scheme", "mask_scale", "api_keys", "cors_origins", "max_batch_tokens", "max_running", "batch_wait_ms",
                  "max_waiting", "max_model_len", "max_n", "request_timeout", "shutdown_drain", "log_level")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/proxy.yaml)")
    p.add_argument("--cloud", dest="cloud_url", metavar="URL", help="cloud backend base URL (default http://127.0.0.1:8100)")
    p.add_argument("--cloud-api-key", help="bearer token presented to the cloud backend")
    p.add_argument("--cloud-ca-file", help="PEM CA bundle trusted for an https cloud (default: the system's CAs)")
    p.add_argument("--cloud-timeout", type=float, help="seconds per cloud call before a request fails (default 30)")
    p.add_argument("--cloud-transport", choices=["tcp", "websocket", "http"],
                   help="how linear calls travel: raw frames on the cloud's frame socket (tcp, default), "
                        "messages on one WebSocket, or one HTTP POST each")
    p.add_argument("--threads", type=int, help="torch intra-op threads in the proxy (default: torch's)")
    p.add_argument("--cloud-wait", type=float, help="seconds to wait at start for the cloud to come up (default 120)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--served-model-name", help="model id in /v1/models (default: the cloud's model name)")
    p.add_argument("--scheme", choices=["remo", "none"], help="masking scheme (default remo; 'none' is for audits only)")
    p.add_argument("--mask-scale", type=float, help="ReMO mask norm relative to each row's norm (default 10)")
    p.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help="accepted client key (repeatable); without any, the API is open")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help="allowed CORS origin, e.g. http://localhost:3000 or '*' (repeatable)")
    p.add_argument("--max-batch-tokens", type=int, help="rows per engine step (default 512)")
    p.add_argument("--max-running", type=int, help="sequences decoding at once (default 64)")
    p.add_argument("--max-waiting", type=int, help="queued sequences before 429 (default 256)")
    p.add_argument("--batch-wait-ms", type=float, help="an idle engine waits while requests keep arriving this close together, so they share one prefill (default 3; 0: off)")
    p.add_argument("--max-model-len", type=int, help="context window (default: the model's)")
    p.add_argument("--max-n", type=int, help="largest n accepted (default 8)")
    p.add_argument("--request-timeout", type=float, help="seconds before a request is aborted (default 600)")
    p.add_argument("--shutdown-drain", type=float, help="seconds to finish in-flight requests on shutdown (default 30)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from talaria_cli.config import ConfigError, exit_on_config_error, load_settings
    from talaria_proxy.settings import ProxySettings

    try:
        settings = load_settings(ProxySettings, args.config, **{k: getattr(args, k) for k in _SETTING_FLAGS})
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
    from talaria_proxy.errors import CloudError
    from talaria_proxy.linear_backend import HttpLinearBackend, wait_for_cloud
    from talaria_proxy.runtime import ProtocolMismatch, build_runtime
    from talaria_proxy.scheduler import SchedulerConfig

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    try:
        backend = HttpLinearBackend(settings.cloud_url, settings.cloud_api_key, timeout=settings.cloud_timeout,
                                    transport=settings.cloud_transport, ca_file=settings.cloud_ca_file)
    except OSError as exc:  # unreadable or invalid cloud_ca_file (ssl.SSLError is an OSError)
        print(f"talaria proxy: cannot use cloud_ca_file {settings.cloud_ca_file!r}: {exc}", file=sys.stderr)
        return 2
    try:
        log.info("waiting for the cloud backend at %s (up to %.0fs)", settings.cloud_url, settings.cloud_wait)
        wait_for_cloud(backend, settings.cloud_wait)
        runtime = build_runtime(
            backend, settings.scheme, mask_scale=settings.mask_scale, max_model_len=settings.max_model_len,
            scheduler=SchedulerConfig(settings.max_batch_tokens, settings.max_running, settings.max_waiting,
                                      settings.batch_wait_ms),
        )
    except (CloudError, ProtocolMismatch) as exc:
        print(f"talaria proxy: {exc}", file=sys.stderr)
        backend.close()
        return 1
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
        backend.close()
    return 0
