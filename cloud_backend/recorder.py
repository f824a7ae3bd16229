"""What an honest-but-curious cloud keeps: every masked input it received, plus the public parameters.

Layout of a record directory (the input of the privacy audit):
    public.json                 manifest (architecture, ops, ranks, basis seed, protocol)
    public_basis.safetensors    M_pub of every op, tensor name = op name ('3.qkv', 'lm_head')
    calls/000000042.safetensors tensor 'x' = the body as received; metadata layer, op, call
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
    def __init__(self, directory: str | Path, manifest: Manifest, bases: dict[str, torch.Tensor]):
        self.directory = Path(directory)
        self.calls_dir = self.directory / "calls"
        self.calls_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "public.json").write_text(json.dumps(manifest.model_dump(), indent=1))
        save_file({k: v.contiguous() for k, v in bases.items()}, str(self.directory / "public_basis.safetensors"))
        start = len(list(self.calls_dir.glob("*.safetensors")))  # append to an existing transcript
        self._counter = itertools.count(start)
        self._lock = threading.Lock()

    def record(self, key: OpKey, x: torch.Tensor) -> None:
        with self._lock:
            index = next(self._counter)
        meta = {"layer": "" if key.layer is None else str(key.layer), "op": key.op, "call": str(index)}
        save_file({"x": x.detach().cpu().contiguous()}, str(self.calls_dir / f"{index:09d}.safetensors"), metadata=meta)
