"""The pad/he cloud's view on real RLWE encryptions: uniform halves, useless s = 0 decryptions."""

from __future__ import annotations

import torch

from evaluation import he_views as H
from talaria_proxy.pads import he_keys
from talaria_wire.he_params import N
from talaria_wire.ring import T


def _pads(d: int, seed: int) -> torch.Tensor:
    return torch.randint(0, T, (d, N), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)


def test_ciphertext_halves_look_uniform_and_an_unmasked_encoding_does_not():
    keys = he_keys.HeKeys.fresh()
    m = _pads(6, 0)
    enc = he_keys.encrypt(keys, m)
    tests = H.ciphertext_tests({"0.qkv": [enc.b]})
    assert tests["ciphertexts"] == 6 and set(tests["per_prime"]) == {str(p) for p in he_keys.PRIMES}
    assert tests["pooled"]["ks_p"] > 1e-3 and tests["pooled"]["frac_p_below_0.01"] < 0.2
    # control: the same encoding without the mask -a s (a zero secret) is Delta m + e: small mod Delta's primes
    zero = he_keys.HeKeys(N, torch.zeros_like(keys.s_hat), keys.pk_seed, keys.pk_b)
    plain = he_keys.encrypt(zero, m)
    assert H.ciphertext_tests({"0.qkv": [plain.b]})["pooled"]["frac_p_below_0.01"] > 0.6


def test_decrypting_as_if_s_were_zero_gives_nothing_and_the_key_gives_the_pads():
    keys = he_keys.HeKeys.fresh()
    m = _pads(4, 1)
    enc = he_keys.encrypt(keys, m)
    guess = H.guessed_pads([enc.b])  # [N, d]
    assert guess.shape == (N, 4) and bool(((guess >= 0) & (guess < T)).all())
    assert (guess == m.T).float().mean() < 1e-3
    a_hat = he_keys.expand_uniform(enc.seed, "a", 4, N)
    assert torch.equal(he_keys.decrypt(keys, a_hat, enc.b)[0], m)  # the secret key does decrypt them


def test_uploads_are_read_from_the_record_once_per_batch(tmp_path):
    """The record keeps each POST /v1/he/{op} as he_kernel.parse_request writes it: one file per
    column range, so one batch appears once per range; the residues of online calls are skipped."""
    from cloud_backend.recorder import CallRecorder
    from evaluation.transcript import load_transcript
    from talaria_wire import ArchSpec, Manifest, OpKey, OpSpec

    arch = ArchSpec(family="qwen2", hidden_size=16, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=16,
                    intermediate_size=32, vocab_size=64, rms_norm_eps=1e-6, max_position_embeddings=64)
    manifest = Manifest(protocol="talaria/1", model_name="m", scheme="pad", fingerprint="f", wire_dtype="int64",
                        arch=arch, ops=[OpSpec(name="0.qkv", d_in=16, d_out=48, bias=True, pad_dim=17)])
    rec = CallRecorder(tmp_path, manifest, {})
    b = torch.randint(0, 1000, (3, 7, N), dtype=torch.int32)
    for seed, cols in ((1, "0:8"), (1, "8:16"), (2, "0:8")):
        body = {"b": b + seed, "seed": torch.full((32,), seed, dtype=torch.uint8),
                "pk_seed": torch.zeros(32, dtype=torch.uint8), "pk_b": torch.zeros(7, N, dtype=torch.int32)}
        rec._save(OpKey.parse("0.qkv"), body, {"kind": "he", "cols": cols})
        rec.record(OpKey.parse("0.qkv"), torch.zeros(2, 17, dtype=torch.int64))
    uploads = H.load_uploads(tmp_path)
    assert list(uploads) == ["0.qkv"] and len(uploads["0.qkv"]) == 2
    assert torch.equal(uploads["0.qkv"][1], (b + 2).long())
    assert [c.shape[0] for c in load_transcript(tmp_path).calls["0.qkv"]] == [2, 2, 2]


def test_the_clouds_view_pairs_residues_with_useless_guesses():
    from evaluation.attacks import nearest
    from evaluation.transcript import Transcript
    from talaria_proxy.schemes.pad import encode_rows
    from talaria_wire import ArchSpec, Manifest, OpSpec

    arch = ArchSpec(family="qwen2", hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                    intermediate_size=16, vocab_size=32, rms_norm_eps=1e-6, max_position_embeddings=64)
    manifest = Manifest(protocol="talaria/1", model_name="m", scheme="pad", fingerprint="f", wire_dtype="int64",
                        arch=arch, ops=[OpSpec(name="0.qkv", d_in=8, d_out=24, bias=True, pad_dim=9)])
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(32, 8, generator=gen)
    ids = torch.randint(0, 32, (40,), generator=gen)
    x_bar, _ = encode_rows(table[ids], 26, bias=True)  # [40, 9]
    r = _pads(9, 4)  # [9, N]: the batch's pad values; slots 0..39 pad the rows in order
    u = torch.remainder(x_bar - r[:, :40].T, T)
    enc = he_keys.encrypt(he_keys.HeKeys.fresh(), r)
    tr = Transcript(manifest, {}, {"0.qkv": [u[:30], u[30:]]})
    view = H.cloud_view(tr, {"0.qkv": [enc.b]})
    obs = view.observations("0.qkv")
    assert view.scale_free and obs.shape == (40, 8) and [c.shape[0] for c in view.calls["0.qkv"]] == [30, 10]
    assert (nearest(obs, table.double(), normalize=True) == ids).float().mean() < 0.3
