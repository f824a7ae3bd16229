"""`CloudSession`: the proxy's REST connection to one cloud process (compute cloud or dealer).

It owns what is not a linear call: the manifest and the fingerprint every response is checked
against, /health, the public per-op tensors, the CVM parameters, the tokenizer files, and POSTs
of tensor bodies (the dealer's pads). Linear calls travel over a transport (transports/), which
asks the session for addresses, headers and TLS.
"""

from __future__ import annotations

import json
import ssl
import time

import httpx
import torch

from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_wire import Manifest, WireFormatError, decode_tensors, encode_tensors
from talaria_wire.tensors import MEDIA_TYPE, decode_metadata

FINGERPRINT_HEADER = "x-talaria-fingerprint"


class CloudSession:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 connect_timeout: float = 3.0, http_transport: httpx.BaseTransport | None = None,
                 ca_file: str | None = None, role: str = "cloud backend"):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.role = role  # in messages: 'cloud backend', 'pad dealer'
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # https: REST, WebSocket and frames all verify the cloud's certificate (system CAs or ca_file)
        self.tls = ssl.create_default_context(cafile=ca_file) if self.base_url.startswith("https://") else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.mocked = http_transport is not None  # a mocked httpx transport has no sockets behind it
        self._client = httpx.Client(base_url=self.base_url, headers=self.headers, transport=http_transport,
                                    timeout=httpx.Timeout(timeout, connect=connect_timeout), verify=self.tls or True)
        self.fingerprint: str | None = None
        self.op_index: dict[str, int] = {}

    # -- plumbing --------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CloudUnavailable(f"{self.role} at {self.base_url} timed out on {path}") from exc
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"{self.role} at {self.base_url} is unreachable: {exc}") from exc
        self.check_fingerprint(resp.headers.get(FINGERPRINT_HEADER))
        if resp.status_code >= 500:
            raise CloudUnavailable(f"{self.role} error {resp.status_code} on {path}: {_message(resp)}")
        if resp.status_code >= 400:
            raise CloudRejected(f"{self.role} rejected {path} ({resp.status_code}): {_message(resp)}")
        return resp

    def check_fingerprint(self, fp: str | None) -> None:
        if self.fingerprint is not None and fp is not None and fp != self.fingerprint:
            raise CloudUnavailable(
                f"{self.role} restarted with different weights or parameters "
                f"(fingerprint {fp} != {self.fingerprint}); restart the proxy"
            )

    def tensors(self, path: str) -> dict[str, torch.Tensor]:
        resp = self.request("GET", path)
        try:
            return decode_tensors(resp.content)
        except WireFormatError as exc:
            raise CloudRejected(f"{self.role} sent a malformed body for {path}: {exc}") from exc

    def post_tensors(self, path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     timeout: float | None = None) -> dict[str, torch.Tensor]:
        kwargs = {} if timeout is None else {"timeout": httpx.Timeout(timeout, connect=self.connect_timeout)}
        resp = self.request("POST", path, content=encode_tensors(tensors, metadata=metadata),
                            headers={"content-type": MEDIA_TYPE}, **kwargs)
        try:
            return decode_tensors(resp.content)
        except WireFormatError as exc:
            raise CloudRejected(f"{self.role} sent a malformed answer for {path}: {exc}") from exc

    def pads(self, requests: list[tuple[str, int]], seeds: list[bytes]) -> list[torch.Tensor]:
        """Ask a dealer for r W_bar mod t of the pads these seeds stand for, one block per request."""
        body = {"seeds": torch.tensor([list(s) for s in seeds], dtype=torch.uint8).view(len(seeds), -1)}
        out = self.post_tensors("/v1/pads", body, {"requests": json.dumps([[op, rows] for op, rows in requests])})
        try:
            return [out[str(i)] for i in range(len(requests))]
        except KeyError as exc:
            raise CloudRejected(f"{self.role} answered without pad block {exc}") from exc

    # -- what the proxy reads at start ------------------------------------------------------
    def manifest(self) -> Manifest:
        resp = self.request("GET", "/v1/manifest")
        manifest = Manifest.model_validate(resp.json())
        self.fingerprint = manifest.fingerprint
        self.op_index = {op.name: i for i, op in enumerate(manifest.ops)}
        return manifest

    def public(self, op: str) -> dict[str, torch.Tensor]:
        """The public tensors of op for the cloud's scheme (remo: basis, recovery; pad: col_exp)."""
        return self.tensors(f"/v1/public/{op}")

    def cvm_params(self) -> tuple[dict[str, torch.Tensor], float]:
        resp = self.request("GET", "/v1/cvm-params")
        try:
            tensors = decode_tensors(resp.content)
            return tensors, float(decode_metadata(resp.content).get("attention_scaling", 1.0))
        except WireFormatError as exc:
            raise CloudRejected(f"{self.role} sent malformed CVM parameters: {exc}") from exc

    def tokenizer_files(self) -> dict[str, str]:
        return self.request("GET", "/v1/tokenizer").json()

    def health(self) -> dict:
        return self.request("GET", "/health").json()

    def ping(self) -> bool:
        """True when the cloud is up and still the one whose manifest we loaded."""
        try:
            resp = self._client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        fp = resp.headers.get(FINGERPRINT_HEADER)
        return resp.status_code == 200 and (self.fingerprint is None or fp == self.fingerprint)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the cloud answers /health (it may still be loading the checkpoint)."""
        deadline = time.monotonic() + timeout
        while not self.ping():
            if time.monotonic() > deadline:
                raise CloudUnavailable(f"{self.role} at {self.base_url} not ready after {timeout:.0f}s")
            time.sleep(0.25)

    def close(self) -> None:
        self._client.close()


def _message(resp: httpx.Response) -> str:
    try:
        return resp.json()["error"]["message"]
    except Exception:
        return resp.text[:200]
