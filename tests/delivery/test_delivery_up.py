"""`talaria up` end to end: the one-command demo starts both sides, serves a chat completion
through the official client, and on SIGINT stops both children and exits 0."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from talaria_base.processes import free_port

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="child processes are found through /proc")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields after "(comm)": state, ppid, ...
            found.append(int(stat.parent.name))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, only waiting for its parent to reap it


class Up:
    """A `talaria up` subprocess whose stdout is collected line by line."""

    def __init__(self, args: list[str], home: Path, log: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TALARIA_CLOUD_", "TALARIA_PROXY_"))}
        env.update(TALARIA_HOME=str(home), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "talaria_cli.main", "up", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} on stdout; exit {self.proc.poll()}\n{self.output()}")

    def output(self) -> str:
        return "".join(self.lines) + "\n--- stderr ---\n" + self.log.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        for pid in children_of(self.proc.pid):
            os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_up_serves_chat_and_stops_on_sigint(tmp_path):
    from openai import OpenAI

    port, cloud_port = free_port(), free_port()
    up = Up(["--port", str(port), "--cloud-port", str(cloud_port)], tmp_path / "home", tmp_path / "up.log")
    try:
        base_url = up.wait_for(r"(http://127\.0\.0\.1:\d+/v1)\b", timeout=300).group(1)
        assert base_url == f"http://127.0.0.1:{port}/v1"
        assert (tmp_path / "home" / "models" / "tiny-qwen2" / "config.json").is_file()
        banner = "".join(up.lines)
        assert "curl" in banner and "from openai import OpenAI" in banner and '"stream": true' in banner

        client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, max_tokens=6,
                                               messages=[{"role": "user", "content": "Hello!"}])
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens >= 1
        streamed = client.chat.completions.create(model=model, max_tokens=6, stream=True,
                                                  messages=[{"role": "user", "content": "Hello!"}])
        assert [c for c in streamed if c.choices and c.choices[0].finish_reason]

        kids = children_of(up.proc.pid)
        assert len(kids) == 2, f"expected cloud and proxy, found {kids}"
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=90) == 0, up.output()
        assert all(gone(pid) for pid in kids)
        for p in (port, cloud_port):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{p}/health", timeout=2)
        stderr = up.log.read_text()
        assert "Traceback" not in stderr, stderr
        # The proxy goes down first (its in-flight requests need the cloud), the cloud after it.
        assert stderr.index("stopping the proxy") < stderr.index("stopping the cloud")
        assert stderr.index("stopping the cloud") < stderr.rindex("[cloud]")
    finally:
        up.kill()


def test_up_exits_nonzero_when_a_child_dies(tmp_path):
    """A checkpoint the cloud cannot load: `up` reports its last lines and exits 1."""
    bad = tmp_path / "not-a-checkpoint"
    bad.mkdir()
    port, cloud_port = free_port(), free_port()
    up = Up(["--model", str(bad), "--port", str(port), "--cloud-port", str(cloud_port)],
            tmp_path / "home", tmp_path / "up.log")
    try:
        assert up.proc.wait(timeout=120) == 1
        stderr = up.log.read_text()
        assert "the cloud exited with code" in stderr and "last output" in stderr, stderr
        assert not children_of(up.proc.pid)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        up.kill()


def test_up_refuses_a_busy_port(tmp_path):
    """Another server on the proxy's port would answer /health in our place: refuse up front."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = Up(["--port", str(port), "--cloud-port", str(free_port())], tmp_path / "home", tmp_path / "up.log")
        try:
            assert up.proc.wait(timeout=60) == 2
        finally:
            up.kill()
    stderr = up.log.read_text()
    assert f"port {port}" in stderr and "--port" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "home").exists()  # refused before generating the model


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_children_die_with_a_killed_up(tmp_path, tiny_model):
    """`up` killed outright (SIGKILL: no handler, no cleanup) must not leave its cloud running."""
    port, cloud_port = free_port(), free_port()
    up = Up(["--model", str(tiny_model("qwen2")), "--port", str(port), "--cloud-port", str(cloud_port)],
            tmp_path / "home", tmp_path / "up.log")
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and up.proc.poll() is None:  # the cloud serves: past every start-up step
            try:
                if httpx.get(f"http://127.0.0.1:{cloud_port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"the cloud never became healthy\n{up.output()}")
        kids = children_of(up.proc.pid)
        assert kids, up.output()
        up.proc.kill()
        up.proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(gone(pid) for pid in kids):
            time.sleep(0.1)
        assert all(gone(pid) for pid in kids), f"children {kids} outlived the killed `talaria up`"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{cloud_port}/health", timeout=2)
    finally:
        for pid in kids:  # reparented by now: only their pids reach them
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        up.kill()


def test_up_with_the_pad_scheme_starts_a_dealer_and_serves_chat(tmp_path):
    from openai import OpenAI

    port, cloud_port, dealer_port = free_port(), free_port(), free_port()
    up = Up(["--scheme", "pad", "--port", str(port), "--cloud-port", str(cloud_port), "--dealer-port", str(dealer_port)],
            tmp_path / "home", tmp_path / "up.log")
    try:
        base_url = up.wait_for(r"(http://127\.0\.0\.1:\d+/v1)\b", timeout=300).group(1)
        banner = "".join(up.lines)
        assert "masking scheme pad" in banner and f"pad dealer:      http://127.0.0.1:{dealer_port}" in banner
        assert "do not collude" in banner
        for p in (cloud_port, dealer_port):
            assert httpx.get(f"http://127.0.0.1:{p}/health", timeout=5).status_code == 200
        client = OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, max_tokens=6, messages=[{"role": "user", "content": "Hi"}])
        assert reply.usage.completion_tokens >= 1
        kids = children_of(up.proc.pid)
        assert len(kids) == 3, f"expected cloud, dealer and proxy, found {kids}"
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=90) == 0, up.output()
        assert all(gone(pid) for pid in kids)
        assert "Traceback" not in up.log.read_text()
    finally:
        up.kill()
