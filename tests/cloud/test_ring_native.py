"""The native ring kernel (ring_native.c: W_bar held in float32, limb products in float64) is exact:
it equals Python-integer arithmetic at the bounds, the BLAS kernel on random inputs and on column
views, with one thread or several; without a compiler the cloud says why and keeps BLAS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from cloud_backend import ring_native
from cloud_backend.ring_kernel import NativeWeights, column_range, dense_weights, prepare_weights, ring_matmul
from talaria_wire.ring import HALF_T, T, W_BITS

WORST_RESIDUES = [0, 1, HALF_T - 1, HALF_T, HALF_T + 1, T - 2, T - 1]

# with a C compiler on PATH the kernel must build (a build failure fails these tests)
pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
                                reason="no C compiler: the cloud serves with the BLAS kernel")


def python_matmul_mod_t(u, w) -> list[list[int]]:
    ul, cols = u.tolist(), list(zip(*[[int(v) for v in row] for row in w.tolist()]))
    return [[sum(a * b for a, b in zip(row, col)) % T for col in cols] for row in ul]


def worst_weights(d: int, o: int) -> torch.Tensor:
    w = torch.full((d, o), float(2**W_BITS), dtype=torch.float64)
    w[:, 1] = -(2.0**W_BITS)
    w[::3, 2] = -(2.0**W_BITS)
    w[:, 3] = torch.arange(d, dtype=torch.float64) - d // 2
    return w


@pytest.mark.parametrize("d", [1, 65, 897, 1024, 4865])
def test_worst_case_inputs_are_exact(d):
    rows = [[r] * d for r in WORST_RESIDUES]
    rows.append([HALF_T if j % 2 else HALF_T + 1 for j in range(d)])  # digits at both ends of their range
    u = torch.tensor(rows, dtype=torch.int64)
    w = worst_weights(d, 70)  # two column blocks, the second cut
    nw = prepare_weights(w)
    assert isinstance(nw, NativeWeights)
    assert ring_matmul(u, nw).tolist() == python_matmul_mod_t(u, w)


def test_random_inputs_equal_the_blas_kernel_at_every_row_tile():
    g = torch.Generator().manual_seed(5)
    for d, o in ((897, 200), (4865, 64)):
        w = torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double()
        nw = prepare_weights(w)
        for n in (1, 2, 3, 8, 33):  # k n limb rows: tiles of 3 and the 1- and 2-row remainders
            u = torch.randint(0, 2**62, (n, d), generator=g) % T
            assert torch.equal(ring_matmul(u, nw), ring_matmul(u, w))


def test_column_views_equal_the_columns_of_the_full_product():
    g = torch.Generator().manual_seed(6)
    d, o = 300, 200
    w = torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double()
    nw = prepare_weights(w)
    u = torch.randint(0, T, (4, d), generator=g)
    full = ring_matmul(u, w)
    for k0, k1 in ((0, 1), (63, 65), (100, 200), (128, 192)):
        view = column_range(nw, k0, k1)
        assert view.shape == (d, k1 - k0)
        assert torch.equal(ring_matmul(u, view), full[:, k0:k1])
        assert torch.equal(dense_weights(view), w[:, k0:k1])


def test_weights_that_float32_cannot_hold_are_refused():
    w = torch.zeros((4, 2), dtype=torch.float64)
    w[0, 0] = 2.0**24 + 1
    with pytest.raises(ValueError, match="float32"):
        NativeWeights(w)


def test_without_a_compiler_the_blas_kernel_serves_and_says_why(tmp_path):
    code = ("import torch; from cloud_backend import ring_native, ring_kernel as rk\n"
            "w = rk.prepare_weights(torch.ones(3, 2, dtype=torch.float64))\n"
            "print(type(w).__name__, '|', rk.kernel_name(w))")
    env = {**os.environ, "CC": "/bin/false", "TALARIA_KERNEL_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Tensor |") and "native kernel unavailable" in out.stdout
    assert "native kernels unavailable" in out.stderr  # logged, not silent
    env["TALARIA_NATIVE"] = "require"  # asked for explicitly: a failed build is an error
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "do not build" in bad.stderr
    env = {**os.environ, "TALARIA_NATIVE": "off", "TALARIA_KERNEL_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Tensor |") and "TALARIA_NATIVE=off" in out.stdout


def test_a_multi_thread_cloud_splits_the_blocks_and_gets_the_same_answer():
    g = torch.Generator().manual_seed(7)
    d, o = 200, 64 * 9 + 5  # blocks enough for several threads
    w = torch.randint(-(2**W_BITS), 2**W_BITS + 1, (d, o), generator=g).double()
    nw = prepare_weights(w)
    u = torch.randint(0, T, (3, d), generator=g)
    single = ring_matmul(u, nw)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(ring_matmul(u, nw), single)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, ring_matmul(u, w))


def test_a_cache_directory_others_may_write_is_not_used(tmp_path, monkeypatch):
    from cloud_backend import native

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TALARIA_KERNEL_CACHE", str(shared))
    private = native._cache_dir()
    assert private != shared and not private.stat().st_mode & 0o077  # a fresh 0700 directory instead
    own = tmp_path / "own"
    monkeypatch.setenv("TALARIA_KERNEL_CACHE", str(own))
    assert native._cache_dir() == own
