/* Decode attention straight from the paged KV cache on x86-64 CPUs (AVX2 + FMA).
 *
 * One query token per sequence: out[b, h] = softmax(scale * q[b, h] . K_b^T) V_b over the
 * sequence's first lens[b] cached tokens, token t living in block tables[b, t / bs] at offset
 * t % bs of k_cache / v_cache [num_blocks, bs, Hkv, D] (float32). Grouped-query heads
 * h = kv * G .. kv * G + G - 1 share KV head kv, so each (sequence, KV head) task reads its
 * keys and values once for all G query heads, with no gather copy of the context (the torch
 * path copies every context into a padded tensor first). float32 throughout (exp: simd.h).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

#define MAX_G 16 /* query heads per KV head handled in one task */

/* [sum(a0), ..., sum(a7)]: eight horizontal sums at once (one hsum8 each would cost 4x). */
static inline __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                             __m256 a7) {
    __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3)); /* lanes: a0..a3 halves */
    __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

#define DOT8(j) a##j = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k_cache + rows[t + j] + 8 * i), a##j)
#define PV8(j) o##j = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * (j)), o##j)

/* Query heads g0 .. g1 - 1 of KV head kv (at most MAX_G) for sequence b. Keys go 8 at a time:
 * eight independent FMA chains instead of one long chain per key; values one head and 64
 * features at a time, so the 8 accumulators stay in registers. K and V rows of this task are
 * re-read per head from L1/L2 (a context is kilobytes per KV head). */
static void attend(const float *q, int64_t ldq, const float *k_cache, const float *v_cache, const int32_t *table,
                   int64_t L, int64_t b, int64_t kv, int64_t g0, int64_t g1, int64_t G, int64_t Hq, int64_t Hkv,
                   int64_t D, int64_t bs, float scale, float *out) {
    const int64_t ng = g1 - g0, nd = D / 8;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(ng * L + 8));
    int64_t *rows = (int64_t *)malloc(sizeof(int64_t) * (size_t)(L + 8)); /* offset of token t's row */
    for (int64_t blk = 0, t = 0; t < L; blk++)
        for (int64_t o = 0; o < bs && t < L; o++, t++) rows[t] = (((int64_t)table[blk] * bs + o) * Hkv + kv) * D;
    const __m256 vscale = _mm256_set1_ps(scale);
    for (int64_t g = 0; g < ng; g++) {
        const float *qh = q + b * ldq + (kv * G + g0 + g) * D;
        float *sc = scores + g * L;
        int64_t t = 0;
        for (; t + 8 <= L; t += 8) {
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
            for (int64_t i = 0; i < nd; i++) {
                const __m256 qv = _mm256_loadu_ps(qh + 8 * i);
                DOT8(0); DOT8(1); DOT8(2); DOT8(3); DOT8(4); DOT8(5); DOT8(6); DOT8(7);
            }
            _mm256_storeu_ps(sc + t, _mm256_mul_ps(hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7), vscale));
        }
        for (; t < L; t++) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t i = 0; i < nd; i++)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * i), _mm256_loadu_ps(k_cache + rows[t] + 8 * i), a);
            sc[t] = hsum8(a) * scale;
        }
        float mx = -INFINITY;
        for (int64_t u = 0; u < L; u++) mx = sc[u] > mx ? sc[u] : mx;
        __m256 m = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
        t = 0;
        for (; t + 8 <= L; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + t), m));
            _mm256_storeu_ps(sc + t, e);
            acc = _mm256_add_ps(acc, e);
        }
        float sum = hsum8(acc);
        for (; t < L; t++) {
            sc[t] = _mm256_cvtss_f32(exp8(_mm256_set1_ps(sc[t] - mx)));
            sum += sc[t];
        }
        const __m256 r = _mm256_set1_ps(1.0f / sum);
        float *oh = out + (b * Hq + kv * G + g0 + g) * D;
        for (int64_t h = 0; h < nd; h += 8) {
            if (nd - h >= 8) {
                __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
                for (int64_t u = 0; u < L; u++) {
                    const __m256 p = _mm256_set1_ps(sc[u]);
                    const float *v = v_cache + rows[u] + 8 * h;
                    PV8(0); PV8(1); PV8(2); PV8(3); PV8(4); PV8(5); PV8(6); PV8(7);
                }
                __m256 o[8] = {o0, o1, o2, o3, o4, o5, o6, o7};
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(oh + 8 * (h + i), _mm256_mul_ps(o[i], r));
            } else { /* the last D % 64 features */
                __m256 o[8];
                for (int64_t i = 0; i < nd - h; i++) o[i] = _mm256_setzero_ps();
                for (int64_t u = 0; u < L; u++) {
                    const __m256 p = _mm256_set1_ps(sc[u]);
                    for (int64_t i = 0; i < nd - h; i++)
                        o[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v_cache + rows[u] + 8 * (h + i)), o[i]);
                }
                for (int64_t i = 0; i < nd - h; i++) _mm256_storeu_ps(oh + 8 * (h + i), _mm256_mul_ps(o[i], r));
            }
        }
    }
    free(scores);
    free(rows);
}

/* q: [B, Hq, D] (sequence stride ldq), out: [B, Hq, D] contiguous, tables: [B, ldt] int32. */
void paged_decode_attention(const float *q, int64_t ldq, const float *k_cache, const float *v_cache,
                            const int32_t *tables, int64_t ldt, const int32_t *lens, int64_t B,
                            int64_t Hq, int64_t Hkv, int64_t D, int64_t bs, float scale, float *out) {
    const int64_t G = Hq / Hkv;
    if (B * Hkv >= 4 * omp_get_max_threads()) {
        /* enough (sequence, KV head) tasks: each reads its keys and values once for all G heads */
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int64_t b = 0; b < B; b++)
            for (int64_t kv = 0; kv < Hkv; kv++)
                attend(q, ldq, k_cache, v_cache, tables + b * ldt, lens[b], b, kv, 0, G, G, Hq, Hkv, D, bs, scale, out);
    } else {
        /* few sequences (batch 1): one task per query head keeps every thread busy */
#pragma omp parallel for collapse(2) schedule(dynamic)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                attend(q, ldq, k_cache, v_cache, tables + b * ldt, lens[b], b, h / G, h % G, h % G + 1, G, Hq, Hkv, D,
                       bs, scale, out);
    }
}
