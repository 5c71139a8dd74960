/* AVX2 helpers shared by the kernels. */
#pragma once
#include <immintrin.h>
#include <stdint.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* GGUF block scales stay IEEE half floats (uint16 bits) as the file stores them: a Q4_1 block
 * is 16 bytes of nibbles and 4 of d and m, so float32 copies of the scales would add 20% to what
 * a decode step reads. Conversion to float32 is exact. */
static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* out[i] = h2f(h[i]), 8 at a time */
static inline void h2f_row(const uint16_t *h, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) out[i] = h2f(h[i]);
}

/* sum_i h2f(a[i]) * b[i] */
static inline float dot_hn(const uint16_t *a, const float *b, int64_t n) {
    __m256 s = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        s = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), s);
    float r = hsum8(s);
    for (; i < n; i++) r += h2f(a[i]) * b[i];
    return r;
}

/* e^x, about 2 ulp: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two, Cody-Waite), e^r by
 * a degree-6 Taylor polynomial, 2^n through the exponent bits. x < -87 gives 0, x > 88 +inf. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n for n in [-126, 127]; n = 128 (x near 88.7) is covered by the +inf case below */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(n, _mm256_set1_ps(127.0f))),
                                                   _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    p = _mm256_blendv_ps(p, _mm256_set1_ps(__builtin_inff()), over);
    return _mm256_andnot_ps(under, p);
}

/* The build's baseline is AVX2 + FMA + F16C; the AVX-512 variants are compiled into the same
 * library with these function attributes (no -march=native, so the library also loads and runs
 * on an AVX2-only CPU) and are called only where kairos_isa says the CPU has the features. */
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define AVX512_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

/* Which AVX-512 variants run (bits; 0: the AVX2 kernels only). Set by cpu.py from the CPU's flags
 * (kairos_set_isa in gguf_gemm.c) before any kernel runs. */
#define ISA_GEMM512 1 /* gguf_gemm_avx512.c: the float32 few-row matmuls */
#define ISA_Q8_VNNI 2 /* gguf_gemm_q8_vnni.c: the int8-activation matmuls */
extern int kairos_isa;

/* The sum of 16 floats as hsum8 adds the two 8-float halves: the AVX-512 kernels keep in lanes
 * 0-7 and 8-15 what their AVX2 twins keep in two 8-float accumulators, then finish alike. */
AVX512 static inline float hsum16(__m512 v) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}
