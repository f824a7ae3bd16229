"""`tcp` (default): raw frames on the cloud's frame socket (talaria_wire/frames.py, frame_client.py).

One call in flight per connection; a failed or abandoned call drops the socket, so a late answer
can never be read as the next call's. The frame port is read from /health at every (re)connect.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from talaria_proxy.errors import CloudRejected
from talaria_proxy.frame_client import FrameLink
from talaria_proxy.transports.base import LinearTransport, PendingCall, register


@register
class FrameTransport(LinearTransport):
    name = "tcp"

    def __init__(self, session):
        self.session = session
        self._lock = threading.Lock()  # one call in flight per socket
        self._link = FrameLink(self._address, session.api_key, session.check_fingerprint,
                               connect_timeout=session.connect_timeout, timeout=session.timeout, tls=session.tls)

    def _address(self) -> tuple[str, int]:
        port = self.session.health().get("frame_port")
        if not port:
            raise CloudRejected("the cloud backend has no frame socket (its frame_port is off); "
                                "set cloud_transport to websocket or http, or enable it on the cloud")
        return urlsplit(self.session.base_url).hostname or "127.0.0.1", int(port)

    def begin(self, op, tensor):
        if not self.session.op_index:
            self.session.manifest()  # op names -> frame op indices
        index = self.session.op_index.get(op)
        if index is None:
            raise CloudRejected(f"unknown op {op!r}: not in the cloud's manifest")
        self._lock.acquire()  # released by the PendingCall
        try:
            self._link.send(index, tensor)
        except BaseException:
            self._lock.release()
            raise
        return PendingCall(lambda: self._link.receive(op), self._end)

    def _end(self, ok: bool) -> None:
        try:
            if not ok:
                self._link.drop()
        finally:
            self._lock.release()

    def close(self):
        with self._lock:
            self._link.drop()
