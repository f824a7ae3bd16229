"""What an honest-but-curious cloud keeps: every masked input it received, plus the public parameters.

Layout of a record directory (the input of the privacy audit):
    public.json                 manifest (architecture, ops, ranks, basis seed, protocol)
    public_basis.safetensors    remo: M_pub of every op, tensor name = op name ('3.qkv', 'lm_head')
    public.safetensors          every public per-op tensor, named '<op>/<name>' ('3.qkv/col_exp')
    calls/000000042.safetensors tensor 'x' = the body as received; metadata layer, op, call
                                (a dealer's calls: tensor 'seed' [32] uint8, metadata rows)
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import torch
from safetensors.torch import save_file

from talaria_wire import Manifest, OpKey


class CallRecorder:
    def __init__(self, directory: str | Path, manifest: Manifest, public: dict[str, dict[str, torch.Tensor]]):
        self.directory = Path(directory)
        self.calls_dir = self.directory / "calls"
        self.calls_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "public.json").write_text(json.dumps(manifest.model_dump(), indent=1))
        bases = {op: t["basis"].contiguous() for op, t in public.items() if "basis" in t}
        if bases:
            save_file(bases, str(self.directory / "public_basis.safetensors"))
        flat = {f"{op}/{name}": t.contiguous() for op, ts in public.items() for name, t in ts.items()}
        save_file(flat, str(self.directory / "public.safetensors"))
        start = len(list(self.calls_dir.glob("*.safetensors")))  # append to an existing transcript
        self._counter = itertools.count(start)
        self._lock = threading.Lock()

    def record(self, key: OpKey, x: torch.Tensor) -> None:
        self._save(key, {"x": x.detach().cpu().contiguous()}, {})

    def record_seed(self, key: OpKey, seed: bytes, rows: int) -> None:
        """A dealer's call: the seed it was sent and the number of pad rows asked for."""
        self._save(key, {"seed": torch.frombuffer(bytearray(seed), dtype=torch.uint8)}, {"rows": str(rows)})

    def _save(self, key: OpKey, tensors: dict[str, torch.Tensor], extra: dict[str, str]) -> None:
        with self._lock:
            index = next(self._counter)
        meta = {"layer": "" if key.layer is None else str(key.layer), "op": key.op, "call": str(index), **extra}
        save_file(tensors, str(self.calls_dir / f"{index:09d}.safetensors"), metadata=meta)
