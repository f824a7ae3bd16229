"""`talaria proxy` as a command: configuration errors, an unreachable cloud, the printed base URL,
and graceful shutdown (in-flight streams finish, new connections are refused)."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from api_helpers import MODEL, iter_sse, user, wait_until


def _proxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "talaria_cli.main", "proxy", *args], capture_output=True,
                          text=True, timeout=timeout)


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        pass
    return False


@pytest.mark.parametrize("args, key", [
    (["--config", "/nonexistent/proxy.yaml"], "config file not found"),
    (["--max-running", "0"], "max_running"),
])
def test_config_errors_exit_2_with_one_line(args, key):
    done = _proxy(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in done.stderr


def test_invalid_yaml_value_names_the_key(tmp_path):
    config = tmp_path / "proxy.yaml"
    config.write_text("max_waiting: -3\nport: 8000\n")
    done = _proxy("--config", str(config))
    assert done.returncode == 2 and "max_waiting" in done.stderr


def test_unreachable_cloud_exits_1(helpers):
    done = _proxy("--cloud", f"http://127.0.0.1:{helpers.free_port()}", "--cloud-wait", "0")
    assert done.returncode == 1
    assert "not ready" in done.stderr and "Traceback" not in done.stderr


def test_graceful_shutdown_finishes_in_flight_stream(helpers, cloud, server_logs):
    server = helpers.start_talaria("proxy", ["--cloud", cloud.url, "--shutdown-drain", "20"],
                                   server_logs / "shutdown-proxy.log").wait_ready()
    try:
        assert f"{server.url}/v1" in server.log()  # the base URL is printed at start
        body = {"model": MODEL, "messages": user("One more thing."), "max_tokens": 200, "temperature": 0,
                "stream": True, "ignore_eos": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as resp:
            events = iter_sse(resp.iter_lines())
            assert next(events)["choices"][0]["delta"]["role"] == "assistant"
            server.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: _refused(server.url), 10)
            assert server.proc.poll() is None  # refusing new connections while still draining
            rest = list(events)
        assert rest[-1] == "[DONE]"
        assert [ch["finish_reason"] for e in rest[:-1] for ch in e["choices"] if ch["finish_reason"]] == ["length"]
        # uvicorn re-raises the captured SIGTERM once its shutdown is complete
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
    finally:
        server.stop()
