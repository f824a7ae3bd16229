"""How large one linear call may be, on every transport, from the ops' shapes and `max_rows`.

A call carries x [N, d_in] with N <= max_rows, in at most 8 bytes per element (the widest wire
dtype). Every byte limit follows from that, so a REST body, a WebSocket message and a frame are
refused (413) at the same call size, and the cloud never buffers more than one such call per
connection:

    frame payload      max_rows * d_in * itemsize           checked on the 16-byte header
    REST body          max_rows * d_in(op) * itemsize + slack   checked on Content-Length and while reading
    WebSocket message  max_rows * max d_in * itemsize + slack   uvicorn's ws_max_size (close 1009 beyond)

A proxy's scheduler sends at most `max_batch_tokens` rows per call, so it must not exceed the
cloud's `max_rows` (the defaults: 512 and 8192).
"""

from __future__ import annotations

from dataclasses import dataclass

from talaria_wire.frames import ITEMSIZE

DEFAULT_MAX_ROWS = 8192
BODY_SLACK = 1 << 16  # a safetensors blob's JSON header (names, dtype, shape, metadata) is far smaller


@dataclass(frozen=True)
class CallLimits:
    max_rows: int
    widths: dict[str, int]  # op name -> columns of its input tensor
    itemsize: int = max(ITEMSIZE.values())

    @classmethod
    def of(cls, service, max_rows: int | None = None) -> "CallLimits":
        kernel = getattr(service, "kernel", None)
        widths = {op.name: (kernel.input_dim(op.name) if kernel is not None else op.d_in) for op in service.manifest.ops}
        return cls(max_rows or getattr(service, "max_rows", None) or DEFAULT_MAX_ROWS, widths)

    @property
    def max_cols(self) -> int:
        return max(self.widths.values())

    def payload_bytes(self, op: str | None = None) -> int:
        """The largest tensor payload of a call to `op` (any op: None)."""
        return self.max_rows * (self.widths[op] if op is not None else self.max_cols) * self.itemsize

    def body_bytes(self, op: str | None = None) -> int:
        """The largest safetensors blob (REST body, WebSocket message) of a call to `op`."""
        return self.payload_bytes(op) + BODY_SLACK
