"""How linear calls travel to a cloud; see base.py for the seam."""

from talaria_proxy.transports.base import TRANSPORTS, CloudLink, LinearTransport, PendingCall, build_transport, connect, register

__all__ = ["TRANSPORTS", "CloudLink", "LinearTransport", "connect", "PendingCall", "build_transport", "register"]
