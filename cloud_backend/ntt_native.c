/* The negacyclic NTT of talaria_wire/ntt.py, in C, for the cloud's re-randomisation of he answers.
 *
 * Same transform, same butterflies, same output order as the torch reference (tests compare them
 * on random and edge inputs): Cooley-Tukey forward with psi^brv(i), output in bit-reversed order;
 * Gentleman-Sande inverse with psi^-brv(i), then N^-1. Polynomials a[count][P][N], int64
 * residues in [0, p), transformed in place.
 *
 * Products by a table value s use Shoup's method: with s' = floor(s 2^32 / p) (precomputed by the
 * caller), q = floor(w s' / 2^32) satisfies w s / p - 1 < q <= w s / p for w < p < 2^31, so
 * r = w s - q p lies in [0, 2p) and one conditional subtraction reduces it. All in uint64:
 * w s' < 2^63, w s < 2^62. */

#include <stdint.h>

static inline uint64_t mul_shoup(uint64_t w, uint64_t s, uint64_t s_sh, uint64_t p) {
    uint64_t q = (w * s_sh) >> 32;
    uint64_t r = w * s - q * p;
    return r >= p ? r - p : r;
}

static void fwd_one(uint64_t *x, long n, const uint64_t *psi, const uint64_t *psi_sh, uint64_t p) {
    for (long m = 1, t = n; m < n; m *= 2) {
        t /= 2;
        for (long i = 0; i < m; i++) {
            uint64_t s = psi[m + i], s_sh = psi_sh[m + i];
            uint64_t *u = x + 2 * i * t, *v = u + t;
            for (long j = 0; j < t; j++) {
                uint64_t a = u[j], b = mul_shoup(v[j], s, s_sh, p);
                uint64_t sum = a + b, diff = a + p - b;
                u[j] = sum >= p ? sum - p : sum;
                v[j] = diff >= p ? diff - p : diff;
            }
        }
    }
}

static void inv_one(uint64_t *x, long n, const uint64_t *psi, const uint64_t *psi_sh, uint64_t p,
                    uint64_t n_inv, uint64_t n_inv_sh) {
    for (long m = n, t = 1; m > 1; m /= 2, t *= 2) {
        long h = m / 2;
        for (long i = 0; i < h; i++) {
            uint64_t s = psi[h + i], s_sh = psi_sh[h + i];
            uint64_t *u = x + 2 * i * t, *v = u + t;
            for (long j = 0; j < t; j++) {
                uint64_t a = u[j], b = v[j];
                uint64_t sum = a + b;
                u[j] = sum >= p ? sum - p : sum;
                v[j] = mul_shoup(a + p - b >= p ? a - b : a + p - b, s, s_sh, p);
            }
        }
    }
    for (long j = 0; j < n; j++) x[j] = mul_shoup(x[j], n_inv, n_inv_sh, p);
}

/* a [count][P][n]; tables [P][n] (psi, psi_sh); primes [P]. inverse: also n_inv, n_inv_sh [P]. */
void ntt_forward(int64_t *a, long count, long primes_count, long n, const int64_t *psi, const int64_t *psi_sh,
                 const int64_t *primes) {
    for (long c = 0; c < count; c++)
        for (long k = 0; k < primes_count; k++)
            fwd_one((uint64_t *)a + (c * primes_count + k) * n, n, (const uint64_t *)psi + k * n,
                    (const uint64_t *)psi_sh + k * n, (uint64_t)primes[k]);
}

void ntt_inverse(int64_t *a, long count, long primes_count, long n, const int64_t *psi, const int64_t *psi_sh,
                 const int64_t *primes, const int64_t *n_inv, const int64_t *n_inv_sh) {
    for (long c = 0; c < count; c++)
        for (long k = 0; k < primes_count; k++)
            inv_one((uint64_t *)a + (c * primes_count + k) * n, n, (const uint64_t *)psi + k * n,
                    (const uint64_t *)psi_sh + k * n, (uint64_t)primes[k], (uint64_t)n_inv[k], (uint64_t)n_inv_sh[k]);
}
