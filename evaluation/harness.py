"""Drive prompts through the real split (proxy <-> recording clouds) and keep the clouds' transcripts.

The setup is Talaria's (arXiv 2603.00196): the CVM proxy masks every linear-op input and the cloud
computes on it; here every cloud also records every body it receives, which is exactly the material
an honest-but-curious cloud would mine ("Hidden No More", arXiv 2505.18332, shows what intermediate
states give away).

For one setting the harness:
  1. starts the clouds as subprocesses: `talaria cloud --model M --record DIR ...`
     - none / remo: one cloud (`--mask-rank m`), record in workdir/record;
     - pad/dealer: two `--scheme pad` clouds, the compute cloud (workdir/record) and the pad
       dealer (workdir/dealer), which must not collude; each records only what it receives;
     - pad/he: one `--scheme pad` cloud that computes online and makes the pads under RLWE (its
       record holds the online residues and every ciphertext upload);
  2. builds the proxy runtime in this process (`CloudSession`, `build_runtime`, tcp frames);
  3. runs the prompts one at a time (max_running = 1, greedy, a few generated tokens each), so
     every model step carries exactly one sequence's rows in order;
  4. stops the clouds. The record directories are the attackers' input.
Ground truth stays on the harness side, next to, not inside, the record directories: a wrapper
around the CVM model's `forward` logs the token ids of every step's rows (truth.json), and for
`pad` a test-only wrapper of the scheme's `mask` logs the fixed-point rows x_bar the CVM encoded
(xbar.safetensors; never in production). Both are used only for scoring and the uniformity test.
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
    scheme: str  # 'none', 'remo' or 'pad'
    rank: int = 16  # --mask-rank given to a remo cloud (capped per op at d_in - 1 by the service)
    pad_source: str = "dealer"  # pad: 'dealer' (second cloud) or 'he' (RLWE on the compute cloud)

    @property
    def label(self) -> str:
        if self.scheme == "pad":
            return f"pad/{self.pad_source}"
        return "none" if self.scheme == "none" else f"remo-m{self.rank}"

    @property
    def dirname(self) -> str:
        return self.label.replace("/", "-")

    def cloud_args(self) -> list[str]:
        return ["--scheme", "pad"] if self.scheme == "pad" else ["--mask-rank", str(self.rank)]


class CloudProcess(ManagedProcess):
    """A recording `talaria cloud` subprocess on a free port; output appended to `log_path`."""

    ready_timeout = 300.0
    stop_timeout = 20.0

    def __init__(self, model_dir: Path, record_dir: Path, extra: list[str], log_path: Path):
        self.port = free_port()
        super().__init__("cloud", ["--model", str(model_dir), "--record", str(record_dir), *extra,
                                   "--port", str(self.port), "--log-level", "warning"],
                         url=f"http://127.0.0.1:{self.port}", log_path=log_path)


@dataclass
class Clouds:
    """The clouds of one setting: the compute cloud, and the pad dealer where the setting has one."""

    compute: CloudProcess
    dealer: CloudProcess | None = None

    def all(self) -> list[CloudProcess]:
        return [c for c in (self.compute, self.dealer) if c is not None]

    def wait_ready(self) -> None:
        for c in self.all():
            c.wait_ready()

    def stop(self) -> None:
        for c in self.all():
            c.stop()


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


def start_cloud(model_dir: Path, setting: Setting, workdir: Path) -> Clouds:
    """Launch the recording clouds of `setting` into workdir (they load while we do other work)."""
    workdir.mkdir(parents=True, exist_ok=True)
    names = ["record", "dealer"] if setting.label == "pad/dealer" else ["record"]
    for name in names:
        if (workdir / name).exists() and any((workdir / name / "calls").glob("*")):
            raise FileExistsError(f"{workdir / name} already holds a transcript; use an empty work directory")
    procs = [CloudProcess(model_dir, workdir / name, setting.cloud_args(), workdir / f"{name}.log") for name in names]
    return Clouds(*procs)


def _log_xbar(rt, ops: set[str], sink: dict[str, list]) -> None:
    """Test-only: keep the x_bar the pad scheme encodes for each call of `ops` (CVM-side truth)."""
    from talaria_proxy.schemes.pad import encode_rows

    scheme = rt.linear.scheme
    mask = scheme.mask
    specs = {op.name: op for op in rt.manifest.ops}

    def logged_mask(op, x):
        if op in ops:  # encode_rows is deterministic: the same x_bar the scheme sends padded
            sink.setdefault(op, []).append(encode_rows(x, specs[op].w_norm_bits, specs[op].bias, specs[op].bias_bits)[0])
        return mask(op, x)

    scheme.mask = logged_mask


def collect(model_dir: Path, setting: Setting, prompts: list[str], workdir: Path, max_tokens: int = 4,
            progress=None, cloud: Clouds | None = None, xbar_ops: list[str] | None = None) -> tuple[Path, dict]:
    """Run `prompts` under `setting`; returns (record_dir, truth). truth['steps'][k] = token ids of
    the rows of model step k (= the k-th call of every block op). `cloud`: from `start_cloud` for
    the same setting and workdir (default: start them now); stopped on return. `xbar_ops` (pad):
    the ops whose x_bar is logged to workdir/xbar.safetensors (None: every block op)."""
    import torch
    from safetensors.torch import save_file

    from talaria_proxy.cloud_session import CloudSession
    from talaria_proxy.runtime import build_runtime
    from talaria_proxy.scheduler import SchedulerConfig

    clouds = cloud or start_cloud(model_dir, setting, workdir)
    record_dir = workdir / "record"
    t0 = time.monotonic()
    xbar: dict[str, list] = {}
    rt = None
    try:
        clouds.wait_ready()
        session = CloudSession(clouds.compute.url, timeout=120.0)
        options = {}
        if setting.scheme == "pad":
            dealer = None if clouds.dealer is None else CloudSession(clouds.dealer.url, timeout=120.0, role="pad dealer")
            options = {"dealer": dealer, "pad_source": setting.pad_source, "pad_pool_bytes": 16 << 20,
                       "pad_timeout": 3600.0}  # he bootstraps 2 batches per op first
        rt = build_runtime(session, setting.scheme, scheduler=SchedulerConfig(max_running=1, max_batch_tokens=4096),
                           **options)
        prompt_ids = [rt.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(len(ids) < 2 for ids in prompt_ids):
            raise ValueError("every prompt needs >= 2 tokens (a one-row call would read as a decode step)")
        if setting.scheme == "pad":
            block = [op.name for op in rt.manifest.ops if op.name != "lm_head"]
            _log_xbar(rt, set(xbar_ops or block), xbar)
        steps: list[list[int]] = []
        forward = rt.model.forward

        def logged_forward(chunks):
            steps.append([t for c in chunks for t in c.token_ids])  # CVM-side plaintext, for scoring
            return forward(chunks)

        rt.model.forward = logged_forward
        outputs = asyncio.run(_drive(rt, prompt_ids, max_tokens, progress))
    finally:
        if rt is not None:
            rt.close()
        clouds.stop()
    if xbar:
        save_file({op: torch.cat(rows) for op, rows in xbar.items()}, str(workdir / "xbar.safetensors"))
    truth = {"setting": setting.label, "prompt_ids": prompt_ids, "outputs": outputs, "steps": steps,
             "seconds": time.monotonic() - t0}
    (workdir / "truth.json").write_text(json.dumps(truth))
    return record_dir, truth
