"""Readiness of the proxy: is the cloud backend answering?

`/health` is public and may be polled often (load balancers, Kubernetes probes), so the cloud is
pinged at most once per `min_interval` seconds, in a worker thread (the ping is a blocking
httpx call), and concurrent probes share one ping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable


class CloudHealth:
    def __init__(self, ping: Callable[[], bool], min_interval: float = 1.0):
        self.ping = ping
        self.min_interval = min_interval
        self._checked_at = float("-inf")
        self._up = False
        self._lock = asyncio.Lock()

    async def cloud_up(self) -> bool:
        if time.monotonic() - self._checked_at < self.min_interval:
            return self._up
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.min_interval:  # nobody refreshed it meanwhile
                try:
                    self._up = bool(await asyncio.to_thread(self.ping))
                except Exception:
                    self._up = False
                self._checked_at = time.monotonic()
        return self._up
