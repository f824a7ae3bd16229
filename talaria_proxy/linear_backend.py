"""The linear-backend seam: how the CVM reaches the cloud's weights.

`LinearBackend` is everything the engine needs from the cloud: the manifest, the public ReMO
tensors of an op, the CVM parameters, the tokenizer files and `linear(op, x~) -> y~`.
`HttpLinearBackend` is production (httpx, binary safetensors bodies, one kept-alive connection);
`InProcessLinearBackend` calls a service object directly, for tests and benchmarks without a network.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

import httpx
import torch

from talaria_proxy.errors import CloudRejected, CloudUnavailable
from talaria_wire import Manifest, WireFormatError, decode_tensors, encode_tensors
from talaria_wire.tensors import MEDIA_TYPE, decode_metadata

log = logging.getLogger(__name__)

FINGERPRINT_HEADER = "x-talaria-fingerprint"


class LinearBackend(ABC):
    @abstractmethod
    def manifest(self) -> Manifest: ...

    @abstractmethod
    def public_tensors(self, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(M_pub [m, d_in], R_pub [m, d_out]) of `op`."""

    @abstractmethod
    def cvm_params(self) -> tuple[dict[str, torch.Tensor], float]:
        """(embedding, rope inv_freq, q/k-norm gains; RoPE attention scaling)."""

    @abstractmethod
    def tokenizer_files(self) -> dict[str, str]: ...

    @abstractmethod
    def linear(self, op: str, x: torch.Tensor) -> torch.Tensor:
        """y~ = x~ W (+ b) computed by the cloud; x: [N, d_in] in the wire dtype."""

    def close(self) -> None:
        pass


class InProcessLinearBackend(LinearBackend):
    """Wraps a cloud_backend MaskedLinearService in the same process (duck-typed: no import of it)."""

    def __init__(self, service):
        self.service = service

    def manifest(self) -> Manifest:
        return Manifest.model_validate(self.service.manifest.model_dump())

    def public_tensors(self, op):
        return self.service.bases[op], self.service.recovery[op]

    def cvm_params(self):
        return dict(self.service.model.cvm_params), float(self.service.model.attention_scaling)

    def tokenizer_files(self):
        return dict(self.service.model.tokenizer_files)

    def linear(self, op, x):
        return self.service.linear(op, x)


class HttpLinearBackend(LinearBackend):
    """Talks protocol talaria/1 to `base_url` (e.g. http://cloud:8100) over one kept-alive connection."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0,
                 connect_timeout: float = 3.0, transport: httpx.BaseTransport | None = None):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )
        self._fingerprint: str | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CloudUnavailable(f"cloud backend at {self.base_url} timed out on {path}") from exc
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"cloud backend at {self.base_url} is unreachable: {exc}") from exc
        fp = resp.headers.get(FINGERPRINT_HEADER)
        if self._fingerprint is not None and fp is not None and fp != self._fingerprint:
            raise CloudUnavailable(
                f"cloud backend restarted with different weights or masking bases "
                f"(fingerprint {fp} != {self._fingerprint}); restart the proxy"
            )
        if resp.status_code >= 500:
            raise CloudUnavailable(f"cloud backend error {resp.status_code} on {path}: {_message(resp)}")
        if resp.status_code >= 400:
            raise CloudRejected(f"cloud backend rejected {path} ({resp.status_code}): {_message(resp)}")
        return resp

    def _tensors(self, path: str) -> tuple[dict[str, torch.Tensor], httpx.Response]:
        resp = self._request("GET", path)
        try:
            return decode_tensors(resp.content), resp
        except WireFormatError as exc:
            raise CloudRejected(f"cloud sent a malformed body for {path}: {exc}") from exc

    # -- LinearBackend ----------------------------------------------------------------------
    def manifest(self) -> Manifest:
        resp = self._request("GET", "/v1/manifest")
        manifest = Manifest.model_validate(resp.json())
        self._fingerprint = manifest.fingerprint
        return manifest

    def public_tensors(self, op):
        tensors, _ = self._tensors(f"/v1/recovery/{op}")
        return tensors["basis"], tensors["recovery"]

    def cvm_params(self):
        resp = self._request("GET", "/v1/cvm-params")
        tensors = decode_tensors(resp.content)
        return tensors, float(decode_metadata(resp.content).get("attention_scaling", 1.0))

    def tokenizer_files(self):
        return self._request("GET", "/v1/tokenizer").json()

    def linear(self, op, x):
        resp = self._request("POST", f"/v1/linear/{op}", content=encode_tensors({"x": x}),
                             headers={"content-type": MEDIA_TYPE})
        try:
            return decode_tensors(resp.content)["y"]
        except (WireFormatError, KeyError) as exc:
            raise CloudRejected(f"cloud sent a malformed answer for {op}: {exc}") from exc

    def ping(self) -> bool:
        try:
            return self._client.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._client.close()


def _message(resp: httpx.Response) -> str:
    try:
        return resp.json()["error"]["message"]
    except Exception:
        return resp.text[:200]


def wait_for_cloud(backend: HttpLinearBackend, timeout: float = 120.0) -> None:
    """Block until the cloud answers /health (it may still be loading the checkpoint)."""
    deadline = time.monotonic() + timeout
    while not backend.ping():
        if time.monotonic() > deadline:
            raise CloudUnavailable(f"cloud backend at {backend.base_url} not ready after {timeout:.0f}s")
        time.sleep(0.25)
