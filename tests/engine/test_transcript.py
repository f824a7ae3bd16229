"""What the cloud records is exactly what the CVM sent, and differs from x by exactly the mask."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from talaria_proxy.cloud_session import CloudSession
from talaria_proxy.schemes.base import COMPUTE
from talaria_proxy.schemes.remo import RemoMask
from talaria_proxy.runtime import build_runtime
from talaria_proxy.sampling import SamplingParams


class RecordingRemo(RemoMask):
    """ReMO that keeps the plaintext and the private coefficients of every call (test only)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.log = []

    def mask(self, op, x):
        payloads, coeff = super().mask(op, x)
        self.log.append((op, x.double(), payloads[COMPUTE].clone(), coeff.clone()))
        return payloads, coeff


def test_recorded_transcript_equals_sent_and_differs_by_exactly_the_mask(tiny_model, cloud_factory, tmp_path):
    record = tmp_path / "record"
    cloud = cloud_factory(tiny_model("qwen2"), "--record", str(record), "--mask-rank", "8")
    backend = CloudSession(cloud.url)
    rt = build_runtime(backend, "remo")
    spy = RecordingRemo(rt.manifest)
    for op in rt.linear.scheme.basis:
        spy.prepare(op, backend.public(op))
    rt.linear.scheme = spy

    async def go():
        await rt.engine.start()
        out = [ev async for ev in rt.engine.generate([5, 6, 7, 8], SamplingParams(max_tokens=3, temperature=0))]
        await rt.engine.stop()
        return out

    asyncio.run(go())
    backend.close()
    files = sorted((record / "calls").glob("*.safetensors"))
    assert len(files) == len(spy.log) == 3 * (4 * rt.manifest.arch.num_layers + 1)
    bases = load_file(str(record / "public_basis.safetensors"))
    for path, (op, x, x_masked, coeff) in zip(files, spy.log):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            received = f.get_tensor("x")
        assert f"{meta['layer']}.{meta['op']}".lstrip(".") == op
        assert torch.equal(received, x_masked)  # bit for bit what was sent
        delta = received - x
        assert delta.abs().max() > 1.0  # the cloud never saw x itself ...
        torch.testing.assert_close(delta, coeff @ bases[op], rtol=0, atol=1e-9)  # ... only x + M_pvt M_pub
    assert Path(record / "public.json").is_file()
