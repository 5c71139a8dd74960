/* A decode step's whole decoder stack (Llama layout) in one call, from GGUF blocks.
 *
 * At batch 1 a layer is ~10 small operations; run one by one from Python each costs a module
 * call, a tensor allocation and a ctypes call, which added up to a third of the step. Here the
 * same kernels run back to back on scratch buffers: the arithmetic (and so every rounding) is
 * that of the per-module kernel path, operation for operation.
 */
#include <stdint.h>
#include <stdlib.h>

int gguf_matmul(int64_t kind, const float *x, int64_t M, int64_t K, int64_t ldx, const void *qs, const uint16_t *d,
                const uint16_t *m, int64_t N, float *y, int64_t ldy, int64_t path);
void add_rms_norm(const float *x, float *residual, const float *w, int64_t M, int64_t H, float eps, float *out);
void rope_store_kv(float *qkv, int64_t T, int64_t ld, int64_t Hq, int64_t Hkv, int64_t D, const float *cos,
                   const float *sin, float *k_cache, float *v_cache, const int64_t *slots);
void paged_decode_attention(const float *q, int64_t ldq, const float *k_cache, const float *v_cache,
                            const int32_t *tables, int64_t ldt, const int32_t *lens, int64_t B, int64_t Hq,
                            int64_t Hkv, int64_t D, int64_t bs, float scale, float *out);
void silu_mul(const float *gu, int64_t M, int64_t I, float *out);

/* One [N, K] weight as kairos.kernels.cpu.GGUFWeight holds it (kind 0: Q4_1, 1: Q8_0). */
typedef struct {
    int64_t kind, N, K;
    const void *qs;
    const uint16_t *d, *m; /* half floats; m: Q4_1 offsets */
    const float *bias;  /* [N] or NULL */
} qlinear_t;

typedef struct {
    const float *input_norm, *post_norm; /* [H] */
    qlinear_t qkv, o, gate_up, down;
    float *k_cache, *v_cache; /* [num_blocks, bs, Hkv, D] */
} layer_t;

static int linear(const qlinear_t *w, const float *x, int64_t M, float *y, int64_t path) {
    if (gguf_matmul(w->kind, x, M, w->K, w->K, w->qs, w->d, w->m, w->N, y, w->N, path)) return -1;
    if (w->bias)
        for (int64_t r = 0; r < M; r++)
            for (int64_t n = 0; n < w->N; n++) y[r * w->N + n] += w->bias[n];
    return 0;
}

/* hidden: [M, H] token embeddings, used as the residual stream (overwritten); out: [M, H], the
 * final norm of the last layer's output. cos/sin: [M, D]; slots: [M]; tables: [M, ldt]; lens: [M];
 * path: gguf_matmul's (-1, or 2 for int8 activations).
 * Returns 0, or -1 when scratch memory could not be had (the KV cache and hidden may then hold a
 * partial step: the caller fails the step). */
int decode_stack(const layer_t *layers, int64_t L, int64_t M, int64_t H, int64_t Hq, int64_t Hkv, int64_t D,
                 int64_t I, float *hidden, const float *cos, const float *sin, const int64_t *slots,
                 const int32_t *tables, int64_t ldt, const int32_t *lens, int64_t bs, float eps, float scale,
                 const float *final_norm, float *out, int64_t path) {
    const int64_t nqkv = (Hq + 2 * Hkv) * D;
    float *h = malloc(sizeof(float) * (size_t)(M * H)), *x = malloc(sizeof(float) * (size_t)(M * H));
    float *qkv = malloc(sizeof(float) * (size_t)(M * nqkv)), *att = malloc(sizeof(float) * (size_t)(M * Hq * D));
    float *gu = malloc(sizeof(float) * (size_t)(M * 2 * I)), *act = malloc(sizeof(float) * (size_t)(M * I));
    int rc = (h && x && qkv && att && gu && act) ? 0 : -1;
    for (int64_t l = 0; rc == 0 && l < L; l++) {
        const layer_t *ly = layers + l;
        add_rms_norm(l ? x : NULL, hidden, ly->input_norm, M, H, eps, h);
        if ((rc = linear(&ly->qkv, h, M, qkv, path))) break;
        rope_store_kv(qkv, M, nqkv, Hq, Hkv, D, cos, sin, ly->k_cache, ly->v_cache, slots);
        paged_decode_attention(qkv, nqkv, ly->k_cache, ly->v_cache, tables, ldt, lens, M, Hq, Hkv, D, bs, scale, att);
        rc = linear(&ly->o, att, M, x, path);
        if (rc == 0) add_rms_norm(x, hidden, ly->post_norm, M, H, eps, h);
        if (rc == 0) rc = linear(&ly->gate_up, h, M, gu, path);
        if (rc == 0) silu_mul(gu, M, I, act);
        if (rc == 0) rc = linear(&ly->down, act, M, x, path);
    }
    if (rc == 0) add_rms_norm(L ? x : NULL, hidden, final_norm, M, H, eps, out);
    free(h), free(x), free(qkv), free(att), free(gu), free(act);
    return rc;
}
