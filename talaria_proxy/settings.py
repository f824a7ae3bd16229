"""Proxy settings (YAML `configs/proxy.yaml`, env `TALARIA_PROXY_*`, CLI flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALARIA_PROXY_", extra="forbid")

    cloud_url: str = "http://127.0.0.1:8100"  # base URL of the cloud backend
    cloud_api_key: str | None = None  # bearer token presented to the cloud
    cloud_ca_file: str | None = None  # PEM CA bundle trusted for an https cloud_url (None: the system's CAs)
    cloud_timeout: float = Field(30.0, gt=0)  # seconds per cloud call before the request fails (502/503)
    # how linear calls travel (setup is always REST): tcp = raw frames on the cloud's frame socket,
    # websocket = binary messages on one WebSocket, http = one POST per call
    cloud_transport: Literal["tcp", "websocket", "http"] = "tcp"
    cloud_wait: float = Field(120.0, ge=0)  # seconds to wait at start for the cloud to come up
    host: str = "127.0.0.1"  # bind address of the OpenAI-compatible API
    port: int = Field(8000, ge=1, le=65535)
    served_model_name: str | None = None  # model id in /v1/models (default: the cloud's model name)
    scheme: Literal["remo", "none"] = "remo"  # masking scheme; 'none' exposes plaintext (audit only)
    mask_scale: float = Field(10.0, gt=0)  # ReMO mask norm relative to each row's norm
    api_keys: list[str] = Field(default_factory=list)  # accepted client keys (empty: no auth)
    cors_origins: list[str] = Field(default_factory=list)  # allowed CORS origins (empty: CORS off)
    max_batch_tokens: int = Field(512, ge=1)  # rows per engine step (decode tokens + prefill chunk)
    max_running: int = Field(64, ge=1)  # sequences decoding at once
    max_waiting: int = Field(256, ge=0)  # queued requests before 429
    batch_wait_ms: float = Field(3.0, ge=0, le=1000)  # an idle engine gathers requests arriving this close together
    max_model_len: int | None = Field(None, ge=1)  # context window (default: the model's)
    max_n: int = Field(8, ge=1)  # largest `n` accepted
    request_timeout: float = Field(600.0, gt=0)  # seconds before a request is aborted
    shutdown_drain: float = Field(30.0, ge=0)  # seconds to finish in-flight requests on shutdown
    threads: int | None = Field(None, ge=1)  # torch intra-op threads in the CVM (None: torch default)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
