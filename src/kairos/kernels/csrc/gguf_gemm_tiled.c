/* Matrix products over GGUF blocks for batches (prefill chunks, big decode steps), x86-64 AVX2 + FMA.
 *
 * y[m, n] = sum_k x[m, k] * W[n, k], as gguf_gemm.c, but organised like a BLAS GEMM: compute
 * bound, so the aim is to keep both FMA units busy. x is packed once, transposed in panels of
 * 16 rows ([K][16]: two vectors per k). Each task decodes 6 rows of W into a small float buffer
 * (this decode is the "packing" any GEMM does; no dense copy of W exists) and runs a 6 x 16
 * register tile over every panel of x: per k, 2 vector loads, 6 broadcasts and 12 FMAs into
 * 12 independent accumulators.
 *
 * The decoded weights are the values dequant.c gives (d * q + m, each product rounded), so
 * results equal a float32 matmul over those weights up to the order of the additions.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define NR 6  /* rows of W per task */
#define MR 16 /* rows of x per register tile */

void dequant_rows_q4_1(const uint8_t *qs, const uint16_t *d, const uint16_t *m, int64_t rows, int64_t K, float *out);
void dequant_rows_q8_0(const int8_t *qs, const uint16_t *d, int64_t rows, int64_t K, float *out);

/* c[i, :] = w[i, :] . xp over K, for i < 6: w [6][K] (row stride K), xp [K][16] packed x,
 * c [6][16]. Twelve named accumulators: an array of them the compiler keeps in memory. */
#define FMA2(i)                                                                                    \
    a = _mm256_broadcast_ss(w + (i) * K + k);                                                      \
    lo##i = _mm256_fmadd_ps(a, b0, lo##i);                                                         \
    hi##i = _mm256_fmadd_ps(a, b1, hi##i);
#define STORE2(i)                                                                                  \
    _mm256_store_ps(c + 16 * (i), lo##i);                                                          \
    _mm256_store_ps(c + 16 * (i) + 8, hi##i);

static void tile6(const float *w, int64_t K, const float *xp, float *c) {
    __m256 lo0 = _mm256_setzero_ps(), lo1 = lo0, lo2 = lo0, lo3 = lo0, lo4 = lo0, lo5 = lo0;
    __m256 hi0 = lo0, hi1 = lo0, hi2 = lo0, hi3 = lo0, hi4 = lo0, hi5 = lo0;
    for (int64_t k = 0; k < K; k++) {
        const __m256 b0 = _mm256_load_ps(xp + 16 * k), b1 = _mm256_load_ps(xp + 16 * k + 8);
        __m256 a;
        FMA2(0) FMA2(1) FMA2(2) FMA2(3) FMA2(4) FMA2(5)
    }
    STORE2(0) STORE2(1) STORE2(2) STORE2(3) STORE2(4) STORE2(5)
}

/* kind 0: Q4_1 (qs [N, K / 2], d and m [N, K / 32] half); 1: Q8_0 (qs [N, K] int8, d [N, K / 32]).
 * x: [M, K] (row stride ldx); y: [M, N] (row stride ldy). Returns 0, or -1 without memory. */
int gemm_gguf_tiled(int64_t kind, const float *x, int64_t M, int64_t K, int64_t ldx, const void *qs,
                    const uint16_t *d, const uint16_t *m, int64_t N, float *y, int64_t ldy) {
    const int64_t panels = (M + MR - 1) / MR, nb = K / 32;
    float *xp = aligned_alloc(64, sizeof(float) * (size_t)(panels * MR * K));
    if (!xp) return -1;
    int failed = 0;
#pragma omp parallel
    {
        /* x^T in panels of 16 rows, zero-padded past M: xp[p][k][r] = x[16 p + r, k] */
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            float *dst = xp + p * MR * K;
            for (int64_t r = 0; r < MR; r++) {
                const int64_t row = p * MR + r;
                if (row < M)
                    for (int64_t k = 0; k < K; k++) dst[16 * k + r] = x[row * ldx + k];
                else
                    for (int64_t k = 0; k < K; k++) dst[16 * k + r] = 0.0f;
            }
        }
        float *w = malloc(sizeof(float) * (size_t)(NR * K));
        float *c = aligned_alloc(32, sizeof(float) * NR * MR);
        if (!w || !c) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(guided)
        for (int64_t n0 = 0; n0 < N; n0 += NR) {
            if (!w || !c) continue;
            const int64_t rows = N - n0 < NR ? N - n0 : NR;
            if (kind == 0)
                dequant_rows_q4_1((const uint8_t *)qs + n0 * nb * 16, d + n0 * nb, m + n0 * nb, rows, K, w);
            else
                dequant_rows_q8_0((const int8_t *)qs + n0 * K, d + n0 * nb, rows, K, w);
            for (int64_t i = rows * K; i < NR * K; i++) w[i] = 0.0f; /* the last task of an N not divisible by 6 */
            for (int64_t p = 0; p < panels; p++) {
                tile6(w, K, xp + p * MR * K, c);
                const int64_t mrows = M - p * MR < MR ? M - p * MR : MR;
                for (int64_t r = 0; r < mrows; r++)
                    for (int64_t i = 0; i < rows; i++) y[(p * MR + r) * ldy + n0 + i] = c[16 * i + r];
            }
        }
        free(w);
        free(c);
    }
    free(xp);
    return failed ? -1 : 0;
}
