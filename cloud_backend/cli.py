"""`talaria cloud`: load a checkpoint and serve masked linear calls."""

from __future__ import annotations

import argparse
import logging
import sys


# Every CloudSettings field is a flag named after it (talaria_base.flags), except these.
_RENAMED_FLAGS = {"record_dir": "--record"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cloud_backend.settings import CloudSettings
    from talaria_base.flags import add_setting_flags

    p.add_argument("--config", help="YAML config file (see configs/cloud.yaml)")
    add_setting_flags(p, CloudSettings, _RENAMED_FLAGS)


def build_service(settings):
    import torch

    from cloud_backend.checkpoint import load_prepared_model
    from cloud_backend.service import MaskedLinearService

    if settings.threads:
        torch.set_num_threads(settings.threads)
    # TF32 would round the float32 GEMM inputs to 10 mantissa bits: far from lossless (see service.py)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if settings.scheme == "pad":  # W_bar is rounded from the float64 weights; the float copy is dropped
        model = load_prepared_model(settings.model, dtype=torch.float64, device=settings.device)
        return MaskedLinearService(model, scheme="pad", record_dir=settings.record_dir,
                                   max_rows=getattr(settings, "max_rows", None))
    weight_dtype = torch.float64 if settings.compute_dtype == "float64" else torch.float32
    wire_dtype = torch.float32 if settings.compute_dtype == "float32" else torch.float64
    model = load_prepared_model(settings.model, dtype=weight_dtype, device=settings.device)
    return MaskedLinearService(
        model,
        scheme="remo",
        basis_seed=settings.basis_seed,
        wire_dtype=wire_dtype,
        default_rank=settings.mask_rank,
        rank_overrides=settings.mask_ranks,
        record_dir=settings.record_dir,
        reply=settings.reply,
        max_rows=getattr(settings, "max_rows", None),
    )


def run(args: argparse.Namespace) -> int:
    from cloud_backend.settings import CloudSettings
    from talaria_base.flags import given_settings
    from talaria_base.config import ConfigError, exit_on_config_error, load_settings

    try:
        settings = load_settings(CloudSettings, args.config, **given_settings(args, CloudSettings))
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
        from cloud_backend.limits import CallLimits

        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                    ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile,
                    ws_max_size=CallLimits.of(service).body_bytes())  # one call of max_rows rows (limits.py)
    finally:
        if frames is not None:
            frames.stop()
        compute.stop()
    return 0
