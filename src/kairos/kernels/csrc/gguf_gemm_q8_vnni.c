/* AVX-512 VNNI twins of gguf_gemm_q8.c's tiles (int8 activations; run where kairos_isa has
 * ISA_Q8_VNNI).
 *
 * One 64-byte vpdpbusd takes two blocks at once: lanes 0-7 hold block b's eight partial sums
 * (four products each), lanes 8-15 block b + 1's, exactly the int32 values vpmaddubsw + vpmaddwd
 * give the AVX2 tile (no int16 saturation either way: |products| < 2^15). The float FMAs per lane
 * then follow the AVX2 tile's: its even-block accumulator is lanes 0-7 here, its odd one lanes
 * 8-15, so the results are the same bits with half the instructions per block. (llama.cpp uses
 * 256-bit vpdpbusd, one block per instruction, in the same place.)
 */
#include <immintrin.h>
#include <stdint.h>

#include "simd.h"

/* W: blocks b, b + 1 of a weight row as 64 unsigned bytes in weight order; Q8_0 also sets neg:
 * the lanes where w < 0 (x is negated there, |w| multiplies: vpdpbusd wants unsigned weights).
 * wmask: the bytes that exist (block b + 1 may not). */
#define Q4_1_PAIR                                                                                  \
    /* 128-bit lanes: block b's 16 bytes twice, then b + 1's twice; the odd copies shift by 4 */  \
    const __m512i raw = _mm512_castsi256_si512(_mm256_maskz_loadu_epi8((__mmask32)wmask, q + 16 * b)); \
    const __m512i W = _mm512_and_si512(_mm512_srlv_epi64(_mm512_shuffle_i64x2(raw, raw, 0x50), shift), m4);
#define Q8_0_PAIR                                                                                  \
    const __m512i w8 = _mm512_maskz_loadu_epi8(wmask, q + 32 * b);                                    \
    const __m512i W = _mm512_abs_epi8(w8);                                                         \
    const __mmask64 neg = _mm512_movepi8_mask(w8);
#define Q4_1_X(xv) (xv)
#define Q8_0_X(xv) _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv)

/* Blocks b and b + 1 (kw, kl, k2: the bytes, lanes and scales that exist; constants, so the
 * loop over whole pairs has no masks to compute) into acc[MT]. The scales dw dx of the pair
 * (the AVX2 tile's products) are made in registers: a buffer of them stored and loaded back
 * cost more than the dot products. */
#define VNNI_PAIR(MT, PAIR, XSIGN, kw, kl, k2)                                                     \
    {                                                                                              \
        const __m128 dw = _mm_cvtph_ps(_mm_maskz_loadu_epi16(k2, d + b));                          \
        const __mmask64 wmask = (kw);                                                              \
        PAIR                                                                                       \
        for (int i = 0; i < MT; i++) {                                                             \
            const __m512i xv = _mm512_maskz_loadu_epi8(wmask, xq + i * K + 32 * b);                   \
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W, XSIGN(xv));           \
            const __m128 sc = _mm_mul_ps(dw, _mm_maskz_loadu_ps(k2, dx + i * nb + b));             \
            const __m512 s = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(sc));              \
            acc[i] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[i], kl);                  \
        }                                                                                          \
    }
/* Weight row n against MT = 1..4 rows of x (quantized: xq [MT, K], dx, sx [MT, nb]). */
#define VNNI_TILE(NAME, MT, QT, PAIR, XSIGN)                                                       \
    AVX512_VNNI static void NAME(const int8_t *xq, int64_t K, const float *dx, const float *sx,    \
                                 int64_t nb, const QT *q, const uint16_t *d, const uint16_t *m,    \
                                 float *y, int64_t ldy) {                                          \
        const __m512i m4 = _mm512_set1_epi8(0x0F), shift = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4); \
        const __m512i pick = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);    \
        (void)m4, (void)shift;                                                                     \
        __m512 acc[MT];                                                                            \
        for (int i = 0; i < MT; i++) acc[i] = _mm512_setzero_ps();                                 \
        int64_t b = 0;                                                                             \
        for (; b + 2 <= nb; b += 2) VNNI_PAIR(MT, PAIR, XSIGN, ~0ULL, 0xFFFF, 3)                  \
        if (b < nb) VNNI_PAIR(MT, PAIR, XSIGN, 0xFFFFFFFFULL, 0x00FF, 1) /* the last, even block */ \
        for (int i = 0; i < MT; i++) y[i * ldy] = m ? hsum16(acc[i]) + dot_hn(m, sx + i * nb, nb) : hsum16(acc[i]); \
    }
VNNI_TILE(q4q8_vnni1, 1, uint8_t, Q4_1_PAIR, Q4_1_X)
VNNI_TILE(q4q8_vnni2, 2, uint8_t, Q4_1_PAIR, Q4_1_X)
VNNI_TILE(q4q8_vnni3, 3, uint8_t, Q4_1_PAIR, Q4_1_X)
VNNI_TILE(q4q8_vnni4, 4, uint8_t, Q4_1_PAIR, Q4_1_X)
VNNI_TILE(q8q8_vnni1, 1, int8_t, Q8_0_PAIR, Q8_0_X)
VNNI_TILE(q8q8_vnni2, 2, int8_t, Q8_0_PAIR, Q8_0_X)
VNNI_TILE(q8q8_vnni3, 3, int8_t, Q8_0_PAIR, Q8_0_X)
VNNI_TILE(q8q8_vnni4, 4, int8_t, Q8_0_PAIR, Q8_0_X)

/* y[r * ldy] for r < M and one weight row (kind 0 Q4_1: q its nibbles, d, m its scales and
 * offsets; 1 Q8_0: m NULL), 4 rows of x at a time as gguf_gemm_q8.c goes. */
AVX512_VNNI void gguf_row_q8_vnni(int64_t kind, const int8_t *xq, const float *dx, const float *sx, int64_t M,
                                  int64_t K, const void *q, const uint16_t *d, const uint16_t *m, float *y,
                                  int64_t ldy) {
    const int64_t nb = K / 32;
    for (int64_t r = 0; r < M; r += 4) {
        const int8_t *x = xq + r * K;
        const float *dr = dx + r * nb, *sr = sx ? sx + r * nb : NULL;
        float *yr = y + r * ldy;
        const int64_t mt = M - r < 4 ? M - r : 4;
        if (kind == 0) {
            const uint8_t *w = q;
            if (mt == 4) q4q8_vnni4(x, K, dr, sr, nb, w, d, m, yr, ldy);
            else if (mt == 3) q4q8_vnni3(x, K, dr, sr, nb, w, d, m, yr, ldy);
            else if (mt == 2) q4q8_vnni2(x, K, dr, sr, nb, w, d, m, yr, ldy);
            else q4q8_vnni1(x, K, dr, sr, nb, w, d, m, yr, ldy);
        } else {
            const int8_t *w = q;
            if (mt == 4) q8q8_vnni4(x, K, dr, NULL, nb, w, d, NULL, yr, ldy);
            else if (mt == 3) q8q8_vnni3(x, K, dr, NULL, nb, w, d, NULL, yr, ldy);
            else if (mt == 2) q8q8_vnni2(x, K, dr, NULL, nb, w, d, NULL, yr, ldy);
            else q8q8_vnni1(x, K, dr, NULL, nb, w, d, NULL, yr, ldy);
        }
    }
}
