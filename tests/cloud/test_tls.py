"""TLS between proxy and cloud: REST, WebSocket and frames all verify the cloud's certificate."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time

import httpx
import pytest
import torch

from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_proxy.transports import connect

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")


def make_cert(directory, name):
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_cloud(tiny_model, tmp_path_factory):
    from support import free_port, start_talaria

    tmp = tmp_path_factory.mktemp("tls")
    cert, key = make_cert(tmp, "cloud")
    other, _ = make_cert(tmp, "other")
    port = free_port()
    server = start_talaria("cloud", ["--model", str(tiny_model("qwen2")), "--api-key", "k1", "--ssl-certfile",
                                     str(cert), "--ssl-keyfile", str(key)], tmp / "cloud.log", port=port)
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", verify=ssl.create_default_context(cafile=cert), timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    yield url, port, cert, other
    server.stop()


@pytest.mark.parametrize("transport", ["tcp", "websocket", "http"])
def test_calls_over_tls_give_the_same_answers(tls_cloud, transport):
    url, _, cert, _ = tls_cloud
    backend = connect(url, "k1", transport=transport, ca_file=str(cert))
    reference = connect(url, "k1", transport="http", ca_file=str(cert))
    try:
        d = backend.manifest().arch.hidden_size
        x = torch.randn(2, d, dtype=torch.float64)
        assert torch.equal(backend.linear("0.gate_up", x), reference.linear("0.gate_up", x))
    finally:
        backend.close()
        reference.close()


def test_an_untrusted_certificate_is_refused(tls_cloud):
    url, _, _, other = tls_cloud
    backend = connect(url, "k1", transport="tcp", ca_file=str(other))
    try:
        with pytest.raises(CloudUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            backend.manifest()
    finally:
        backend.close()


def test_frames_in_the_clear_are_refused_by_a_tls_frame_socket(tls_cloud):
    from talaria_proxy.frame_client import FrameLink

    url, _, cert, _ = tls_cloud
    port = httpx.get(url + "/health", verify=ssl.create_default_context(cafile=cert)).json()["frame_port"]
    link = FrameLink(lambda: ("127.0.0.1", port), "k1", lambda fp: None, connect_timeout=3, timeout=3)
    with pytest.raises((CloudUnavailable, CloudRejected)):
        link.send(0, torch.zeros(1, 4, dtype=torch.float64))
    link.drop()


def test_tls_settings_errors_are_one_line_with_exit_2(tmp_path):
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "talaria_cli.main", *args], capture_output=True, text=True,
                              timeout=60)

    proxy = run("proxy", "--cloud", "https://127.0.0.1:1", "--cloud-ca-file", str(tmp_path / "missing.pem"))
    assert proxy.returncode == 2 and "cloud_ca_file" in proxy.stderr and len(proxy.stderr.strip().splitlines()) == 1
    cloud = run("cloud", "--model", "x", "--ssl-certfile", str(tmp_path / "cert.pem"))
    assert cloud.returncode == 2 and "ssl_keyfile" in cloud.stderr and len(cloud.stderr.strip().splitlines()) == 1
