"""Cloud backend settings (YAML `configs/cloud.yaml`, env `TALARIA_CLOUD_*`, CLI flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALARIA_CLOUD_", extra="forbid")

    model: str = Field(..., description="HF checkpoint: local directory or hub id")
    host: str = Field("127.0.0.1", description="bind address of the REST API and the frame socket")
    port: int = Field(8100, ge=1, le=65535, description="TCP port of the REST API")
    frame_port: int | None = Field(0, ge=0, le=65535, description="TCP port of the framed linear-call socket "
                                   "(the proxy's fastest transport); 0: any free port, advertised in /health; "
                                   "null (YAML/env only): off")
    api_key: str | None = Field(None, description="bearer token the proxy must present (unset: open)")
    ssl_certfile: str | None = Field(None, description="PEM certificate chain: serve the REST API and the frame "
                                     "socket over TLS (with ssl_keyfile)")
    ssl_keyfile: str | None = Field(None, description="PEM private key of ssl_certfile (both or neither)")
    device: str = Field("cpu", description="torch device for the weights and GEMMs, e.g. cuda:0")
    scheme: Literal["remo", "pad"] = Field(
        "remo", description="what linear calls compute: remo (ReMO float kernels, the paper's scheme; the "
                            "proxy's remo and none) or pad (the exact ring kernel and the pad dealer; the "
                            "proxy's pad scheme, as compute cloud or as dealer)")
    compute_dtype: Literal["mixed", "float64", "float32"] = Field(
        "mixed", description="mixed: float64 wire, float32 GEMM on the mask-free complement of the public basis "
                             "+ float64 on the basis (lossless like float32 inference); float64: everything "
                             "float64; float32: lossy with large masks")
    reply: Literal["projected", "full"] = Field(
        "projected", description="projected: answer x_perp W + b (the CVM adds the basis part; float32 answers "
                                 "under mixed); full: answer x~ W + b (the CVM subtracts M_pvt R_pub)")
    mask_rank: int = Field(64, ge=1, description="default ReMO rank m of every op (capped at d_in - 1)")
    mask_ranks: dict[str, int] = Field(
        default_factory=dict, description="ReMO rank per op kind ('lm_head') or op ('3.qkv'), over mask_rank")
    basis_seed: int = Field(0, description="seed of the public bases M_pub (public by design)")
    record_dir: str | None = Field(None, description="write every received call here (privacy audit input)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (unset: torch's default)")
    max_rows: int = Field(8192, ge=1, description="rows per linear call on every transport (413 beyond); the byte "
                                                  "limits of bodies, WebSocket messages and frames follow from it")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    @model_validator(mode="after")
    def _tls_pair(self) -> "CloudSettings":
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be set together")
        return self
