/* The ring kernel's CPU hot path: exact float64 products of limb rows with W_bar held in float32.
 *
 * W_bar's entries are integers |w| <= 2^23, exact in float32 (24-bit significand), so the weights
 * are stored and streamed from memory at float32's 4 bytes instead of float64's 8, and widened to
 * float64 in registers. x holds limb digits (exact float64 integers) chosen by the caller so that
 * every partial sum stays below 2^53: then each accumulation is exact in any order, FMA or not,
 * and the result equals the integer product (tests/cloud/test_ring_native.py checks it against
 * Python integers at the bounds).
 *
 * Layout: W_bar [d, o] is cut into column blocks of CB = 64: w[nb][d][CB] (the last block padded
 * with zeros), so a block is one contiguous stream. For each block, tiles of up to 3 limb rows x 64
 * columns keep their 24 accumulators (8 doubles each) in registers while the block's d rows stream
 * by; with AVX-512 a tile is 24 of the 32 vector registers. GCC vector extensions, no intrinsics:
 * the same source builds for any x86-64 or ARM target (-march=native at first use).
 *
 * ring_matmul_blocks additionally folds the k limb products of each row into one residue mod t:
 *   v = sum_i P_i 2^(bits i) mod t, |P_i| < 2^53,
 * by Horner's rule without division: acc <- acc 2^bits + P_i - q t, where q = round(. / t) comes
 * from the float64 value of acc 2^bits + P_i (relative error ~2^-52, so for bits <= 40 q is off by
 * at most one near a half-integer and the true new acc lies within t/2 (1 + 2^-11) of 0), and the
 * exact value is computed mod 2^64 (unsigned wrap-around), where it reads correctly as a signed
 * 64-bit integer. The caller keeps |P_i| < 2^53 and bits <= 40; the result is moved into [0, t). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CB 64

typedef double v8d __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

static inline v8d splat(double a) { return (v8d){a, a, a, a, a, a, a, a}; }

/* p[r][0:CB] = sum_i X(r, i) wb[i][0:CB] for r < RT, p rows CB apart; X(r, i) reads row r's
 * coordinate i (float64 digits, or a limb of int64 residues: the two tile kinds below). */
#define TILE_BODY(RT, X)                                                                    \
    v8d acc[RT][8];                                                                         \
    for (int r = 0; r < RT; r++)                                                            \
        for (int c = 0; c < 8; c++) acc[r][c] = splat(0.0);                                 \
    for (long i = 0; i < d; i++) {                                                          \
        const float *wi = wb + i * CB;                                                      \
        v8d xs[RT];                                                                         \
        for (int r = 0; r < RT; r++) xs[r] = splat(X(r, i));                                \
        for (int c = 0; c < 8; c++) {                                                       \
            v8f wf;                                                                         \
            memcpy(&wf, wi + 8 * c, sizeof wf);                                             \
            v8d wv = __builtin_convertvector(wf, v8d);                                      \
            for (int r = 0; r < RT; r++) acc[r][c] += xs[r] * wv;                           \
        }                                                                                   \
    }                                                                                       \
    for (int r = 0; r < RT; r++)                                                            \
        for (int c = 0; c < 8; c++) memcpy(p + r * CB + 8 * c, &acc[r][c], sizeof(v8d));

/* rows of float64 limb digits, x rows ldx apart */
#define X_DIGITS(r, i) x[(r) * ldx + (i)]
#define DEFINE_TILE(RT) \
    static void tile##RT(const double *x, long d, long ldx, const float *wb, double *p) { TILE_BODY(RT, X_DIGITS) }

/* limb `shift` of int64 residues read straight from a ciphertext block, column-major */
#define X_LIMB(r, i) (double)((blk[(i) * ldb + (r)] >> shift) & mask)
#define DEFINE_RES_TILE(RT)                                                                           \
    static void res_tile##RT(const int64_t *blk, long d, long ldb, int shift, int64_t mask, const float *wb, \
                             double *p) { TILE_BODY(RT, X_LIMB) }

DEFINE_TILE(1)
DEFINE_TILE(2)
DEFINE_TILE(3)

/* p [R][CB] = x [R][d] times block wb [d][CB]. */
static void block_products(const double *x, long rows, long d, const float *wb, double *p) {
    long r = 0;
    for (; r + 3 <= rows; r += 3) tile3(x + r * d, d, d, wb, p + r * CB);
    if (rows - r == 2) tile2(x + r * d, d, d, wb, p + r * CB);
    if (rows - r == 1) tile1(x + r * d, d, d, wb, p + r * CB);
}

/* out [n][ldo] int64 in [0, t): residues of sum_i P_i 2^(bits i) mod t, where P_i [k][n] are
 * the limb rows' products (x rows ordered limb-major: row i n_rows + j is limb i of row j). */
