/* Matrix products over GGUF-quantized weights on x86-64 CPUs (AVX2 + FMA).
 *
 * y[m, n] = sum_k x[m, k] * W[n, k] with W in blocks of 32 weights along k, as in GGUF:
 * Q4_1: w = d * q + m (q in 0..15; byte j of a block holds weight j in its low nibble and
 * weight j + 16 in its high nibble), Q8_0: w = d * q (q int8). Kairos keeps the nibbles or
 * int8 values as GGUF stores them and the block scales d (and offsets m) apart, as half floats
 * [N, K / 32] (simd.h): a block then decodes with a few vector instructions, and the offsets
 * enter as one dot product per row, sum_b m_b * (sum of x over block b).
 *
 * Activations stay float32 and products accumulate in float32, so results equal a float32
 * matmul over the dequantized weights up to rounding (no activation quantization). Each
 * decoded block serves up to 4 rows of x, so small batches (decode steps) read the weights
 * once, which is what bounds them. Threads: OpenMP over output rows, linked against the
 * libgomp that torch already loaded. Batches of more rows go to gguf_gemm_tiled.c
 * (gguf_matmul below picks).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

/* lo += db * (w0 x[0:8] + w2 x[16:24]), hi += db * (w1 x[8:16] + w3 x[24:32]): weights j and
 * j + 16 share a lane, which is how gguf_gemm_avx512.c's 16 lanes hold a block, so both compute
 * the same bits (lanes 0-7 of its accumulator are lo, 8-15 hi); two FMA chains per row, too. */
#define DOT32(lo, hi, db, xp)                                                                      \
    lo = _mm256_fmadd_ps(db, _mm256_fmadd_ps(w2, _mm256_loadu_ps((xp) + 16), _mm256_mul_ps(w0, _mm256_loadu_ps(xp))), lo); \
    hi = _mm256_fmadd_ps(db, _mm256_fmadd_ps(w3, _mm256_loadu_ps((xp) + 24), _mm256_mul_ps(w1, _mm256_loadu_ps((xp) + 8))), hi);

/* w0..w3: weights 0-7, 8-15, 16-23, 24-31 of block b as floats (unscaled). Q4_1: one byte per
 * int32 lane, low nibble = weight j, high nibble = weight j + 16. */
#define Q4_1_W(b)                                                                                  \
    __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 16 * (b))));        \
    __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 16 * (b) + 8)));    \
    __m256 w0 = _mm256_cvtepi32_ps(_mm256_and_si256(v0, low)), w1 = _mm256_cvtepi32_ps(_mm256_and_si256(v1, low)); \
    __m256 w2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), w3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4));
#define Q8_0_W8(b, k) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 32 * (b) + 8 * (k)))))
#define Q8_0_W(b) __m256 w0 = Q8_0_W8(b, 0), w1 = Q8_0_W8(b, 1), w2 = Q8_0_W8(b, 2), w3 = Q8_0_W8(b, 3);

/* Block b of one weight row into accumulator set e of MT rows of x. */
#define FEW_BLOCK(MT, DECODE, b, e)                                                                \
    {                                                                                              \
        DECODE(b)                                                                                  \
        __m256 db = _mm256_broadcast_ss(df + (b));                                                 \
        for (int i = 0; i < MT; i++) { DOT32(lo[i][e], hi[i][e], db, x + i * ldx + 32 * (b)) }     \
    }
/* Row n of W against MT = 1..3 rows of x (decode steps): declares s[MT], each row's 8 lane sums.
 * About 16 instructions per block: at 1 row the core bounds this, not memory (17-20 GB/s of the
 * 48 a plain sum streams here), so the row's scales are widened to float32 once, for a broadcast
 * per block, and at 1 row even and odd blocks go to two accumulator sets (four FMA chains). */
#define FEW_TILE_BODY(MT, DECODE)                                                                  \
    float df[nb];                                                                                  \
    h2f_row(d, nb, df);                                                                            \
    __m256 lo[MT][2], hi[MT][2], s[MT];                                                            \
    for (int i = 0; i < MT; i++) lo[i][0] = lo[i][1] = hi[i][0] = hi[i][1] = _mm256_setzero_ps(); \
    int64_t b = 0;                                                                                 \
    if (MT == 1)                                                                                   \
        for (; b + 2 <= nb; b += 2) { FEW_BLOCK(MT, DECODE, b, 0) FEW_BLOCK(MT, DECODE, b + 1, 1) } \
    for (; b < nb; b++) FEW_BLOCK(MT, DECODE, b, 0)                                                \
    for (int i = 0; i < MT; i++)                                                                   \
        s[i] = _mm256_add_ps(_mm256_add_ps(lo[i][0], lo[i][1]), _mm256_add_ps(hi[i][0], hi[i][1]));

