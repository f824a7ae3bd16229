"""`talaria up` passes --api-key, --cors-origin and --host to the proxy, and its banner says that
the generated demo model has random weights."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from talaria_base.processes import free_port

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="child processes are found through /proc")

KEY = "up-test-key-7f3a"
ORIGIN = "http://app.example.test"


def test_up_passes_key_cors_and_host_to_the_proxy(tmp_path):
    port, cloud_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALARIA_CLOUD_", "TALARIA_PROXY_"))}
    env.update(TALARIA_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "talaria_cli.main", "up", "--port", str(port), "--cloud-port",
                             str(cloud_port), "--host", "127.0.0.1", "--api-key", KEY, "--cors-origin", ORIGIN],
                            env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "up.log", "wb"), text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not any("Press Ctrl-C" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-4000:]
            time.sleep(0.2)
        banner = "".join(lines)
        assert "random weights" in banner and "requires an API key" in banner
        base = re.search(r"OpenAI base_url: (\S+)", banner).group(1)
        assert base == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(base + "/models", timeout=10).status_code == 401
        ok = httpx.get(base + "/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert ok.status_code == 200
        preflight = httpx.options(base + "/chat/completions", timeout=10, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.headers.get("access-control-allow-origin") == ORIGIN
        # the key reaches the proxy through its environment, never its command line (`ps` shows that)
        found = False
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"proxy" in args and str(port).encode() in args:
                assert KEY.encode() not in b" ".join(args)
                assert b"--cors-origin" in args and b"--host" in args
                found = True
        assert found, "the proxy child was not found in /proc"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0


def test_reachable_address_of_a_bind_host():
    from talaria_cli.up import _reachable

    assert _reachable("0.0.0.0") == "127.0.0.1" and _reachable("::") == "[::1]"
    assert _reachable("10.1.2.3") == "10.1.2.3" and _reachable("fe80::1") == "[fe80::1]"
