/* Few-row GGUF matmuls with int8 activations (as llama.cpp does; here the activation scales
 * and sums stay float32 where it stores half floats), opt-in.
 *
 * Each block of 32 activations is quantized to int8 with its own scale (dx = max|x| / 127,
 * round to nearest) and the block's product with a weight block becomes one integer dot product
 * (vpmaddubsw + vpmaddwd) and one float FMA, where the float32 kernels (gguf_gemm.c) convert
 * every weight to float: ~8 instructions per Q4_1 block instead of ~16, which matters at batch 1,
 * where the core, not memory, bounds those (1.5-1.9x the blocks per second, benchmarks). The results are no longer a float32 matmul over the dequantized
 * weights: each activation carries a rounding error of up to dx / 2, as in llama.cpp (where
 * every quantized matmul does this). Hence opt-in (ModelConfig.activation_quant), and only for
 * the few-row shapes (gguf_matmul path 2): batches go to the float32 tiled GEMM, which is
 * compute-bound on FMAs either way.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

/* x: [M, K] float32 (row stride ldx) -> q: [M, K] int8, dx: [M, K / 32] block scales,
 * sx: [M, K / 32] dx * (sum of the block's q), i.e. the block's sum as quantized. */
void quantize_rows_q8(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q, float *dx, float *sx) {
    const int64_t nb = K / 32;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t r = 0; r < M; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *p = x + r * ldx + 32 * b;
            __m256 v[4];
            __m256 amax = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = _mm256_loadu_ps(p + 8 * j);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
            }
            __m128 a = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            a = _mm_max_ps(a, _mm_movehl_ps(a, a));
            a = _mm_max_ss(a, _mm_movehdup_ps(a));
            const float d = _mm_cvtss_f32(a) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            __m256i i[4];
            for (int j = 0; j < 4; j++)  /* round to nearest (even): the MXCSR default */
                i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], _mm256_set1_ps(id)));
            /* int32 -> int8 in order: packs interleave 128-bit lanes, the permute undoes it */
            __m256i s16 = _mm256_packs_epi32(i[0], i[1]), t16 = _mm256_packs_epi32(i[2], i[3]);
            __m256i s8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(s16, t16),
                                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(q + r * K + 32 * b), s8);
            __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            dx[r * nb + b] = d;
            sx[r * nb + b] = d * (float)_mm_cvtsi128_si32(s4);
        }
}

/* The block scales of weight row n times those of MT rows of x: sc[i][b] = dw[b] * dx[i][b]. */
static inline void row_scales(const uint16_t *d, const float *dx, int64_t nb, int MT, float *sc) {
    for (int i = 0; i < MT; i++) {
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8)
            _mm256_storeu_ps(sc + i * nb + b, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + b))),
                                                            _mm256_loadu_ps(dx + i * nb + b)));
        for (; b < nb; b++) sc[i * nb + b] = h2f(d[b]) * dx[i * nb + b];
    }
}

/* 32 nibbles of a Q4_1 block as bytes in weight order: the 16 bytes in both halves of a
 * register, the upper half shifted by 4 (so its high nibbles come down), low nibbles kept. */
#define Q4_1_BYTES(b)                                                                              \
    _mm256_and_si256(_mm256_srlv_epi32(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 16 * (b)))), \
                                       shift), m4)
/* a (32 unsigned bytes) . the int8 x of row i, block b, as 8 int32 partial sums */
#define DOT_U8S8(a, xp) _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_loadu_si256((const __m256i *)(xp))), ones)

/* Weight row n against MT = 1..4 rows of x; each block is unpacked once for all of them. The FMA
 * into an accumulator is the loop-carried latency, so even and odd blocks go to two of them. */
/* blocks alternate between two sets of accumulators (even, odd): two independent FMA chains
   per row hide the FMA latency; declares even[MT], odd[MT] for the tile to sum */
#define EVEN_ODD_BLOCKS(BLOCK, MT)                                                                 \
    __m256 even[MT], odd[MT];                                                                      \
    for (int i = 0; i < MT; i++) even[i] = odd[i] = _mm256_setzero_ps();                           \
    int64_t b = 0;                                                                                 \
    for (; b + 2 <= nb; b += 2) {                                                                  \
        BLOCK(MT, b, even)                                                                         \
        BLOCK(MT, b + 1, odd)                                                                      \
    }                                                                                              \
    if (b < nb) BLOCK(MT, b, even)
#define Q4Q8_BLOCK(MT, b, A)                                                                           \
    {                                                                                              \
        __m256i w = Q4_1_BYTES(b);                                                                 \
        for (int i = 0; i < MT; i++)                                                               \
            A[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(DOT_U8S8(w, xq + i * K + 32 * (b))),         \
                                   _mm256_broadcast_ss(sc + i * nb + (b)), A[i]);                  \
    }
#define Q4Q8_TILE(MT)                                                                              \
    static void q4q8_tile##MT(const int8_t *xq, int64_t K, const float *dx, const float *sx,       \
                              int64_t nb, const uint8_t *q, const uint16_t *d, const uint16_t *m,  \
                              float *y, int64_t ldy) {                                             \
        float sc[MT * nb];                                                                         \
        row_scales(d, dx, nb, MT, sc);                                                             \
        const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);                    \
        const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);                           \
        EVEN_ODD_BLOCKS(Q4Q8_BLOCK, MT)                                                            \
        for (int i = 0; i < MT; i++)                                                               \
            y[i * ldy] = hsum8(_mm256_add_ps(even[i], odd[i])) + dot_hn(m, sx + i * nb, nb);       \
    }
Q4Q8_TILE(1)
Q4Q8_TILE(2)
Q4Q8_TILE(3)
Q4Q8_TILE(4)

