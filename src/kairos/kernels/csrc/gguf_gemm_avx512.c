/* AVX-512 twins of gguf_gemm.c's few-row kernels (float32 activations; run where kairos_isa has
 * ISA_GEMM512).
 *
 * A block of 32 weights is two 16-float vectors: weights 0-15 (wl) and 16-31 (wh). Every lane
 * does the arithmetic of the AVX2 kernel's lane it stands for, in the same order (gguf_gemm.c:
 * DOT32 and ROW4 pair weights j and j + 16 for that), so the results are the same bits; what
 * changes is the instruction count per block: one zero-extension, two conversions and two FMAs
 * for Q4_1 where the AVX2 kernel needs twice that. Decode steps of a few rows are partly bound by
 * those instructions, not by memory (gguf_gemm.c): 1.1x at 1 row, 1.3x at 8 on a Zen 5 EPYC
 * (benchmarks/cpu_kernels.py --isa); at 4 rows one 16-lane chain per row is FMA-latency bound
 * and only ties.
 */
#include <immintrin.h>
#include <stdint.h>

#include "simd.h"

/* wl, wh: block b of a weight row as floats (unscaled) */
#define Q4_1_W512(b)                                                                               \
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)qs + 16 * (b)))); \
    __m512 wl = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)));                 \
    __m512 wh = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
#define Q8_0_W512(b)                                                                               \
    const int8_t *q8 = (const int8_t *)qs + 32 * (b);                                              \
    __m512 wl = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q8)));   \
    __m512 wh = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q8 + 16))));

/* Block b into accumulator set e. SCALED 0 (1-3 rows, gguf_gemm.c's q*_tile1..3): per row
 * acc += db * (wl x[0:16] + wh x[16:32]); SCALED 1 (groups of 4 rows, its q*_tile4): the scale
 * goes into the weights, acc += wl x[0:16], then acc += wh x[16:32]. */
#define BLOCK512(MT, DECODE, SCALED, b, e)                                                         \
    {                                                                                              \
        const __m512 db = _mm512_set1_ps(df[b]);                                                   \
        DECODE(b)                                                                                  \
        if (SCALED) wl = _mm512_mul_ps(db, wl), wh = _mm512_mul_ps(db, wh);                        \
        for (int i = 0; i < MT; i++) {                                                             \
            const float *xi = x + i * ldx + 32 * (b);                                              \
            if (SCALED)                                                                            \
                acc[i][e] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xi + 16),                          \
                                            _mm512_fmadd_ps(wl, _mm512_loadu_ps(xi), acc[i][e]));  \
            else                                                                                   \
                acc[i][e] = _mm512_fmadd_ps(db, _mm512_fmadd_ps(wh, _mm512_loadu_ps(xi + 16),      \
                                                                _mm512_mul_ps(wl, _mm512_loadu_ps(xi))), acc[i][e]); \
        }                                                                                          \
    }
/* One weight row against MT rows of x; at 1 row even and odd blocks go to two accumulator sets,
 * as in gguf_gemm.c. At 8 rows (SCALED) a block is decoded once for 8 FMA chains, as the AVX2
 * kernel's two tiles of 4 have. Q4_1 (m != NULL) adds the offsets' dot product as gguf_gemm.c. */
#define TILE512(NAME, MT, DECODE, SCALED)                                                          \
    AVX512 static void NAME(const float *x, int64_t ldx, const float *xs, int64_t nb, const void *qs, \
                            const uint16_t *d, const uint16_t *m, float *y, int64_t ldy) {         \
        float df[nb];                                                                              \
        h2f_row(d, nb, df);                                                                        \
        __m512 acc[MT][2];                                                                         \
        for (int i = 0; i < MT; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();                  \
        int64_t b = 0;                                                                             \
        if (MT == 1)                                                                               \
            for (; b + 2 <= nb; b += 2) { BLOCK512(MT, DECODE, SCALED, b, 0) BLOCK512(MT, DECODE, SCALED, b + 1, 1) } \
        for (; b < nb; b++) BLOCK512(MT, DECODE, SCALED, b, 0)                                     \
        for (int i = 0; i < MT; i++) {                                                             \
            const float s = SCALED ? hsum16(acc[i][0]) : hsum16(_mm512_add_ps(acc[i][0], acc[i][1])); \
            y[i * ldy] = m ? s + dot_hn(m, xs + i * nb, nb) : s;                                   \
        }                                                                                          \
    }
TILE512(q4_1_row1, 1, Q4_1_W512, 0)
TILE512(q4_1_row2, 2, Q4_1_W512, 0)
TILE512(q4_1_row3, 3, Q4_1_W512, 0)
TILE512(q4_1_row4, 4, Q4_1_W512, 1)
TILE512(q4_1_row8, 8, Q4_1_W512, 1)
TILE512(q8_0_row1, 1, Q8_0_W512, 0)
TILE512(q8_0_row2, 2, Q8_0_W512, 0)
TILE512(q8_0_row3, 3, Q8_0_W512, 0)
TILE512(q8_0_row4, 4, Q8_0_W512, 1)
TILE512(q8_0_row8, 8, Q8_0_W512, 1)

typedef void (*tile_fn)(const float *, int64_t, const float *, int64_t, const void *, const uint16_t *,
                        const uint16_t *, float *, int64_t);

/* y[r * ldy] = x[r] . W[n] for r < M: one weight row (qs, d, m: its blocks; kind 0 Q4_1, with
 * xs the block sums of x as gemm_q4_1 has them; 1 Q8_0, xs and m NULL). The rows go in the AVX2
 * kernel's groups (4 at a time, then 1-3), so each row gets its arithmetic. */
AVX512 void gguf_row512(int64_t kind, const float *x, int64_t ldx, const float *xs, int64_t M, int64_t nb,
                        const void *qs, const uint16_t *d, const uint16_t *m, float *y, int64_t ldy) {
    static const tile_fn tiles[2][5] = {{q4_1_row1, q4_1_row2, q4_1_row3, q4_1_row4, q4_1_row8},
                                        {q8_0_row1, q8_0_row2, q8_0_row3, q8_0_row4, q8_0_row8}};
    const tile_fn *t = tiles[kind];
    int64_t r = 0;
    for (; r + 8 <= M; r += 8) t[4](x + r * ldx, ldx, xs ? xs + r * nb : NULL, nb, qs, d, m, y + r * ldy, ldy);
    for (; r + 4 <= M; r += 4) t[3](x + r * ldx, ldx, xs ? xs + r * nb : NULL, nb, qs, d, m, y + r * ldy, ldy);
    if (r < M) t[M - r - 1](x + r * ldx, ldx, xs ? xs + r * nb : NULL, nb, qs, d, m, y + r * ldy, ldy);
}
