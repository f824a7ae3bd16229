"""`http`: one POST per linear call (safetensors bodies); the slowest transport, always available."""

from __future__ import annotations

from talaria_proxy.errors import CloudRejected
from talaria_proxy.transports.base import LinearTransport, PendingCall, register


@register
class HttpTransport(LinearTransport):
    name = "http"

    def __init__(self, session):
        self.session = session

    def begin(self, op, tensor):
        answer = self.session.post_tensors(f"/v1/linear/{op}", {"x": tensor})
        if "y" not in answer:
            raise CloudRejected(f"cloud sent a malformed answer for {op}: no tensor 'y'")
        return PendingCall(lambda: answer["y"])
