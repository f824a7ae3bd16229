"""`talaria cloud` / `talaria proxy` subprocesses for the benchmark, started as a user starts them."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import thread_env
from talaria_base.processes import ManagedProcess, free_port  # noqa: F401  (free_port re-exported)


class Server(ManagedProcess):
    """A benchmarked server with `threads` OpenMP threads; output in `log_path`."""

    threads = 1
    ready_timeout = 600.0  # a 0.5B checkpoint loads slowly on a busy machine
    stop_timeout = 20.0

    def tail(self) -> str:
        return self.log_tail(3000)


def start(command: str, args: list[str], log_dir: Path, threads: int = 1) -> Server:
    """`python -m talaria_cli.main <command> ... --port P` with `threads` OpenMP threads."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server.on_port(command, args, port, env=thread_env(threads), log_path=log_dir / f"{command}-{port}.log")
    server.threads = threads
    return server


def cloud_mode(mode: str) -> dict:
    """A benchmark's cloud mode -> cloud settings: 'pad' (the ring kernel and dealer), or
    'COMPUTE_DTYPE[/REPLY]' of a remo cloud (e.g. 'mixed', 'mixed/full')."""
    if mode == "pad":
        return {"scheme": "pad"}
    compute, _, reply = mode.partition("/")
    return {"compute_dtype": compute, **({"reply": reply} if reply else {})}


def start_cloud(model: Path, log_dir: Path, mode: str, threads: int = 1) -> Server:
    settings = cloud_mode(mode)
    if mode == "pad":
        flags = ["--scheme", "pad"]
    else:
        flags = ["--compute-dtype", settings["compute_dtype"]] + (["--reply", settings["reply"]] if "reply" in settings else [])
    return start("cloud", ["--model", str(model), "--threads", str(threads), *flags, "--log-level", "warning"],
                 log_dir, threads)


def start_proxy(cloud_url: str, log_dir: Path, transport: str, threads: int = 1, *, dealer_url: str | None = None,
                pad_pool_mb: int | None = None) -> Server:
    """A proxy of the default scheme, or with `dealer_url` one of scheme pad with that dealer."""
    pad = ["--scheme", "pad", "--pad-source", "dealer", "--dealer-url", dealer_url, "--pad-timeout", "600",
           *(["--pad-pool-mb", str(pad_pool_mb)] if pad_pool_mb else [])] if dealer_url else []
    return start("proxy", ["--cloud", cloud_url, "--cloud-transport", transport, "--threads", str(threads),
                           "--log-level", "warning", "--cloud-wait", "600", *pad], log_dir, threads)


def defaults() -> dict:
    """The precision mode and transport that `talaria cloud` / `talaria proxy` use by default."""
    from cloud_backend.settings import CloudSettings
    from talaria_proxy.settings import ProxySettings

    cloud, proxy = CloudSettings.model_fields, ProxySettings.model_fields
    return {"compute_dtype": cloud["compute_dtype"].default, "reply": cloud["reply"].default,
            "mask_rank": cloud["mask_rank"].default,
            "transport": proxy["cloud_transport"].default, "mask_scale": proxy["mask_scale"].default}
