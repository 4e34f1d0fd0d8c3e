/* ops.h — the layer kernels on one rank (float32, row-major, OpenBLAS).
 *
 * Conventions (as llm.c): activations are [N, C] with N = B*T rows; a linear layer's weight
 * is stored as HF does, [out, in], so out = inp @ W^T (+ bias). Every forward has its
 * backward next to it; backward functions ACCUMULATE (+=) into parameter gradients and into
 * input gradients unless the comment says "overwrites". */
#ifndef ZB_OPS_H
#define ZB_OPS_H

#include <stddef.h>
#include "config.h"

/* ---- linear ------------------------------------------------------------------------- */
/* out[N,OC] = inp[N,C] @ W[OC,C]^T + bias[OC] (bias may be NULL). Overwrites out. */
void zb_matmul_forward(float *out, const float *inp, const float *W, const float *bias,
                       int N, int C, int OC);
/* dinp[N,C] += dout @ W; dW[OC,C] += dout^T @ inp; dbias += colsum(dout). NULLs skipped. */
void zb_matmul_backward(float *dinp, float *dW, float *dbias, const float *dout,
                        const float *inp, const float *W, int N, int C, int OC);

/* ---- RMSNorm (SPEC §2): y = w * x / sqrt(mean(x^2) + eps) -------------------------------- */
/* rstd[N] saved for backward (may be NULL when not training). Overwrites out. */
void zb_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w,
                        int N, int C, float eps);
void zb_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                         const float *w, const float *rstd, int N, int C);

/* ---- RoPE (SPEC §2, rotate-half layout; llama3 or YaRN frequency scaling, SPEC §3) ------- */
typedef struct {
    int dim;                                /* rotary dimension (even, <= ZB_ROPE_MAX_DIM of config.h) */
    float inv_freq[ZB_ROPE_MAX_DIM / 2];
    float mscale;                           /* cos and sin are multiplied by it (YaRN; else 1) */
} zb_rope;
void zb_rope_init(zb_rope *r, int dim, const zb_rope_cfg *cfg);
/* Rotate in place the `r->dim` values at x + h*head_stride + offset for h < n_heads, for one
 * token at position pos (and scale them by r->mscale). interleave: the values are stored as pairs (2i, 2i+1) and are first
 * permuted to [evens | odds] (HF apply_rotary_pos_emb_interleave), then rotated.
 * inverse = 1 applies the transpose (the backward of the rotation; it also un-permutes; the
 * mscale is its own transpose). */
void zb_rope_apply(const zb_rope *r, float *x, int n_heads, int head_stride, int offset,
                   int pos, int interleave, int inverse);
/* Rows: x is [B*T, row_stride]; token (b, t) has position t + pos0. */
void zb_rope_apply_seq(const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                       int head_stride, int offset, int pos0, int interleave, int inverse);

/* ---- causal (grouped-query) attention ---------------------------------------------------- */
/* q: [B,T, H*dqk] rows of stride q_stride; k: [B,T, Hkv*dqk] rows of stride k_stride;
 * v: [B,T, Hkv*dv] rows of stride v_stride; out: [B,T,H*dv] (stride H*dv).
 * Query head h uses kv head h / (H / Hkv). probs [B,H,T,T] saved for backward. */
typedef struct {
    int B, T, H, Hkv, dqk, dv;
    int q_stride, k_stride, v_stride;   /* row strides in floats */
    float scale;                        /* usually 1/sqrt(dqk) */
} zb_attn_shape;
void zb_attention_forward(float *out, float *probs, const float *q, const float *k,
                          const float *v, const zb_attn_shape *s);
/* dq, dk, dv have the same strides as q, k, v and are OVERWRITTEN (the head columns only). */
void zb_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                           const float *probs, const float *q, const float *k, const float *v,
                           const zb_attn_shape *s);
