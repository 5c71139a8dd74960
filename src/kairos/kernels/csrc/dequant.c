/* GGUF blocks -> dense float32 rows: the tiled GEMM's packing step (a few rows at a time, into a
 * buffer that stays in cache), and whole weights for torch fallbacks.
 *
 * Values match gguf-py's dequantize (what transformers' GGUF loader gives): Q4_1 d * q + m and
 * Q8_0 d * q, each product rounded before the add. fp-contract is off so the compiler cannot
 * fuse them into one FMA (one rounding), which would change the last bit.
 */
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>
#include <stdint.h>

#include "simd.h"

/* qs: [rows, K / 2] (GGUF nibble order), d, m: [rows, K / 32] half; out: [rows, K]. One thread. */
void dequant_rows_q4_1(const uint8_t *qs, const uint16_t *d, const uint16_t *m, int64_t rows, int64_t K, float *out) {
    const int64_t nb = K / 32;
    const __m256i low = _mm256_set1_epi32(0x0F);
    for (int64_t n = 0; n < rows; n++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *q = qs + (n * nb + b) * 16;
            const __m256 db = _mm256_set1_ps(h2f(d[n * nb + b])), mb = _mm256_set1_ps(h2f(m[n * nb + b]));
            float *o = out + n * K + 32 * b;
            for (int h = 0; h < 2; h++) { /* bytes 0-7 then 8-15: weights j (low) and j + 16 (high) */
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * h)));
                __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low));
                __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                _mm256_storeu_ps(o + 8 * h, _mm256_add_ps(_mm256_mul_ps(db, lo), mb));
                _mm256_storeu_ps(o + 16 + 8 * h, _mm256_add_ps(_mm256_mul_ps(db, hi), mb));
            }
        }
}

/* The same over N rows, on all threads. */
void dequant_q4_1(const uint8_t *qs, const uint16_t *d, const uint16_t *m, int64_t N, int64_t K, float *out) {
    const int64_t nb = K / 32;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) dequant_rows_q4_1(qs + n * nb * 16, d + n * nb, m + n * nb, 1, K, out + n * K);
}

/* qs: [rows, K] int8, d: [rows, K / 32] half; out: [rows, K]. One thread. */
void dequant_rows_q8_0(const int8_t *qs, const uint16_t *d, int64_t rows, int64_t K, float *out) {
    const int64_t nb = K / 32;
    for (int64_t n = 0; n < rows; n++)
        for (int64_t b = 0; b < nb; b++) {
            const __m256 db = _mm256_set1_ps(h2f(d[n * nb + b]));
            for (int h = 0; h < 4; h++) {
                __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + n * K + 32 * b + 8 * h))));
                _mm256_storeu_ps(out + n * K + 32 * b + 8 * h, _mm256_mul_ps(db, q));
            }
        }
}

/* The same over N rows, on all threads. */
void dequant_q8_0(const int8_t *qs, const uint16_t *d, int64_t N, int64_t K, float *out) {
    const int64_t nb = K / 32;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) dequant_rows_q8_0(qs + n * K, d + n * nb, 1, K, out + n * K);
}
