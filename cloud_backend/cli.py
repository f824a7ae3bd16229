"""`talaria cloud`: load a checkpoint and serve masked linear calls."""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/cloud.yaml)")
    p.add_argument("--model", help="HF checkpoint: local directory or hub id")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8100)")
    p.add_argument("--api-key", help="require this bearer token from the proxy")
    p.add_argument("--ssl-certfile", help="PEM certificate chain: serve REST and the frame socket over TLS")
    p.add_argument("--ssl-keyfile", help="PEM private key of --ssl-certfile")
    p.add_argument("--device", help="torch device for weights and GEMMs (default cpu)")
    p.add_argument("--compute-dtype", choices=["mixed", "float64", "float32"],
                   help="GEMM precision: mixed (default: float64 wire, float32 GEMM on the mask-free part), "
                        "float64, or float32 (lossy with large masks)")
    p.add_argument("--frame-port", type=int, help="port of the framed linear-call socket (default 0: any free port)")
    p.add_argument("--reply", choices=["projected", "full"],
                   help="answer x_perp W + b and let the CVM add the basis part (projected, default) or x~ W + b")
    p.add_argument("--mask-rank", type=int, help="ReMO rank m for every op (default 64)")
    p.add_argument("--basis-seed", type=int, help="seed of the public ReMO bases (default 0)")
    p.add_argument("--record", dest="record_dir", metavar="DIR", help="record every received call into DIR")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_service(settings):
    import torch

    from cloud_backend.checkpoint import load_prepared_model
    from cloud_backend.service import MaskedLinearService

    if settings.threads:
        torch.set_num_threads(settings.threads)
    # TF32 would round the float32 GEMM inputs to 10 mantissa bits: far from lossless (see service.py)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    weight_dtype = torch.float64 if settings.compute_dtype == "float64" else torch.float32
    wire_dtype = torch.float32 if settings.compute_dtype == "float32" else torch.float64
    model = load_prepared_model(settings.model, dtype=weight_dtype, device=settings.device)
    return MaskedLinearService(
        model,
        basis_seed=settings.basis_seed,
        wire_dtype=wire_dtype,
        default_rank=settings.mask_rank,
        rank_overrides=settings.mask_ranks,
        record_dir=settings.record_dir,
        reply=settings.reply,
    )


def run(args: argparse.Namespace) -> int:
    from cloud_backend.settings import CloudSettings
    from talaria_cli.config import ConfigError, exit_on_config_error, load_settings

    flags = {k: getattr(args, k) for k in ("model", "host", "port", "frame_port", "api_key", "ssl_certfile", "ssl_keyfile", "device", "compute_dtype", "reply",
                                            "mask_rank", "basis_seed", "record_dir", "threads", "log_level")}
    try:
        settings = load_settings(CloudSettings, args.config, **flags)
    except ConfigError as exc:
        return exit_on_config_error(exc)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s cloud %(levelname)s %(message)s")
    import uvicorn

    from cloud_backend.server import build_app

    from cloud_backend.checkpoint import CheckpointError

    from cloud_backend.compute import ComputeThread

    # every tensor op of this process runs on one thread, which owns its only OpenMP team (compute.py)
    compute = ComputeThread(settings.threads).start()
    try:
        service = compute.call(build_service, settings)
    except (CheckpointError, OSError, ValueError) as exc:  # missing path, unknown hub id, unsupported model
        compute.stop()
        print(f"talaria cloud: cannot serve {settings.model!r}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)  # any stray op elsewhere must not start a second OpenMP team
    if settings.record_dir:
        logging.getLogger(__name__).warning("recording every received call into %s", settings.record_dir)
    tls = None
    if settings.ssl_certfile:
        import ssl

        try:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            print(f"talaria cloud: cannot load the TLS certificate or key: {exc}", file=sys.stderr)
            compute.stop()
            return 2
    frames = None
    if settings.frame_port is not None:
        from cloud_backend.frame_server import FrameServer

        try:
            frames = FrameServer(service, settings.host, settings.frame_port, settings.api_key, tls, compute).start()
        except OSError as exc:
            print(f"talaria cloud: cannot open the frame socket on port {settings.frame_port}: {exc}", file=sys.stderr)
            compute.stop()
            return 2
    app = build_app(service, api_key=settings.api_key, frame_port=frames.port if frames else None, compute=compute)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                    ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
    finally:
        if frames is not None:
            frames.stop()
        compute.stop()
    return 0