/* qs: nb * 16 bytes, d, m: nb halves; xs: block sums [MT, nb] */
#define Q4_1_TILE(MT)                                                                              \
    static void q4_1_tile##MT(const float *x, int64_t ldx, const float *xs, int64_t nb,            \
                              const uint8_t *qs, const uint16_t *d, const uint16_t *m, float *y,   \
                              int64_t ldy) {                                                       \
        const __m256i low = _mm256_set1_epi32(0x0F);                                               \
        FEW_TILE_BODY(MT, Q4_1_W)                                                                  \
        for (int i = 0; i < MT; i++) y[i * ldy] = hsum8(s[i]) + dot_hn(m, xs + i * nb, nb);        \
    }
Q4_1_TILE(1)
Q4_1_TILE(2)
Q4_1_TILE(3)

/* 4 rows of x, for batches (compute-bound, unlike 1-3 rows): the block's scale goes into the
 * decoded weights once, and each row keeps two accumulators so eight independent FMA chains keep
 * both FMA units busy: a for weights j and j + 16, c for j + 8 and j + 24 (the lanes of
 * gguf_gemm_avx512.c's one 16-float accumulator per row, so both give the same bits). */
#define FMA4(acc, w, xp) acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp), acc)
#define ROW4(a, c, xp) FMA4(a, w0, xp); FMA4(c, w1, (xp) + 8); FMA4(a, w2, (xp) + 16); FMA4(c, w3, (xp) + 24)
#define TILE4_BODY(DECODE, TAIL)                                                                   \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0; \
    for (int64_t b = 0; b < nb; b++) {                                                             \
        DECODE                                                                                     \
        const float *x0 = x + 32 * b;                                                              \
        ROW4(a0, c0, x0); ROW4(a1, c1, x0 + ldx); ROW4(a2, c2, x0 + 2 * ldx); ROW4(a3, c3, x0 + 3 * ldx); \
    }                                                                                              \
    y[0] = hsum8(_mm256_add_ps(a0, c0)) TAIL(0);                                                   \
    y[ldy] = hsum8(_mm256_add_ps(a1, c1)) TAIL(1);                                                 \
    y[2 * ldy] = hsum8(_mm256_add_ps(a2, c2)) TAIL(2);                                             \
    y[3 * ldy] = hsum8(_mm256_add_ps(a3, c3)) TAIL(3);

/* the scale into the decoded weights (exact: at most 8 significant bits times a half's 11) */
#define SCALE_W                                                                                    \
    __m256 db = _mm256_set1_ps(h2f(d[b]));                                                         \
    w0 = _mm256_mul_ps(db, w0), w1 = _mm256_mul_ps(db, w1), w2 = _mm256_mul_ps(db, w2), w3 = _mm256_mul_ps(db, w3);
#define Q4_1_DECODE_SCALED Q4_1_W(b) SCALE_W
#define Q4_1_OFFSET(i) + dot_hn(m, xs + (i) * nb, nb)

static void q4_1_tile4(const float *x, int64_t ldx, const float *xs, int64_t nb, const uint8_t *qs,
                       const uint16_t *d, const uint16_t *m, float *y, int64_t ldy) {
    const __m256i low = _mm256_set1_epi32(0x0F);
    TILE4_BODY(Q4_1_DECODE_SCALED, Q4_1_OFFSET)
}

#define Q8_0_TILE(MT)                                                                              \
    static void q8_0_tile##MT(const float *x, int64_t ldx, int64_t nb, const int8_t *qs,           \
                              const uint16_t *d, float *y, int64_t ldy) {                          \
        FEW_TILE_BODY(MT, Q8_0_W)                                                                  \
        for (int i = 0; i < MT; i++) y[i * ldy] = hsum8(s[i]);                                     \
    }
Q8_0_TILE(1)
Q8_0_TILE(2)
Q8_0_TILE(3)

#define Q8_0_DECODE_SCALED Q8_0_W(b) SCALE_W
#define NO_OFFSET(i)

static void q8_0_tile4(const float *x, int64_t ldx, int64_t nb, const int8_t *qs, const uint16_t *d, float *y,
                       int64_t ldy) {
    TILE4_BODY(Q8_0_DECODE_SCALED, NO_OFFSET)
}

int kairos_isa = 0;

/* Called once by cpu.py at load (bits: simd.h's ISA_*), never while a kernel runs. */
void kairos_set_isa(int64_t bits) { kairos_isa = (int)bits; }

void gguf_row512(int64_t kind, const float *x, int64_t ldx, const float *xs, int64_t M, int64_t nb, const void *qs,
                 const uint16_t *d, const uint16_t *m, float *y, int64_t ldy);

/* x: [M, K] float32 (row stride ldx); qs: [N, K / 2] uint8; d, m: [N, K / 32] half;
 * y: [M, N] float32 (row stride ldy). */
