"""`talaria up`: run the cloud backend and the proxy together on localhost.

This is the one-command demo and development loop. Both sides run as child processes of this
one (`python -m talaria_cli.main cloud|proxy ...`), exactly as they would run on two hosts, so
what works here works split. Without `--model` the tiny random-weight Qwen2 checkpoint is
generated once into the cache (`$TALARIA_HOME/models/tiny-qwen2`, default
`~/.cache/talaria/models/tiny-qwen2`).

Lifecycle:
    cloud start -> /health 200 -> proxy start -> /health 200 -> print base URL and examples
    Ctrl-C / SIGTERM -> stop proxy (it drains in-flight requests) -> stop cloud -> exit 0
    a child dies -> stop the other -> exit 1, with the dead child's last log lines

The children run in their own sessions so that a terminal Ctrl-C reaches only this process,
which then stops them in order: the proxy first, because its in-flight requests still need
the cloud. Should `up` itself be killed outright, the children get SIGTERM from the kernel
(Linux; see talaria_base.processes) rather than running on.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from talaria_base.processes import ManagedProcess, NotReady
from talaria_cli.tiny_model import ARCHS

LOG_TAIL_LINES = 40  # lines of a dead child's output shown in the error
HOST = "127.0.0.1"  # `up` is a localhost tool; split deployments run `talaria cloud/proxy` directly


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint for the cloud: local directory or hub id "
                                   "(default: a tiny random-weight model generated on first use)")
    p.add_argument("--arch", choices=ARCHS, default="qwen2",
                   help="architecture of the generated tiny model when no --model is given (default: qwen2)")
    from talaria_base.flags import choices_of
    from talaria_proxy.settings import ProxySettings

    p.add_argument("--scheme", choices=choices_of(ProxySettings, "scheme"),
                   help="how linear inputs are protected: pad (one-time pads; private), remo (default; the paper's "
                        "fast masks, which a cloud that knows its model sees through) or none (audits)")
    p.add_argument("--pad-source", choices=choices_of(ProxySettings, "pad_source"),
                   help="with --scheme pad: dealer (default; starts a second cloud that makes the pads) or he "
                        "(the same cloud makes them under RLWE encryption)")
    p.add_argument("--dealer-port", type=int, help="port of the pad dealer cloud (default: --cloud-port + 1)")
    p.add_argument("--port", type=int, help="port of the OpenAI-compatible proxy (default: 8000)")
    p.add_argument("--cloud-port", type=int, help="port of the cloud backend (default: 8100)")
    p.add_argument("--host", help="bind address of the proxy (default: 127.0.0.1; the cloud always stays on it)")
    p.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                   help="client key the proxy requires (repeatable; default: none, the API is open)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help="CORS origin the proxy allows, e.g. http://localhost:3000 (repeatable)")
    p.add_argument("--config-cloud", metavar="YAML", help="cloud config file (see configs/cloud.yaml)")
    p.add_argument("--config-proxy", metavar="YAML", help="proxy config file (see configs/proxy.yaml)")
    p.add_argument("--startup-timeout", type=float, default=600.0, metavar="S",
                   help="seconds each side may take to become healthy (default: 600)")


def ensure_demo_model(arch: str) -> Path:
    from talaria_cli.tiny_model import ensure_tiny_model, tiny_model_dir, write_tiny_model

    out = tiny_model_dir(arch)
    if not (out / "config.json").exists():
        _say(f"generating the tiny {arch} model in {out} (first use only)")
        write_tiny_model(out, arch=arch, verbose=True)
    return ensure_tiny_model(out, arch=arch)


class Child(ManagedProcess):
    """One `talaria <side>` child in its own session; its output is echoed with a prefix."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], url: str, command: str | None = None):
        super().__init__(command or name, argv, url=url, env=env, new_session=True, tail_lines=LOG_TAIL_LINES,
                         on_line=lambda line: print(f"[{name}] {line}", file=sys.stderr, flush=True))
        self.name = name  # 'dealer' runs `talaria cloud`

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> bool:
        if self.alive():
            _say(f"stopping the {self.name}")
        killed = super().stop(sig, timeout)
        if killed:
            _say(f"the {self.name} did not stop within {timeout or self.stop_timeout:.0f}s; killed it")
        return killed


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _say(msg: str) -> None:
    print(f"talaria up: {msg}", file=sys.stderr, flush=True)


def served_model_id(proxy_url: str, api_key: str | None, fallback: str) -> str:
    import json
    import urllib.request

    req = urllib.request.Request(proxy_url + "/v1/models")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)["data"][0]["id"]
    except Exception:  # the examples still work with the checkpoint's name
        return fallback


