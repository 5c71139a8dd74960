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

/* Query heads g0 .. g1 - 1 of KV head kv (at most MAX_G) for sequence b. */
static void attend(const float *q, int64_t ldq, const float *k_cache, const float *v_cache, const int32_t *table,
                   int64_t L, int64_t b, int64_t kv, int64_t g0, int64_t g1, int64_t G, int64_t Hq, int64_t Hkv,
                   int64_t D, int64_t bs, float scale, float *out) {
    const int64_t ng = g1 - g0, nd = D / 8;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(ng * L + 8));
    float mx[MAX_G], denom[MAX_G];
    for (int64_t g = 0; g < ng; g++) mx[g] = -INFINITY;
    for (int64_t t = 0; t < L; t++) {
        const float *k = k_cache + (((int64_t)table[t / bs] * bs + t % bs) * Hkv + kv) * D;
        for (int64_t g = 0; g < ng; g++) {
            const float *qh = q + b * ldq + (kv * G + g0 + g) * D;
            __m256 s = _mm256_setzero_ps();
            for (int64_t i = 0; i < nd; i++) s = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * i), _mm256_loadu_ps(k + 8 * i), s);
            float v = hsum8(s) * scale;
            scores[g * L + t] = v;
            if (v > mx[g]) mx[g] = v;
        }
    }
    for (int64_t g = 0; g < ng; g++) {
        float *sc = scores + g * L;
        __m256 m = _mm256_set1_ps(mx[g]), acc = _mm256_setzero_ps();
        int64_t t = 0;
        for (; t + 8 <= L; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + t), m));
            _mm256_storeu_ps(sc + t, e);
            acc = _mm256_add_ps(acc, e);
        }
        float sum = hsum8(acc);
        for (; t < L; t++) {
            sc[t] = _mm256_cvtss_f32(exp8(_mm256_set1_ps(sc[t] - mx[g])));
            sum += sc[t];
        }
        denom[g] = 1.0f / sum;
    }
    __m256 o[MAX_G][16]; /* D <= 128 */
    for (int64_t g = 0; g < ng; g++)
        for (int64_t i = 0; i < nd; i++) o[g][i] = _mm256_setzero_ps();
    for (int64_t t = 0; t < L; t++) {
        const float *v = v_cache + (((int64_t)table[t / bs] * bs + t % bs) * Hkv + kv) * D;
        for (int64_t g = 0; g < ng; g++) {
            __m256 p = _mm256_set1_ps(scores[g * L + t]);
            for (int64_t i = 0; i < nd; i++) o[g][i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * i), o[g][i]);
        }
    }
    for (int64_t g = 0; g < ng; g++) {
        float *oh = out + (b * Hq + kv * G + g0 + g) * D;
        __m256 r = _mm256_set1_ps(denom[g]);
        for (int64_t i = 0; i < nd; i++) _mm256_storeu_ps(oh + 8 * i, _mm256_mul_ps(o[g][i], r));
    }
    free(scores);
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
