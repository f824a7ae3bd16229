"""The transport seam: how one linear call reaches a cloud and its answer comes back.

    pending = transport.begin(op, tensor)     # sent; the CVM may compute meanwhile
    answer = pending.result()                 # or pending.abandon() on an error in between

Implementations register by name (`register`) and are built from a `CloudSession` (which owns
REST, the manifest, the fingerprint and TLS): `tcp` raw frames (frames.py), `websocket`, `http`
one POST per call, and `in-process` (in_process.py), the fake that tests and benchmarks use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch


class PendingCall:
    """A linear call on its way: `result()` waits for the answer; `abandon()` gives it up (on an
    error in the CVM's own work meanwhile). Exactly one of the two must be called."""

    def __init__(self, finish: Callable[[], torch.Tensor], release: Callable[[bool], None] | None = None):
        self._finish = finish
        self._release = release
        self._open = True

    def result(self) -> torch.Tensor:
        ok = False
        try:
            y = self._finish()
            ok = True
            return y
        finally:
            self._close(ok)

    def abandon(self) -> None:
        self._close(False)

    def _close(self, ok: bool) -> None:
        if self._open:
            self._open = False
            if self._release is not None:
                self._release(ok)


class LinearTransport(ABC):
    name: str = ""

    @abstractmethod
    def begin(self, op: str, tensor: torch.Tensor) -> PendingCall:
        """Send the call for op (tensor [N, d] in the scheme's wire dtype)."""

    def linear(self, op: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.begin(op, tensor).result()

    def close(self) -> None:
        pass


TRANSPORTS: dict[str, Callable[..., LinearTransport]] = {}


def register(cls: type[LinearTransport]) -> type[LinearTransport]:
    TRANSPORTS[cls.name] = cls
    return cls


def build_transport(name: str, session) -> LinearTransport:
    """The transport `name` over `session` (a CloudSession)."""
    from talaria_proxy.transports import frames, http, websocket  # noqa: F401  (they register)

    if getattr(session, "mocked", False):
        name = "http"  # a mocked httpx transport has no sockets behind it: POSTs only
    try:
        return TRANSPORTS[name](session)
    except KeyError:
        raise ValueError(f"unknown cloud transport {name!r}; expected one of {', '.join(sorted(TRANSPORTS))}") from None


class CloudLink:
    """A session and a transport to one cloud, for tools that make raw linear calls (tests,
    benchmarks, the audit): `link.manifest()`, `link.linear(op, x)`, `link.close()`."""

    def __init__(self, session, transport: LinearTransport):
        self.session = session
        self.transport = transport

    def manifest(self):
        return self.session.manifest()

    def linear(self, op: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.transport.linear(op, tensor)

    def begin(self, op: str, tensor: torch.Tensor) -> PendingCall:
        return self.transport.begin(op, tensor)

    def close(self) -> None:
        self.transport.close()
        self.session.close()


def connect(base_url: str, api_key: str | None = None, *, transport: str = "tcp", **session_options) -> CloudLink:
    """A CloudLink to the cloud at base_url over the named transport."""
    from talaria_proxy.cloud_session import CloudSession

    session = CloudSession(base_url, api_key, **session_options)
    return CloudLink(session, build_transport(transport, session))