/* vpmaddubsw multiplies unsigned by signed bytes: |w| times x with w's sign */
#define Q8Q8_BLOCK(MT, b, A)                                                                           \
    {                                                                                              \
        __m256i w = _mm256_loadu_si256((const __m256i *)(q + 32 * (b)));                           \
        __m256i aw = _mm256_sign_epi8(w, w);                                                       \
        for (int i = 0; i < MT; i++) {                                                             \
            __m256i xs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xq + i * K + 32 * (b))), w); \
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones);                     \
            A[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(sc + i * nb + (b)), A[i]); \
        }                                                                                          \
    }
#define Q8Q8_TILE(MT)                                                                              \
    static void q8q8_tile##MT(const int8_t *xq, int64_t K, const float *dx, int64_t nb,            \
                              const int8_t *q, const uint16_t *d, float *y, int64_t ldy) {         \
        float sc[MT * nb];                                                                         \
        row_scales(d, dx, nb, MT, sc);                                                             \
        const __m256i ones = _mm256_set1_epi16(1);                                                 \
        EVEN_ODD_BLOCKS(Q8Q8_BLOCK, MT)                                                            \
        for (int i = 0; i < MT; i++) y[i * ldy] = hsum8(_mm256_add_ps(even[i], odd[i]));           \
    }
Q8Q8_TILE(1)
Q8Q8_TILE(2)
Q8Q8_TILE(3)
Q8Q8_TILE(4)

void gguf_row_q8_vnni(int64_t kind, const int8_t *xq, const float *dx, const float *sx, int64_t M, int64_t K,
                      const void *q, const uint16_t *d, const uint16_t *m, float *y, int64_t ldy);

/* y[r, n] = sum_b dw[n, b] dx[r, b] (q4[n, b] . q8[r, b]) + m[n, b] sx[r, b] */
void gemm_q4_1_q8(const int8_t *xq, const float *dx, const float *sx, int64_t M, int64_t K, const uint8_t *qs,
                  const uint16_t *d, const uint16_t *m, int64_t N, float *y, int64_t ldy) {
    const int64_t nb = K / 32;
    const int vnni = (kairos_isa & ISA_Q8_VNNI) && M > 1; /* at 1 row it only ties (cpu_kernels.py --isa) */
#pragma omp parallel for schedule(guided)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *q = qs + n * nb * 16;
        const uint16_t *dn = d + n * nb, *mn = m + n * nb;
        if (vnni) {
            gguf_row_q8_vnni(0, xq, dx, sx, M, K, q, dn, mn, y + n, ldy);
            continue;
        }
        for (int64_t r = 0; r < M; r += 4) {
            const int8_t *x = xq + r * K;
            const float *dr = dx + r * nb, *sr = sx + r * nb;
            float *yr = y + r * ldy + n;
            switch (M - r < 4 ? M - r : 4) {
                case 4: q4q8_tile4(x, K, dr, sr, nb, q, dn, mn, yr, ldy); break;
                case 3: q4q8_tile3(x, K, dr, sr, nb, q, dn, mn, yr, ldy); break;
                case 2: q4q8_tile2(x, K, dr, sr, nb, q, dn, mn, yr, ldy); break;
                default: q4q8_tile1(x, K, dr, sr, nb, q, dn, mn, yr, ldy); break;
            }
        }
    }
}

/* y[r, n] = sum_b dw[n, b] dx[r, b] (q8w[n, b] . q8[r, b]) */
void gemm_q8_0_q8(const int8_t *xq, const float *dx, int64_t M, int64_t K, const int8_t *qs, const uint16_t *d,
                  int64_t N, float *y, int64_t ldy) {
    const int64_t nb = K / 32;
    const int vnni = (kairos_isa & ISA_Q8_VNNI) && M > 1;
#pragma omp parallel for schedule(guided)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *q = qs + n * K;
        const uint16_t *dn = d + n * nb;
        if (vnni) {
            gguf_row_q8_vnni(1, xq, dx, NULL, M, K, q, dn, NULL, y + n, ldy);
            continue;
        }
        for (int64_t r = 0; r < M; r += 4) {
            const int8_t *x = xq + r * K;
            const float *dr = dx + r * nb;
            float *yr = y + r * ldy + n;
            switch (M - r < 4 ? M - r : 4) {
                case 4: q8q8_tile4(x, K, dr, nb, q, dn, yr, ldy); break;
                case 3: q8q8_tile3(x, K, dr, nb, q, dn, yr, ldy); break;
                case 2: q8q8_tile2(x, K, dr, nb, q, dn, yr, ldy); break;
                default: q8q8_tile1(x, K, dr, nb, q, dn, yr, ldy); break;
            }
        }
    }
}

/* y = x W^T with x quantized to int8 per block of 32 first; kind, shapes as gguf_matmul.
 * Returns 0, or -1 without memory for the quantized x. */
int gguf_matmul_q8(int64_t kind, const float *x, int64_t M, int64_t K, int64_t ldx, const void *qs,
                   const uint16_t *d, const uint16_t *m, int64_t N, float *y, int64_t ldy) {
    const int64_t nb = K / 32;
    int8_t *xq = malloc((size_t)(M * K));
    float *dx = malloc(sizeof(float) * (size_t)(M * nb)), *sx = malloc(sizeof(float) * (size_t)(M * nb));
    int rc = (xq && dx && sx) ? 0 : -1;
    if (rc == 0) {
        quantize_rows_q8(x, M, K, ldx, xq, dx, sx);
        if (kind == 0)
            gemm_q4_1_q8(xq, dx, sx, M, K, (const uint8_t *)qs, d, m, N, y, ldy);
        else
            gemm_q8_0_q8(xq, dx, M, K, (const int8_t *)qs, d, N, y, ldy);
    }
    free(xq), free(dx), free(sx);
    return rc;
}