CLOUD_SEES = {
    "pad": "sees only one-time-padded inputs, uniform and independent of the text",
    "remo": "sees ReMO-masked inputs; a cloud that knows its model can recover the text (use --scheme pad)",
    "none": "sees plaintext activations (audit use only)",
}


def banner(base_url: str, model_id: str, scheme: str, cloud_url: str, needs_key: bool,
           random_weights: bool = False, pad_source: str = "dealer", dealer_url: str | None = None) -> str:
    auth = ' -H "Authorization: Bearer $TALARIA_API_KEY"' if needs_key else ""
    py_key = 'os.environ["TALARIA_API_KEY"]' if needs_key else '"none"'
    lines = [
        "",
        f"Talaria is up: model {model_id!r}, masking scheme {scheme}.",
        f"  OpenAI base_url: {base_url}",
        f"  cloud backend:   {cloud_url} (holds the weights; {CLOUD_SEES[scheme]})",
    ]
    if dealer_url is not None:
        lines.append(f"  pad dealer:      {dealer_url} (a second cloud that makes the pads; private only if the two "
                     "clouds do not collude)")
    elif scheme == "pad" and pad_source == "he":
        lines.append("  pads:            made by the same cloud on RLWE ciphertexts (it never sees them in the clear)")
    if random_weights:
        lines.append("  the demo model has random weights: its answers are gibberish (use --model for a real one)")
    if needs_key:
        lines.append("  the proxy requires an API key: export TALARIA_API_KEY=<one of its api_keys>")
    lines += [
        "",
        "Try it with curl (streaming chat completion):",
        f"  curl -N {base_url}/chat/completions -H 'Content-Type: application/json'{auth} \\",
        f"    -d '{{\"model\": \"{model_id}\", \"stream\": true, "
        f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
        "",
        "or with the OpenAI Python SDK (pip install openai):",
        *(["  import os"] if needs_key else []),
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url=\"{base_url}\", api_key={py_key})",
        f"  stream = client.chat.completions.create(model=\"{model_id}\", stream=True,",
        "      messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])",
        "  for chunk in stream:",
        "      if chunk.choices:",
        "          print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


def _reachable(host: str) -> str:
    """An address this machine reaches a server bound to `host` at (the wildcards mean every interface)."""
    if host in ("0.0.0.0", ""):
        return HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _configured_model(config_file: str | None) -> str | None:
    """The cloud model named by the environment or the cloud YAML, if any (flags are handled by the caller)."""
    if os.environ.get("TALARIA_CLOUD_MODEL"):
        return os.environ["TALARIA_CLOUD_MODEL"]
    if config_file and Path(config_file).is_file():
        import yaml

        try:
            data = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError:
            return None  # load_settings reports it with the file name
        if isinstance(data, dict) and data.get("model"):
            return str(data["model"])
    return None


def run(args: argparse.Namespace) -> int:
    from cloud_backend.settings import CloudSettings
    from talaria_base.config import ConfigError, exit_on_config_error, load_settings
    from talaria_proxy.settings import ProxySettings

    from talaria_cli.tiny_model import TinyModelError

    model = args.model or _configured_model(args.config_cloud)
    try:
        # Validate both configs before any slow work (one-line errors); learn the ports and keys.
        proxy = load_settings(ProxySettings, args.config_proxy, port=args.port, scheme=args.scheme, host=args.host,
                              api_keys=args.api_keys, cors_origins=args.cors_origins, pad_source=args.pad_source)
        cloud = load_settings(CloudSettings, args.config_cloud, model=model or "tiny", port=args.cloud_port)
        with_dealer = proxy.scheme == "pad" and proxy.pad_source == "dealer"
        dealer_port = args.dealer_port or cloud.port + 1
        ports = [(HOST, cloud.port, "--cloud-port"), (proxy.host, proxy.port, "--port")]
        if with_dealer:
            ports.append((HOST, dealer_port, "--dealer-port"))
        if len({port for _, port, _ in ports}) < len(ports):  # a later server would fail to bind after the first was announced
            _say("the proxy, the cloud and the dealer need different ports; choose different " +
                 ", ".join(flag for _, _, flag in ports))
            return 2
        for host, port, flag in ports:
            # Checked up front: another server answering /health there would pass for ours.
            if not port_free(host, port):
                _say(f"port {port} on {host} is already in use; choose another with {flag}")
                return 2
        if model is None:
            model = str(ensure_demo_model(args.arch))
    except ConfigError as exc:
        return exit_on_config_error(exc)
    except TinyModelError as exc:
        _say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130

    cloud_url = f"http://{HOST}:{cloud.port}"
    proxy_url = f"http://{_reachable(proxy.host)}:{proxy.port}"
    if proxy.host not in (HOST, "localhost", "::1") and not proxy.api_keys:
        _say(f"warning: the proxy listens on {proxy.host} without an API key; anyone who reaches it can use it")
    # The cloud on localhost is still reachable by every local user: protect it with a key. It goes
    # through the environment (above YAML, below flags) so it never shows in `ps`.
    cloud_key = cloud.api_key or secrets.token_urlsafe(24)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cloud_env = {**env, "TALARIA_CLOUD_API_KEY": cloud_key}
    proxy_env = {**env, "TALARIA_PROXY_CLOUD_API_KEY": cloud_key}
    if args.api_keys:  # through the environment too, so the keys never show in `ps`
        proxy_env["TALARIA_PROXY_API_KEYS"] = json.dumps(args.api_keys)

    # the cloud's kernel follows the proxy's scheme: pad clouds for pad, remo clouds for remo and none
    cloud_scheme = "pad" if proxy.scheme == "pad" else "remo"
    cloud_argv = ["--model", model, "--host", HOST, "--port", str(cloud.port), "--scheme", cloud_scheme]
    if args.config_cloud:
        cloud_argv += ["--config", args.config_cloud]
    proxy_argv = ["--cloud", cloud_url, "--host", proxy.host, "--port", str(proxy.port), "--scheme", proxy.scheme]
    dealer_url = None
    if proxy.scheme == "pad":
        proxy_argv += ["--pad-source", proxy.pad_source]
    if with_dealer:  # a second cloud on the same checkpoint; a key of its own (the two must not share secrets)
        dealer_url = f"http://{HOST}:{dealer_port}"
        dealer_key = secrets.token_urlsafe(24)
        dealer_argv = ["--model", model, "--host", HOST, "--port", str(dealer_port), "--scheme", "pad"]
        if args.config_cloud:
            dealer_argv += ["--config", args.config_cloud]
        dealer_env = {**env, "TALARIA_CLOUD_API_KEY": dealer_key}
        proxy_env["TALARIA_PROXY_DEALER_API_KEY"] = dealer_key
        proxy_argv += ["--dealer-url", dealer_url]
    for origin in args.cors_origins or []:
        proxy_argv += ["--cors-origin", origin]
    if args.config_proxy:
        proxy_argv += ["--config", args.config_proxy]

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        if stop.is_set():  # a second Ctrl-C: do not wait for the drain
            for child in children:
                if child.alive():
                    child.proc.kill()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    code = 0
    try:
        _say(f"starting the cloud backend on {cloud_url} with {model}")
        children.append(Child("cloud", cloud_argv, cloud_env, cloud_url))
        children[-1].wait_ready(timeout=args.startup_timeout, stop=stop)
        if dealer_url is not None and not stop.is_set():
            _say(f"starting the pad dealer on {dealer_url} with {model}")
            children.append(Child("dealer", dealer_argv, dealer_env, dealer_url, command="cloud"))
            children[-1].wait_ready(timeout=args.startup_timeout, stop=stop)
        if not stop.is_set():
            _say(f"starting the proxy on {proxy_url} (scheme {proxy.scheme})")
            children.append(Child("proxy", proxy_argv, proxy_env, proxy_url))
            children[-1].wait_ready(timeout=args.startup_timeout, stop=stop)
        if not stop.is_set():
            key = proxy.api_keys[0] if proxy.api_keys else None
            model_id = served_model_id(proxy_url, key, proxy.served_model_name or Path(model).name)
            print(banner(proxy_url + "/v1", model_id, proxy.scheme, cloud_url, bool(proxy.api_keys),
                         random_weights=args.model is None and _configured_model(args.config_cloud) is None,
                         pad_source=proxy.pad_source, dealer_url=dealer_url),
                  flush=True)
        while not stop.is_set():
            dead = next((c for c in children if not c.alive()), None)
            if dead is not None:
                raise NotReady(f"the {dead.name} exited unexpectedly with code {dead.proc.returncode}; "
                                  f"its last output:\n{dead.last_output()}")
            stop.wait(0.5)
        _say(f"received {signal.Signals(received[0]).name}, stopping" if received else "stopping")
    except NotReady as exc:
        _say(str(exc))
        code = 1
    finally:
        # Proxy first: it drains in-flight requests, which still call the cloud.
        for child in reversed(children):
            drain = proxy.shutdown_drain + 10 if child.name == "proxy" else 15.0
            child.stop(timeout=drain)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == 0:
        _say("stopped")
    return code
