"""Cloud backend settings (YAML `configs/cloud.yaml`, env `TALARIA_CLOUD_*`, CLI flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALARIA_CLOUD_", extra="forbid")

    model: str = Field(..., description="HF checkpoint: local directory or hub id")
    host: str = "127.0.0.1"  # bind address
    port: int = Field(8100, ge=1, le=65535)
    # TCP port of the framed linear-call socket (the proxy's fastest transport); 0: any free port
    # (advertised in /health), null: off
    frame_port: int | None = Field(0, ge=0, le=65535)
    api_key: str | None = None  # bearer token the proxy must present (None: open)
    # TLS for the REST API and the frame socket: PEM certificate chain and private key (both or neither)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    device: str = "cpu"  # torch device for the weights and GEMMs, e.g. cuda:0
    # mixed: float64 wire, float32 GEMM on the mask-free complement of the public basis + float64 on
    # the basis (lossless like float32 inference); float64: everything float64; float32: lossy with masks
    compute_dtype: Literal["mixed", "float64", "float32"] = "mixed"
    # projected: answer x_perp W + b (the CVM adds the basis part; float32 answers under mixed);
    # full: answer x~ W + b (the CVM subtracts M_pvt R_pub)
    reply: Literal["projected", "full"] = "projected"
    mask_rank: int = Field(64, ge=1)  # default ReMO rank m of every op (capped at d_in - 1)
    mask_ranks: dict[str, int] = Field(default_factory=dict)  # per op kind ('lm_head') or op ('3.qkv')
    basis_seed: int = 0  # seed of the public bases M_pub (public by design)
    record_dir: str | None = None  # write every received call here (privacy audit input)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads (None: torch default)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _tls_pair(self) -> "CloudSettings":
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be set together")
        return self
