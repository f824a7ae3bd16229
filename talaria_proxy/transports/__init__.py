"""How linear calls travel to a cloud; see base.py for the seam."""

from talaria_proxy.transports.base import TRANSPORTS, LinearTransport, PendingCall, build_transport, register

__all__ = ["TRANSPORTS", "LinearTransport", "PendingCall", "build_transport", "register"]