int ring_matmul_blocks(const double *x, long k, long n_rows, long d, const float *w, long b0, long b1,
                       long o, int bits, int64_t t, int64_t *out, long ldo) {
    long rows = k * n_rows;
    double *p = aligned_alloc(64, (size_t)rows * CB * sizeof(double));
    if (!p) return -1;
    const double shift = ldexp(1.0, bits);
    const double inv_t = 1.0 / (double)t;
    for (long b = b0; b < b1; b++) {
        block_products(x, rows, d, w + (size_t)b * d * CB, p);
        long cols = o - b * CB < CB ? o - b * CB : CB;
        for (long j = 0; j < n_rows; j++) {
            int64_t *dst = out + j * ldo + b * CB;
            for (long c = 0; c < cols; c++) {
                int64_t acc = (int64_t)p[((k - 1) * n_rows + j) * CB + c];
                for (long i = k - 2; i >= 0; i--) {  /* acc = acc 2^bits + P_i, reduced near 0 */
                    double v = p[(i * n_rows + j) * CB + c];
                    int64_t q = (int64_t)llrint(((double)acc * shift + v) * inv_t);
                    acc = (int64_t)(((uint64_t)acc << bits) + (uint64_t)(int64_t)v - (uint64_t)q * (uint64_t)t);
                }
                int64_t r = acc;
                if (r < 0) r += t;
                if (r >= t) r -= t;
                dst[c] = r;
            }
        }
    }
    free(p);
    return 0;
}

long ring_block_cols(void) { return CB; }

DEFINE_RES_TILE(1)
DEFINE_RES_TILE(2)
DEFINE_RES_TILE(3)

/* The he source's ciphertext GEMM (cloud_backend/he_kernel.py, matmul_block): blk [d][M] int64
 * residues (M = H P c ciphertext coefficients per input coordinate), cut into unsigned limbs of
 * `bits` bits on the fly; out [o][M] int64, out[k][m] = sum_j W_bar[j][k] blk[j][m] mod
 * prime_of_m[m], for the output columns of blocks b0..b1-1 (cut at o). Per limb l the products
 * P_l = limb_l W_bar are exact in float64 (the caller's limb width keeps them below 2^53), then
 * Horner's rule mod p with a float64 quotient: acc 2^bits + P_l has |.| < 2^62 for bits <= 31,
 * its float64 value is off by < 2^10, so floor(. / p) is off by at most one and
 * r = value - q p lies in [-p, 2p): two conditional corrections give [0, p), exactly. */
int he_matmul_blocks(const int64_t *blk, long m_count, long d, long limbs, int bits, const float *w, long b0, long b1,
                     long o, const int64_t *prime_of_m, int64_t *out) {
    const long mc = 510; /* columns m per pass, a multiple of 3: limbs x 510 x 64 doubles stay in L2 */
    const int64_t mask = ((int64_t)1 << bits) - 1;
    double *p = aligned_alloc(64, (size_t)limbs * mc * CB * sizeof(double));
    if (!p) return -1;
    for (long b = b0; b < b1; b++) {
        const float *wb = w + (size_t)b * d * CB;
        long cols = o - b * CB < CB ? o - b * CB : CB;
        for (long m0 = 0; m0 < m_count; m0 += mc) {
            long mn = m_count - m0 < mc ? m_count - m0 : mc;
            for (long l = 0; l < limbs; l++) {
                double *pl = p + l * mc * CB;
                long r = 0;
                for (; r + 3 <= mn; r += 3) res_tile3(blk + m0 + r, d, m_count, bits * l, mask, wb, pl + r * CB);
                if (mn - r == 2) res_tile2(blk + m0 + r, d, m_count, bits * l, mask, wb, pl + r * CB);
                if (mn - r == 1) res_tile1(blk + m0 + r, d, m_count, bits * l, mask, wb, pl + r * CB);
            }
            for (long c = 0; c < cols; c++) {
                int64_t *dst = out + (b * CB + c) * m_count + m0;
                for (long i = 0; i < mn; i++) {
                    const int64_t q_p = prime_of_m[m0 + i];
                    const double inv = 1.0 / (double)q_p;
                    int64_t acc = 0;
                    for (long l = limbs - 1; l >= 0; l--) {
                        int64_t v = acc * ((int64_t)1 << bits) + (int64_t)p[(l * mc + i) * CB + c];
                        int64_t q = (int64_t)floor((double)v * inv);
                        int64_t r = v - q * q_p;
                        if (r < 0) r += q_p;
                        if (r >= q_p) r -= q_p;
                        acc = r;
                    }
                    dst[i] = acc;
                }
            }
        }
    }
    free(p);
    return 0;
}
