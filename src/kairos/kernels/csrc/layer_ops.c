/* Small per-layer float32 operations fused into one pass each (x86-64, AVX2 + FMA).
 *
 * In a decode step each of these runs on a handful of rows, where torch's per-operator
 * dispatch (5 ops for an RMSNorm, 10 for RoPE) costs more than the arithmetic. Math follows
 * the Hugging Face reference: RMSNorm in float32 with the weight applied last, rotate-half
 * RoPE from per-token cos/sin rows, SiLU(gate) * up.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

/* residual += x (unless x is NULL); out = residual / sqrt(mean(residual^2) + eps) * w.
 * All [M, H] contiguous. */
void add_rms_norm(const float *x, float *residual, const float *w, int64_t M, int64_t H, float eps, float *out) {
#pragma omp parallel for schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; m++) {
        float *r = residual + m * H;
        double ss = 0.0;
        if (x) {
            const float *xr = x + m * H;
            for (int64_t i = 0; i < H; i++) r[i] += xr[i];
        }
        for (int64_t i = 0; i < H; i++) ss += (double)r[i] * r[i];
        const float inv = 1.0f / sqrtf((float)(ss / H) + eps);
        float *o = out + m * H;
        for (int64_t i = 0; i < H; i++) o[i] = w[i] * (r[i] * inv);
    }
}

/* Rotate-half RoPE in place on the q and k heads of qkv rows [T, ld] (q: Hq heads of D from
 * column 0, k: Hkv heads right after), then copy k and v (after k) to their cache slots.
 * cos/sin: [T, D] rows for each token's position. Caches: [slots, Hkv, D]. */
void rope_store_kv(float *qkv, int64_t T, int64_t ld, int64_t Hq, int64_t Hkv, int64_t D, const float *cos,
                   const float *sin, float *k_cache, float *v_cache, const int64_t *slots) {
    const int64_t half = D / 2;
#pragma omp parallel for schedule(static) if (T > 8)
    for (int64_t t = 0; t < T; t++) {
        float *row = qkv + t * ld;
        const float *c = cos + t * D, *s = sin + t * D;
        for (int64_t h = 0; h < Hq + Hkv; h++) {
            float *x = row + h * D;
            for (int64_t i = 0; i < half; i++) {
                const float a = x[i], b = x[i + half];
                x[i] = a * c[i] - b * s[i];
                x[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
        memcpy(k_cache + slots[t] * Hkv * D, row + Hq * D, sizeof(float) * Hkv * D);
        memcpy(v_cache + slots[t] * Hkv * D, row + (Hq + Hkv) * D, sizeof(float) * Hkv * D);
    }
}

/* out[m, i] = silu(gu[m, i]) * gu[m, I + i]; gu: [M, 2I], out: [M, I]. */
void silu_mul(const float *gu, int64_t M, int64_t I, float *out) {
#pragma omp parallel for schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; m++) {
        const float *g = gu + m * 2 * I, *u = g + I;
        float *o = out + m * I;
        int64_t i = 0;
        for (; i + 8 <= I; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 sig = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
            _mm256_storeu_ps(o + i, _mm256_mul_ps(sig, _mm256_loadu_ps(u + i)));
        }
        for (; i < I; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}
