/* ops.h — the CPU backend's layer kernels (float32, row-major, OpenBLAS + OpenMP); the model
 * reaches them through the backend table (backend.h, cpu/backend_cpu.c), tests call them directly.
 *
 * Conventions (as llm.c): activations are [N, C] with N = B*T rows; a linear layer's weight
 * is stored as HF does, [out, in], so out = inp @ W^T (+ bias). Every forward has its
 * backward next to it; backward functions ACCUMULATE (+=) into parameter gradients and into
 * input gradients unless the comment says "overwrites". */
#ifndef ZB_OPS_H
#define ZB_OPS_H

#include <stddef.h>
#include "backend.h"

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

/* ---- RoPE (SPEC §2, rotate-half layout; llama3 or YaRN frequency scaling, SPEC §3; zb_rope in backend.h) -- */
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

/* ---- causal (grouped-query) attention (zb_attn_shape in backend.h) ------------------------- */
/* probs [B,H,T,T] saved for backward. */
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
/* o: the backend options (backend.h zb_backend_opts: decode_omp picks split-K over cache chunks
 * threaded by OpenMP, else a GEMM per KV group on OpenBLAS, same result to rounding, ops.c says
 * why both; decode_simd the split-K tasks' instruction set; decode_chunk its chunk length,
 * clamped to 64..256). NULL: the defaults (all zeros). */
void zb_attention_decode(float *out, const float *q, const float *kc, const float *vc, int Tc,
                         int H, int Hkv, int dqk, int dv, int k_stride, int v_stride,
                         size_t k_group, size_t v_group, float scale, float *scratch,
                         const zb_backend_opts *o);

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
/* Mean over the N rows of ||s_n - t_n||_2 (rows of d, each norm summed in double); g (may be
 * NULL) OVERWRITTEN with scale * d/ds: the unit error vector / N (0 where s_n == t_n, the
 * subgradient). */
double zb_mean_row_dist(float *g, const float *s, const float *t, int N, int d, float scale);

/* ---- small elementwise helpers --------------------------------------------------------- */
static inline float zb_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
static inline float zb_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
/* softplus as torch: x for x > 20, else log1p(exp(x)). */
static inline float zb_softplus(float x) { return x > 20.0f ? x : __builtin_log1pf(__builtin_expf(x)); }

#endif
