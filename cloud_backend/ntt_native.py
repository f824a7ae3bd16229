"""The negacyclic NTT on the cloud: ntt_native.c where it builds, talaria_wire.ntt (torch) otherwise.

The he source's re-randomisation runs three transforms of [P, N] per answer (u and e1 forward,
u b_pk back); in eager torch each butterfly stage is a few int64 `fmod` passes (a division per
element), ~5 ms per transform at N = 8192, P = 7 on this CPU, and that made the re-randomisation
the larger half of the cloud's pad work. The C transform is the same algorithm with Shoup
multiplications (no division) and gives the same residues (tests/cloud/test_ntt_native.py).
"""

from __future__ import annotations

import functools

import torch

from cloud_backend import native
from talaria_wire import ntt
from talaria_wire.ntt import NttTables


@functools.lru_cache(maxsize=8)
def _shoup(n: int, primes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """floor(s 2^32 / p) for every table value s (forward and inverse powers, N^-1)."""
    tab = ntt.tables(n, primes)
    p = tab.p  # [P, 1]

    def sh(values: torch.Tensor) -> torch.Tensor:
        return torch.div(values << 32, p, rounding_mode="floor").contiguous()  # values < 2^31: no overflow

    return {"psi": tab.psi_rev.contiguous(), "psi_sh": sh(tab.psi_rev), "psi_inv": tab.psi_inv_rev.contiguous(),
            "psi_inv_sh": sh(tab.psi_inv_rev), "n_inv": tab.n_inv.flatten().contiguous(),
            "n_inv_sh": sh(tab.n_inv).flatten().contiguous(), "primes": p.flatten().contiguous()}


def _native(a: torch.Tensor, tab: NttTables):
    return native.library() if a.device.type == "cpu" and a.dtype == torch.int64 else None


def _transform(a: torch.Tensor, tab: NttTables, inverse: bool) -> torch.Tensor:
    lib = _native(a, tab)
    if lib is None:
        return ntt.intt(a, tab) if inverse else ntt.ntt(a, tab)
    ntt._check(a, tab)
    t = _shoup(tab.n, tab.primes)
    out = a.contiguous().clone()
    shape = (out.data_ptr(), out.numel() // (len(tab.primes) * tab.n), len(tab.primes), tab.n)
    if inverse:
        lib.ntt_inverse(*shape, t["psi_inv"].data_ptr(), t["psi_inv_sh"].data_ptr(), t["primes"].data_ptr(),
                        t["n_inv"].data_ptr(), t["n_inv_sh"].data_ptr())
    else:
        lib.ntt_forward(*shape, t["psi"].data_ptr(), t["psi_sh"].data_ptr(), t["primes"].data_ptr())
    return out


def forward(a: torch.Tensor, tab: NttTables) -> torch.Tensor:
    """= talaria_wire.ntt.ntt(a, tab): coefficients [..., P, N] -> evaluations, a new tensor."""
    return _transform(a, tab, inverse=False)


def inverse(a: torch.Tensor, tab: NttTables) -> torch.Tensor:
    """= talaria_wire.ntt.intt(a, tab): evaluations [..., P, N] -> coefficients, a new tensor."""
    return _transform(a, tab, inverse=True)