void gemm_q4_1(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *qs, const uint16_t *d,
               const uint16_t *m, int64_t N, float *y, int64_t ldy) {
    const int64_t nb = K / 32;
    float *xs = (float *)malloc(sizeof(float) * (size_t)(M * nb));
    for (int64_t r = 0; r < M; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *p = x + r * ldx + 32 * b;
            __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)),
                                     _mm256_add_ps(_mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24)));
            xs[r * nb + b] = hsum8(s);
        }
#pragma omp parallel for schedule(guided)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *q = qs + n * nb * 16;
        const uint16_t *dn = d + n * nb, *mn = m + n * nb;
        if (kairos_isa & ISA_GEMM512) {
            gguf_row512(0, x, ldx, xs, M, nb, q, dn, mn, y + n, ldy);
            continue;
        }
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) q4_1_tile4(x + r * ldx, ldx, xs + r * nb, nb, q, dn, mn, y + r * ldy + n, ldy);
        switch (M - r) {
            case 3: q4_1_tile3(x + r * ldx, ldx, xs + r * nb, nb, q, dn, mn, y + r * ldy + n, ldy); break;
            case 2: q4_1_tile2(x + r * ldx, ldx, xs + r * nb, nb, q, dn, mn, y + r * ldy + n, ldy); break;
            case 1: q4_1_tile1(x + r * ldx, ldx, xs + r * nb, nb, q, dn, mn, y + r * ldy + n, ldy); break;
            default: break;
        }
    }
    free(xs);
}

/* x: [M, K] float32; qs: [N, K] int8; d: [N, K / 32] half; y: [M, N] float32. */
void gemm_q8_0(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *qs, const uint16_t *d, int64_t N,
               float *y, int64_t ldy) {
    const int64_t nb = K / 32;
#pragma omp parallel for schedule(guided)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *q = qs + n * K;
        const uint16_t *dn = d + n * nb;
        if (kairos_isa & ISA_GEMM512) {
            gguf_row512(1, x, ldx, NULL, M, nb, q, dn, NULL, y + n, ldy);
            continue;
        }
        int64_t r = 0;
        for (; r + 4 <= M; r += 4) q8_0_tile4(x + r * ldx, ldx, nb, q, dn, y + r * ldy + n, ldy);
        switch (M - r) {
            case 3: q8_0_tile3(x + r * ldx, ldx, nb, q, dn, y + r * ldy + n, ldy); break;
            case 2: q8_0_tile2(x + r * ldx, ldx, nb, q, dn, y + r * ldy + n, ldy); break;
            case 1: q8_0_tile1(x + r * ldx, ldx, nb, q, dn, y + r * ldy + n, ldy); break;
            default: break;
        }
    }
}

int gemm_gguf_tiled(int64_t kind, const float *x, int64_t M, int64_t K, int64_t ldx, const void *qs,
                    const uint16_t *d, const uint16_t *m, int64_t N, float *y, int64_t ldy);
int gguf_matmul_q8(int64_t kind, const float *x, int64_t M, int64_t K, int64_t ldx, const void *qs,
                   const uint16_t *d, const uint16_t *m, int64_t N, float *y, int64_t ldy);

/* Up to this many rows the kernels above win (they read each block once per 4 rows and need no
 * packing); above, the tiled GEMM does (benchmarks/cpu_kernels.py, 2-core AVX2 EPYC). Their
 * AVX-512 twins decode a block once per 8 rows and win up to 16 (2-core AVX-512 Zen 5 EPYC). */
#define SMALL_M 8
#define SMALL_M_512 16

/* y = x W^T for a GGUF weight, the kernel chosen by M (path -1), or forced: 0 the kernels above,
 * 1 the tiled one; path 2: as -1, but the few-row shapes quantize x to int8 (gguf_gemm_q8.c,
 * opt-in). kind 0: Q4_1, 1: Q8_0; shapes as for gemm_q4_1 / gemm_q8_0. Returns 0, or -1 when
 * there was no memory for the packed or quantized copy of x (y is not written then). */
int gguf_matmul(int64_t kind, const float *x, int64_t M, int64_t K, int64_t ldx, const void *qs, const uint16_t *d,
                const uint16_t *m, int64_t N, float *y, int64_t ldy, int64_t path) {
    if (path == 2 && M <= SMALL_M) return gguf_matmul_q8(kind, x, M, K, ldx, qs, d, m, N, y, ldy);
    /* (path 2 above SMALL_M rows: float32, as path -1) */
    if (path == 1 || (path != 0 && M > ((kairos_isa & ISA_GEMM512) ? SMALL_M_512 : SMALL_M)))
        return gemm_gguf_tiled(kind, x, M, K, ldx, qs, d, m, N, y, ldy);
    if (kind == 0)
        gemm_q4_1(x, M, K, ldx, (const uint8_t *)qs, d, m, N, y, ldy);
    else
        gemm_q8_0(x, M, K, ldx, (const int8_t *)qs, d, N, y, ldy);
    return 0;
}