/* One query token against a cache of Tc tokens: q [H*dqk]; KV group g's key of position u at
 * kc + g*k_group + u*k_stride (dqk floats), its value at vc + g*v_group + u*v_stride (dv
 * floats): interleaved rows [Tc, Hkv*dqk] are k_group = dqk, k_stride = Hkv*dqk; a head-major
 * cache [Hkv, T, dqk] is k_group = T*dqk, k_stride = dqk (each group's rows contiguous, which
 * the hardware prefetchers follow); out [H*dv]; scratch >= zb_attention_decode_scratch(H, dv, Tc)
 * floats (about H*Tc). */
size_t zb_attention_decode_scratch(int H, int dv, int Tc);
/* 1: split-K over cache chunks threaded by OpenMP (use with bf16 weights); 0 (default): a GEMM
 * per KV group on OpenBLAS (f32 weights). Same result to rounding; see ops.c for why both. */
void zb_attention_decode_use_omp(int on);
/* 1 when the run uses OpenMP for its decode kernels (set by zb_attention_decode_use_omp): the
 * other per-sequence decode loops (Mamba2's recurrent step) thread under the same switch. */
int zb_decode_omp_on(void);
/* The split-K kernel's tasks: 2 (default) AVX-512 where the CPU has it and dqk is a multiple of
 * 16, else AVX2+FMA where dqk is a multiple of 8 (register blocks of 4 heads, vector exp; ops.c);
 * 1 AVX2 at most; 0 the portable loops (tests and cluster/bench_attn compare them). */
void zb_attention_decode_simd(int level);
/* Tests: the split-K chunk length (clamped to 64..256); 0 (default) chosen per call for the
 * thread count. */
void zb_attention_decode_chunk(int cs);
void zb_attention_decode(float *out, const float *q, const float *kc, const float *vc, int Tc,
                         int H, int Hkv, int dqk, int dv, int k_stride, int v_stride,
                         size_t k_group, size_t v_group, float scale, float *scratch);

/* ---- SwiGLU MLP pieces ------------------------------------------------------------------- */
/* h = silu(g) * u, elementwise over n. */
void zb_swiglu_forward(float *h, const float *g, const float *u, size_t n);
/* dg, du OVERWRITTEN. */
void zb_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                        size_t n);

/* ---- embedding ---------------------------------------------------------------------------- */
void zb_embedding_forward(float *out, const int *ids, const float *table, int N, int C);
void zb_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int C);

/* ---- losses (float32 in, double accumulation) --------------------------------------------- */
/* Cross-entropy over rows of logits [N,V] with targets (target < 0: ignored). Returns the SUM
 * of the per-row losses; *n_valid counts used rows. If dlogits != NULL it is OVERWRITTEN with
 * scale * (softmax - onehot) (zero rows for ignored targets); dlogits may alias logits. */
double zb_cross_entropy(float *dlogits, const float *logits, const int *targets, int N, int V,
                        float scale, int *n_valid);
/* KL(teacher || student) with temperature tau over rows [N,V]: sum_r sum_v pt (log pt - log ps),
 * pt = softmax(t/tau), ps = softmax(s/tau). Returns the sum over rows (mask[r]==0 rows skipped;
 * mask may be NULL). dstudent (may be NULL) OVERWRITTEN with scale * (ps - pt) / tau. */
double zb_kl_div(float *dstudent, const float *student, const float *teacher, const int *mask,
                 int N, int V, float tau, float scale);
/* Mean squared error sum((a-b)^2)/n; da (may be NULL) OVERWRITTEN with scale*2(a-b)/n. */
double zb_mse(float *da, const float *a, const float *b, size_t n, float scale);

/* ---- small elementwise helpers --------------------------------------------------------- */
static inline float zb_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float zb_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
/* softplus as torch: x for x > 20, else log1p(exp(x)). */
static inline float zb_softplus(float x) { return x > 20.0f ? x : __builtin_log1pf(__builtin_expf(x)); }

#endif
