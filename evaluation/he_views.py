"""What the one cloud of `pad/he` holds, read the ways it could try: residues plus ciphertexts.

With the `he` pad source (shared/design/pads.md) the compute cloud receives, besides the online
residues u = x_bar - r mod t, every pad batch as RLWE ciphertexts: for each input coordinate j of
an op, ct_j = (a_j, b_j) with a_j expanded from an uploaded seed and b_j = -a_j s + e_j + Delta m_j
(mod q, RNS over the seven primes), m_j the pad values of N rows (coefficient packing), plus the
CVM's public key. Without the secret s the halves are uniform under ring-LWE.

The cloud's record keeps every upload (`cloud_backend.recorder`, calls with metadata kind 'he':
tensors 'b' [d, P, N] int32, 'seed', 'pk_seed', 'pk_b'); the proxy posts one batch once per range
of output columns, so a batch is read once (by its seed).

The attacker's best reading without s: decrypt as if s = 0, i.e. take b_j itself as the phase
and round it to the nearest multiple of Delta: a guess of r for the N slots of each batch, in slot
order (the CVM's slot permutation is secret; with s unknown every slot's guess is uniform anyway,
so any order is as good). The `cloud` view pairs those guesses with the residues as the colluding
view of pad/dealer pairs the dealer's pads: x_bar guess = lift(u + r_guess mod t), normalised.
`ciphertext_tests` checks the uploaded halves for uniformity per RNS prime.

Shape legend: d ciphertexts per batch (= pad_dim of the op), P primes, N slots (ring degree).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from evaluation import uniformity as U
from evaluation.attacks import unit_rows
from evaluation.transcript import Transcript
from talaria_wire.ring import PRIMES, T, lift


def load_uploads(record_dir: str | Path) -> dict[str, list[torch.Tensor]]:
    """{op: [b [d, P, N] int64 per batch, in the order the cloud received them]} from a record."""
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    seen: set[bytes] = set()
    for path in sorted((Path(record_dir) / "calls").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            if meta.get("kind") != "he":
                continue
            seed = bytes(fh.get_tensor("seed").tolist())
            if seed in seen:  # the same batch, asked for another range of output columns
                continue
            seen.add(seed)
            b = fh.get_tensor("b").to(torch.int64)
        name = meta["op"] if meta["layer"] == "" else f"{meta['layer']}.{meta['op']}"
        out.setdefault(name, []).append((int(meta["call"]), b))
    return {op: [b for _, b in sorted(items, key=lambda t: t[0])] for op, items in out.items()}


def guessed_pads(uploads: list[torch.Tensor]) -> torch.Tensor:
    """Decrypt every batch as if s = 0: r guesses [batches * N, d] int64 in [0, t)."""
    from talaria_proxy.pads.he_keys import decode

    return torch.cat([decode(b)[0].T for b in uploads])  # decode: [d, P, N] -> m [d, N]


def cloud_view(tr: Transcript, uploads: dict[str, list[torch.Tensor]]) -> Transcript:
    """The residues combined with the s = 0 decryptions of the uploads, read as unit rows."""
    d_in = {op.name: op.d_in for op in tr.manifest.ops}
    calls = {}
    for op, received in tr.calls.items():
        u = torch.cat(received)
        guess = guessed_pads(uploads[op])
        if guess.shape[0] < u.shape[0] or guess.shape[1] != u.shape[1]:
            raise ValueError(f"op {op}: {list(guess.shape)} pad guesses for {list(u.shape)} residues")
        x_guess = lift(torch.remainder(u + guess[: u.shape[0]], T))[:, : d_in[op]].double()
        calls[op] = list(unit_rows(x_guess).split([c.shape[0] for c in received]))
    return Transcript(tr.manifest, {}, calls, scale_free=True, mask="pad")


def ciphertext_tests(uploads: dict[str, list[torch.Tensor]], bins: int = 16, max_per_prime: int = 4096) -> dict:
    """Chi-square of the uploaded b halves per RNS prime: one test per ciphertext (its N
    coefficients), p-values pooled per prime (at most `max_per_prime` ciphertexts, spread over ops)."""
    halves = [b for bs in uploads.values() for b in bs]  # [d, P, N] each
    cts = torch.cat(halves) if halves else torch.empty(0, len(PRIMES), 0, dtype=torch.int64)  # [C, P, N]
    if cts.shape[0] > max_per_prime:
        cts = cts[torch.linspace(0, cts.shape[0] - 1, max_per_prime).long()]
    per_prime = {}
    pooled = []
    for i, p in enumerate(PRIMES):
        _, pv = U.chi_square(cts[:, i, :].T.contiguous(), p, bins)  # [N, C]: a column per ciphertext
        per_prime[str(p)] = U.p_summary(pv)
        pooled.append(pv)
    summary = U.p_summary(torch.cat(pooled)) if pooled else {}
    batches = sum(map(len, uploads.values()))
    note = (f"uploaded ciphertext halves: {batches} batches, {cts.shape[0]} ciphertexts x {len(PRIMES)} primes "
            f"tested ({cts.shape[-1]} coefficients each, {bins} bins): p<0.01 in "
            f"{100 * summary.get('frac_p_below_0.01', float('nan')):.1f}%, KS p {summary.get('ks_p', float('nan')):.2f}; "
            "from the cloud's own record")
    return {"batches": batches, "ciphertexts": int(cts.shape[0]), "coefficients": int(cts.shape[-1]), "bins": bins,
            "pooled": summary, "per_prime": per_prime, "note": note}
