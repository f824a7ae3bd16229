"""Drive prompts through the real split (proxy <-HTTP-> cloud) and keep the cloud's transcript.

The setup is Talaria's (arXiv 2603.00196): the CVM proxy masks every linear-op input with ReMO and
the cloud computes on it; here the cloud also records every body it receives, which is exactly
the material an honest-but-curious cloud would mine ("Hidden No More", arXiv 2505.18332, shows
what intermediate states give away).

For one setting (masking scheme, ReMO rank m) the harness:
  1. starts `talaria cloud --model M --record DIR --mask-rank m --port P` as a subprocess;
  2. builds the proxy runtime in this process over HTTP (`HttpLinearBackend`, `build_runtime`);
  3. runs the prompts one at a time (max_running = 1, greedy, a few generated tokens each), so
     every model step carries exactly one sequence's rows in order;
  4. stops the cloud. The record directory is the attacker's input.
Ground truth stays on the harness side: a wrapper around the CVM model's `forward` logs the token
ids of every step's rows (plaintext the CVM has anyway), written to truth.json next to, not
inside, the record directory. It is used only for scoring.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from talaria_base.processes import ManagedProcess, free_port


@dataclass
class Setting:
    scheme: str  # 'none' or 'remo'
    rank: int  # --mask-rank given to the cloud (capped per op at d_in - 1 by the service)

    @property
    def label(self) -> str:
        return "none" if self.scheme == "none" else f"remo-m{self.rank}"


class CloudProcess(ManagedProcess):
    """A recording `talaria cloud` subprocess on a free port; output appended to `log_path`."""

    ready_timeout = 300.0
    stop_timeout = 20.0

    def __init__(self, model_dir: Path, record_dir: Path, rank: int, log_path: Path):
        self.port = free_port()
        super().__init__("cloud", ["--model", str(model_dir), "--record", str(record_dir), "--mask-rank", str(rank),
                                   "--port", str(self.port), "--log-level", "warning"],
                         url=f"http://127.0.0.1:{self.port}", log_path=log_path)


async def _drive(rt, prompt_ids: list[list[int]], max_tokens: int, progress) -> list[list[int]]:
    from talaria_proxy.sampling import SamplingParams

    await rt.engine.start()
    outputs = []
    try:
        for n, ids in enumerate(prompt_ids, 1):
            params = SamplingParams(max_tokens=max_tokens, temperature=0)
            out = []
            async for event in rt.engine.generate(ids, params):
                if event.error is not None:
                    raise event.error
                out.append(event.token.token_id)
            outputs.append(out)
            if progress and n % 25 == 0:
                progress(f"    {n}/{len(prompt_ids)} prompts")
    finally:
        await rt.engine.stop(drain_timeout=1.0)
    return outputs


def start_cloud(model_dir: Path, setting: Setting, workdir: Path) -> CloudProcess:
    """Launch the recording cloud of `setting` into workdir/record (it loads while we do other work)."""
    workdir.mkdir(parents=True, exist_ok=True)
    record_dir = workdir / "record"
    if record_dir.exists() and any((record_dir / "calls").glob("*")):
        raise FileExistsError(f"{record_dir} already holds a transcript; use an empty work directory")
    return CloudProcess(model_dir, record_dir, setting.rank, workdir / "cloud.log")


def collect(model_dir: Path, setting: Setting, prompts: list[str], workdir: Path, max_tokens: int = 4,
            progress=None, cloud: CloudProcess | None = None) -> tuple[Path, dict]:
    """Run `prompts` under `setting`; returns (record_dir, truth). truth['steps'][k] = token ids of
    the rows of model step k (= the k-th call of every block op). `cloud`: one from `start_cloud`
    for the same setting and workdir (default: start it now). The cloud is stopped on return."""
    from talaria_proxy.linear_backend import HttpLinearBackend
    from talaria_proxy.runtime import build_runtime
    from talaria_proxy.scheduler import SchedulerConfig

    cloud = cloud or start_cloud(model_dir, setting, workdir)
    record_dir = workdir / "record"
    t0 = time.monotonic()
    try:
        cloud.wait_ready()
        backend = HttpLinearBackend(cloud.url, timeout=120.0)
        rt = build_runtime(backend, setting.scheme, scheduler=SchedulerConfig(max_running=1, max_batch_tokens=4096))
        prompt_ids = [rt.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(len(ids) < 2 for ids in prompt_ids):
            raise ValueError("every prompt needs >= 2 tokens (a one-row call would read as a decode step)")
        steps: list[list[int]] = []
        forward = rt.model.forward

        def logged_forward(chunks):
            steps.append([t for c in chunks for t in c.token_ids])  # CVM-side plaintext, for scoring
            return forward(chunks)

        rt.model.forward = logged_forward
        outputs = asyncio.run(_drive(rt, prompt_ids, max_tokens, progress))
        backend.close()
    finally:
        cloud.stop()
    truth = {"setting": setting.label, "prompt_ids": prompt_ids, "outputs": outputs, "steps": steps,
             "seconds": time.monotonic() - t0}
    (workdir / "truth.json").write_text(json.dumps(truth))
    return record_dir, truth
