"""Proxy settings (YAML `configs/proxy.yaml`, env `TALARIA_PROXY_*`, CLI flags)."""

from __future__ import annotations

from typing import Literal

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALARIA_PROXY_", extra="forbid")

    cloud_url: str = Field("http://127.0.0.1:8100", description="base URL of the cloud backend")
    cloud_api_key: str | None = Field(None, description="bearer token presented to the cloud (its api_key)")
    cloud_ca_file: str | None = Field(
        None, description="PEM CA bundle trusted for an https cloud_url (unset: the system's CAs)")
    cloud_timeout: float = Field(30.0, gt=0, description="seconds per cloud call before the request fails (502/503)")
    cloud_transport: Literal["tcp", "websocket", "http"] = Field(
        "tcp", description="how linear calls travel (set-up is always REST): tcp = raw frames on the cloud's "
                           "frame socket, websocket = binary messages on one WebSocket, http = one POST per call")
    cloud_wait: float = Field(120.0, ge=0, description="seconds to wait at start for the cloud to come up")
    host: str = Field("127.0.0.1", description="bind address of the OpenAI-compatible API")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the OpenAI-compatible API")
    served_model_name: str | None = Field(
        None, description="model id in /v1/models (unset: the cloud's model name)")
    chat_template: str | None = Field(
        None, description="file with a Jinja chat template that replaces the checkpoint's (unset: its own)")
    scheme: Literal["remo", "none", "pad"] = Field(
        "remo", description="how linear inputs are protected: pad (one-time pads in an exact ring; private, "
                            "needs a pad cloud and a pad source), remo (the paper's fast masks; a cloud that "
                            "knows its model recovers the text), none (plaintext; audits only)")
    pad_source: Literal["dealer", "he"] = Field(
        "dealer", description="pad scheme: where the pad products come from: dealer (a second pad cloud that "
                              "must not collude with the compute cloud) or he (the compute cloud under RLWE)")
    dealer_url: str | None = Field(None, description="pad source dealer: base URL of the dealer cloud")
    dealer_api_key: str | None = Field(None, description="bearer token presented to the dealer cloud")
    pad_pool_mb: int = Field(256, ge=1, description="pad scheme: memory for pads made ahead, in MiB (all ops)")
    pad_timeout: float = Field(
        10.0, gt=0, description="pad scheme: seconds a call may wait for pads before its request fails (503)")
    pad_warm_wait: float = Field(
        600.0, ge=0, description="pad scheme: seconds to wait at start for a warm pad pool before serving (the he "
                                 "source's first batches take minutes on a CPU cloud)")
    pad_block_rows: int = Field(32, ge=1, le=4096, description="pad source dealer: pad rows per op per dealer block")
    mask_scale: float = Field(10.0, gt=0, description="ReMO mask norm relative to each row's norm")
    api_keys: list[str] = Field(default_factory=list, description="accepted client keys (none given: no auth)")
    cors_origins: list[str] = Field(
        default_factory=list, description="allowed CORS origin, e.g. http://localhost:3000 or '*' (none given: CORS off)")
    max_batch_tokens: int = Field(512, ge=1, description="rows per engine step (decode tokens + prefill chunk)")
    max_running: int = Field(64, ge=1, description="sequences decoding at once")
    max_waiting: int = Field(256, ge=0, description="queued requests before 429")
    batch_wait_ms: float = Field(3.0, ge=0, le=1000, description="an idle engine gathers requests arriving this "
                                 "many ms apart into one first step (0: off)")
    max_model_len: int | None = Field(None, ge=1, description="context window (unset: the model's)")
    max_n: int = Field(8, ge=1, description="largest `n` accepted")
    request_timeout: float = Field(600.0, gt=0, description="seconds before a request is aborted")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="largest request body accepted (413 beyond), "
                                "checked before it is parsed")
    shutdown_drain: float = Field(30.0, ge=0, description="seconds to finish in-flight requests on shutdown")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads in the CVM (unset: torch's default)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    @field_validator("chat_template")
    @classmethod
    def _chat_template_is_readable(cls, path: str | None) -> str | None:
        # Checked at start-up, so a typo stops the proxy with one line instead of failing every chat.
        if path is not None and not Path(path).is_file():
            raise ValueError(f"chat template file not found: {path}")
        return path
