/* backend.h — the compute-backend seam: every kernel the model, the trainer and the optimizer
 * run goes through one table of function pointers, so that a second backend (CUDA, issue 17)
 * adds files (core/cuda/) instead of editing model.c. core/cpu/ fills the table with the
 * float32 OpenBLAS / OpenMP kernels; zb_backend_get picks a table by name.
 *
 * ---- The contract (what every backend's entries must do) ---------------------------------
 * Memory.  Every pointer argument that names a tensor or an index array (ids, targets, mask,
 *   seqs, pos, caches, scratch, weights and gradients, including the float* fields of the
 *   weight structs and the zb_wt views) is memory of this backend's device, allocated by
 *   be->alloc (or an offset into such memory). Descriptor arguments are HOST memory read
 *   during the call: zb_attn_shape, zb_rope (the frequency table: pass it by value to a GPU
 *   kernel, it is about 1 KB), the dims structs, zb_adamw_hp, the weight structs themselves
 *   (their pointer fields are device memory), and scalar out-parameters (n_valid).
 *   be->host_memory = 1 says the device memory IS host memory (the CPU): host code may then
 *   read tensors directly, and to_host / to_device with dst == src do nothing.
 * Layout.  float32 row-major: activations [N, C] with N = B*T rows (row b*T + t is token t of
 *   sequence b); a linear weight is [out, in] as HF stores it (out = inp @ W^T); a bf16 weight
 *   (zb_wt.bf16) is raw bfloat16 bits of the same shape. Caches and states have the layouts
 *   of the shared functions below (zb_mla_cache_floats, zb_mamba2_state_floats, the attention
 *   cache in zb_gen) so that a checkpointed or host-filled cache means the same everywhere.
 * Overwrite / accumulate.  Forwards OVERWRITE their outputs. Backwards ACCUMULATE (+=) into
 *   parameter gradients (dW, dbias, dw, dtable, the g weight struct) and into the input
 *   gradient dx / dinp, unless the entry says "overwrites" (attention_backward's dq, dk, dv;
 *   swiglu_backward's dg, du; the losses' gradients). A NULL gradient pointer is skipped.
 *   Aliasing is allowed only where an entry says so.
 * Scratch and saved activations.  The caller allocates them (once, by be->alloc) with the
 *   sizes the *_floats / *_scratch queries of the SAME backend return; their contents belong
 *   to the backend between a forward and its backward (a GPU flash attention saves a
 *   logsumexp [B,H,T], the CPU the probabilities [B,H,T,T]). Scratch is overwritten by each
 *   call. An entry that needs temporary memory without a scratch argument manages it itself
 *   (e.g. a workspace kept in be->ctx); it must not keep pointers to the caller's memory.
 * Order.  Entries may run asynchronously on the device, in call order (one stream). Entries
 *   returning a value (the losses, sumsq) and to_host return only when that value / copy is
 *   complete. be->sync waits for everything queued (timing).
 * Determinism.  Same inputs, same backend, same options: the same bits (tests compare runs).
 * Numerics.  float32 accumulation at least; the losses accumulate in double (or a compensated
 *   float32 sum with the same error bound); tests compare a backend's kernels with the CPU
 *   ones at tolerances derived from the reduction length.
 *
 * Every entry takes the table itself first (its options, its device context). */
#ifndef ZB_BACKEND_H
#define ZB_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* ---- shared descriptor types -------------------------------------------------------------- */

/* A weight matrix held as float32 or bfloat16 (exactly one of the two is set). */
typedef struct {
    const float *f32;      /* float32 storage, or NULL */
    const uint16_t *bf16;  /* raw bfloat16 bits, or NULL */
} zb_wt;

static inline zb_wt zb_wt_of_f32(const float *w) { zb_wt t = {w, 0}; return t; }
static inline zb_wt zb_wt_of_bf16(const uint16_t *w) { zb_wt t = {0, w}; return t; }
/* The view advanced by k elements (a row block or a head's rows of a matrix). */
static inline zb_wt zb_wt_offset(zb_wt t, size_t k) {
    if (t.f32) t.f32 += k;
    if (t.bf16) t.bf16 += k;
    return t;
}

/* RoPE (SPEC §2, rotate-half layout; llama3 or YaRN frequency scaling, SPEC §3): the float32 inverse
 * frequencies, computed on the host by zb_rope_init. The angle of pair i at position p is the
 * float32 product p * inv_freq[i] (as HF). */
/* ZB_ROPE_MAX_DIM: config.h */
typedef struct {
    int dim;                                /* rotary dimension (even) */
    float inv_freq[ZB_ROPE_MAX_DIM / 2];
    float mscale;                           /* cos and sin are multiplied by it (YaRN; else 1) */
} zb_rope;
void zb_rope_init(zb_rope *r, int dim, const zb_rope_cfg *cfg);

/* Causal grouped-query attention: q [B,T, H*dqk] rows of stride q_stride; k [B,T, Hkv*dqk]
 * rows of stride k_stride; v [B,T, Hkv*dv] rows of stride v_stride; out [B,T, H*dv] (stride
 * H*dv). Query head h uses kv head h / (H / Hkv). */
typedef struct {
    int B, T, H, Hkv, dqk, dv;
    int q_stride, k_stride, v_stride;   /* row strides in floats */
    float scale;                        /* usually 1/sqrt(dqk) */
} zb_attn_shape;

/* MLA weights (HF DeepSeek names under self_attn.); NULL for the ones the dims do not use
 * (q_proj vs q_a/q_b; norms when off). */
typedef struct {
    float *q_proj;        /* [H*(nope+rope), d]               (q_lora_rank == 0) */
    float *q_a_proj;      /* [q_lora_rank, d]                 (q_lora_rank > 0) */
    float *q_a_norm;      /* [q_lora_rank]                    (q_norm) */
    float *q_b_proj;      /* [H*(nope+rope), q_lora_rank] */
    float *kv_a_proj;     /* [kv_lora_rank + rope, d]  (kv_a_proj_with_mqa) */
    float *kv_a_norm;     /* [kv_lora_rank]                   (kv_norm) */
    float *kv_b_proj;     /* [kv_heads*(nope+v), kv_lora_rank] */
    float *o_proj;        /* [d, H*v] */
} zb_mla_weights;
/* The same matrices as tagged views (f32 or bf16): the generation entries read these. */
typedef struct { zb_wt q_proj, q_a_proj, q_b_proj, kv_a_proj, kv_b_proj, o_proj; } zb_mla_lin;

/* Mamba2 weights (HF Mamba2Mixer names under mamba.). */
typedef struct {
    float *in_proj;    /* [d_inner + x_groups*headdim + (b_groups+c_groups)*d_state + nheads, d] */
    float *conv_w;     /* [conv_dim, 1, K]  conv_dim = x_groups*headdim + (b_groups+c_groups)*d_state */
    float *conv_b;     /* [conv_dim] (NULL if !conv_bias) */
    float *dt_bias;    /* [nheads] */
    float *A_log;      /* [nheads] */
    float *D;          /* [nheads] */
    float *norm_w;     /* [d_inner] */
    float *out_proj;   /* [d, d_inner] */
} zb_mamba2_weights;
/* in_proj / out_proj as tagged views (f32 or bf16), for generation. */
typedef struct { zb_wt in_proj, out_proj; } zb_mamba2_lin;

/* ---- layouts shared by every backend (caches, states) ------------------------------------- */
int zb_mamba2_in_proj_rows(const zb_mamba2_dims *m);
int zb_mamba2_conv_dim(const zb_mamba2_dims *m);
/* One sequence's Mamba2 generation state: conv state [conv_dim, K-1] then SSM state
 * [nheads, headdim, d_state]. */
size_t zb_mamba2_state_floats(const zb_mamba2_dims *m);
/* MLA latent cache of B sequences: sequence b's rows [max_T, kv_lora_rank + qk_rope] at
 * b * max_T * (kv_lora_rank + qk_rope), each row [normed latent c | roped k_pe]. */
size_t zb_mla_cache_floats(const zb_mla_dims *m, int B, int max_T);
/* GQA attention cache of one layer (zb_gen): K then V, each [B][Hkv][max_T][hd] (head-major
 * per sequence: a KV head's rows are one contiguous stream). */

/* ---- options ------------------------------------------------------------------------------ */
/* Per-backend switches (were process-wide globals in ops.c); all zeros = the defaults. Set
 * them on a copy of a table:
 *   zb_backend be = *zb_backend_cpu(); be.opts.decode_omp = 1; zb_model_set_backend(&m, &be);
 * The OpenMP thread count stays the OpenMP runtime's own setting (omp_set_num_threads, which
 * OpenBLAS's OpenMP build follows too), set once per process by the driver. */
enum { ZB_SIMD_BEST = 0, ZB_SIMD_AVX2 = 1, ZB_SIMD_PORTABLE = 2 };
typedef struct {
    /* CPU decode: 1 = split-K decode attention threaded by OpenMP and the per-head decode loops
     * of MLA / Mamba2 threaded too (bf16 weights, or OpenBLAS on OpenMP); 0 = one GEMM per KV
     * group on OpenBLAS (f32 weights with OpenBLAS's pthreads build). Same result to rounding. */
    int decode_omp;
    /* CPU split-K tasks (zb_simd): ZB_SIMD_BEST AVX-512 where present and dqk % 16 == 0, else
     * AVX2+FMA where dqk % 8 == 0; ZB_SIMD_AVX2 AVX2 at most; ZB_SIMD_PORTABLE plain loops. */
    int decode_simd;
    /* CPU split-K chunk length (tests: 64..256); 0 = chosen per call for the thread count. */
    int decode_chunk;
    /* CUDA: 1 = matrix products with bf16 operands and float32 accumulation (the weights stay
     * float32); 0 = float32 products. */
    int gpu_bf16;
    /* Generation caches (zb_gen): 1 = the attention K/V and the MLA latents stored as bf16 (half
     * the memory and the bytes read per decode step; the Mamba2 states stay float32), 0 =
     * float32. A cache pointer then addresses bf16 elements (its float* type is only a handle).
     * The CUDA backend only: the CPU's kernels read float32 caches. */
    int cache_bf16;
    /* Training attention: 1 = q | k | v as one product into rows [q | k | v] (one rounding of the
     * input, one weight-gradient product) where wq, wk, wv lie one after the other (float32
     * weights, as zb_model lays them out), 0 = three products. Same values up to summation order
     * in the input gradient. The CUDA table sets 1 (ZB_QKV_FUSED=0: 0); the CPU keeps 0. */
    int qkv_fused;
} zb_backend_opts;

/* AdamW hyper-parameters of one parameter range for one update (optim.h has the formula). */
typedef struct {
    float beta1, beta2, eps;
    float decay;        /* 1 - lr_i * wd_i (decoupled weight decay, applied first) */
    float step_size;    /* lr_i / (1 - beta1^t) */
    float bc2_sqrt;     /* sqrt(1 - beta2^t) */
    float grad_scale;   /* the clipping factor: g is multiplied by it first */
} zb_adamw_hp;

/* One range of a multi-range optimizer call: n floats at offset off from the call's base
 * pointers, and (AdamW) its decay = 1 - lr_i wd_i and step_size = lr_i / (1 - beta1^t). */
typedef struct {
    size_t off, n;
    float decay, step_size;
} zb_range;

/* ---- the table ------------------------------------------------------------------------------- */
typedef struct zb_backend zb_backend;
struct zb_backend {
    const char *name;          /* "cpu", "cuda" */
    int host_memory;           /* 1: device memory is host memory (see the contract) */
    zb_backend_opts opts;
    void *ctx;                 /* the backend's own state (handles, streams, workspaces) */

    /* Every field from here on is a function pointer (zb_backend_missing checks them all). */

    /* -- memory: bytes; alloc returns zeroed memory, or NULL after zb_fail(ZB_ENOMEM, ...) */
    void *(*alloc)(const zb_backend *be, size_t bytes, const char *what);
    void (*free)(const zb_backend *be, void *p);                       /* NULL: nothing */
    void (*zero)(const zb_backend *be, void *p, size_t bytes);
    void (*copy)(const zb_backend *be, void *dst, const void *src, size_t bytes);  /* device -> device, no overlap */
    void (*to_device)(const zb_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*to_host)(const zb_backend *be, void *host_dst, const void *src, size_t bytes);
    /* rows x cols floats from src (row stride src_ld) to dst (row stride dst_ld), device -> device */
    void (*copy_2d)(const zb_backend *be, float *dst, size_t dst_ld, const float *src, size_t src_ld,
                    size_t rows, size_t cols);
    void (*sync)(const zb_backend *be);

    /* -- elementwise over n floats (out may alias a or b; x in place) */
    void (*add)(const zb_backend *be, float *out, const float *a, const float *b, size_t n);   /* a + b */
    void (*sub)(const zb_backend *be, float *out, const float *a, const float *b, size_t n);   /* a - b */
    void (*scale)(const zb_backend *be, float *x, float s, size_t n);                          /* x *= s */

    /* -- linear layers (f32 master weights: training) */
    /* out[N,OC] = inp[N,C] @ W[OC,C]^T + bias[OC] (bias may be NULL). */
    void (*matmul_forward)(const zb_backend *be, float *out, const float *inp, const float *W,
                           const float *bias, int N, int C, int OC);
    /* dinp[N,C] += dout @ W; dW[OC,C] += dout^T @ inp; dbias += colsum(dout). NULLs skipped. */
    void (*matmul_backward)(const zb_backend *be, float *dinp, float *dW, float *dbias, const float *dout,
                            const float *inp, const float *W, int N, int C, int OC);
    /* out[N,OC] = inp[N,C] @ W^T with W f32 or bf16 (generation), float32 accumulation. */
    void (*linear_forward)(const zb_backend *be, float *out, const float *inp, zb_wt W, int N, int C, int OC);
    /* Generation's products fused where a backend gains by it (one launch on a GPU; the CPU
     * makes the separate calls): q | k | v from one input (out_s[N, OC_s]), and h[N, F] =
     * silu(inp Wg^T) * (inp Wu^T) (u: [N, F] floats it may use). Same results as the separate
     * calls, up to summation order. */
    void (*linear_forward3)(const zb_backend *be, float *out0, float *out1, float *out2, const float *inp,
                            zb_wt W0, zb_wt W1, zb_wt W2, int N, int C, int OC0, int OC1, int OC2);
    void (*swiglu_linear_forward)(const zb_backend *be, float *h, float *u, const float *inp, zb_wt Wg, zb_wt Wu,
                                  int N, int C, int F);
    /* The whole MLP of an inference forward (infer.c: the KD teacher) from its normed input:
     * out[N, OC] = (silu(inp Wg^T) * (inp Wu^T)) Wd^T, Wg, Wu [F, C], Wd [OC, F]; g, u: [N, F]
     * floats it may use. The CPU makes swiglu_linear_forward then linear_forward; a GPU keeps g,
     * u, h in bf16 for bf16 matrices at many rows, one rounding per stored value. (Generation
     * keeps the separate calls: its results must not depend on how many rows a step has.) */
    void (*mlp_linear_forward)(const zb_backend *be, float *out, float *g, float *u, const float *inp, zb_wt Wg,
                               zb_wt Wu, zb_wt Wd, int N, int C, int F, int OC);

    /* -- RMSNorm (SPEC §2): out = w * x / sqrt(mean(x^2) + eps) per row of C; rstd[N] saved
     * (may be NULL when not training). out may alias x. Backward: dx += , dw += . */
    void (*rmsnorm_forward)(const zb_backend *be, float *out, float *rstd, const float *x, const float *w,
                            int N, int C, float eps);
    void (*rmsnorm_backward)(const zb_backend *be, float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int N, int C);
    /* The residual step of generation and the next norm together: x += a, then out = RMSNorm(x)
     * (one pass on a GPU). */
    void (*add_rmsnorm)(const zb_backend *be, float *x, const float *a, float *out, const float *w, int N, int C,
                        float eps);
    /* A projection then the residual step and the next norm: out[N, OC] = inp W^T, x += out,
     * ln = RMSNorm(x) (linear_forward then add_rmsnorm, the same bits; one launch on a GPU at
     * decode: the GEMV's last block makes the norm). */
    void (*linear_add_rmsnorm)(const zb_backend *be, float *out, const float *inp, zb_wt W, int N, int C, int OC,
                               float *x, float *ln, const float *w, float eps);

    /* -- RoPE in place on x [B*T rows of row_stride]: token (b, t) at position pos0 + t; the
     * r->dim values at row + h*head_stride + offset for h < n_heads. interleave: values stored
     * as pairs (2i, 2i+1), permuted to [evens | odds] first (HF apply_rotary_pos_emb_interleave).
     * inverse = 1 applies the transpose (the backward; it also un-permutes). */
    void (*rope)(const zb_backend *be, const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                 int head_stride, int offset, int pos0, int interleave, int inverse);

    /* -- causal GQA attention (zb_attn_shape). saved: attention_saved_floats floats kept from
     * the forward for the backward. The backward OVERWRITES the head columns of dq, dk, dv
     * (same strides as q, k, v); out is the forward's output (a flash backward needs it). */
    size_t (*attention_saved_floats)(const zb_backend *be, const zb_attn_shape *s);
    void (*attention_forward)(const zb_backend *be, float *out, float *saved, const float *q, const float *k,
                              const float *v, const zb_attn_shape *s);
    void (*attention_backward)(const zb_backend *be, float *dq, float *dk, float *dv, const float *dout,
                               const float *out, const float *saved, const float *q, const float *k,
                               const float *v, const zb_attn_shape *s);
    /* Generation: nb sequences seqs[0..nb) (distinct slots < B), n new tokens each: rows
     * i*n .. i*n+n-1 of q [.., H*hd], k, v [.., Hkv*hd] are sequence seqs[i]'s tokens at
     * positions pos[seqs[i]] + t. Ropes q and k in place (rope r, positions as above), appends
     * k and v to the cache (kc, vc: [B][Hkv][max_T][hd] each), and writes att [nb*n, H*hd]:
     * each token attends to its sequence's cache up to and including itself (scale
     * 1/sqrt(hd)). pos is not advanced. scratch: attention_step_scratch floats. */
    size_t (*attention_step_scratch)(const zb_backend *be, int H, int Hkv, int hd, int max_T, int ntok);
    void (*attention_step)(const zb_backend *be, const zb_rope *r, float *att, float *q, float *k, const float *v,
                           float *kc, float *vc, int max_T, const int *seqs, const int *pos, int nb, int n,
                           int H, int Hkv, int hd, float *scratch);

    /* -- SwiGLU: h = silu(g) * u over n (h may alias g or u); backward OVERWRITES dg, du. */
    void (*swiglu_forward)(const zb_backend *be, float *h, const float *g, const float *u, size_t n);
    void (*swiglu_backward)(const zb_backend *be, float *dg, float *du, const float *dh, const float *g,
                            const float *u, size_t n);
    /* -- the MLP half of a block (SPEC §2), whole, so that a backend keeps the activations that
     * only feed products in its own format (the CUDA bf16 mode: bf16, each written by the kernel
     * that makes it). Forward: ln = RMSNorm(x; norm_w, eps) with rstd[N] saved, then OVERWRITES
     * out[N,d] = (silu(ln Wg^T) * (ln Wu^T)) Wd^T. ln [N,d] and g, u, h [N,F] are float buffers
     * saved for the backward whose contents belong to the backend (float32 on the CPU: the
     * separate calls' values). Backward from dout = d/d out: OVERWRITES dln [N,d] = d/d ln (the
     * caller goes back through the norm, after a TP all-reduce), dWg, dWu, dWd += (NULL:
     * skipped); dh, dg, du [N,F] scratch. Weights: float32 [F,d], [F,d], [d,F]. zb_mlp_*_calls
     * (below) make it from the separate entries. */
    void (*mlp_forward)(const zb_backend *be, float *out, float *ln, float *rstd, float *g, float *u, float *h,
                        const float *x, const float *norm_w, const float *Wg, const float *Wu, const float *Wd,
                        int N, int d, int F, float eps);
    void (*mlp_backward)(const zb_backend *be, float *dln, float *dWg, float *dWu, float *dWd, const float *dout,
                         const float *ln, const float *g, const float *u, const float *h, const float *Wg,
                         const float *Wu, const float *Wd, float *dh, float *dg, float *du, int N, int d, int F);

    /* -- embedding: out[N,C] = rows ids[n] of table [V,C] (f32 or bf16, widened exactly); an
     * id < 0 gives a row of zeros (forward only: a vocabulary-parallel shard's view of another
     * rank's token); backward dtable[ids[n]] += dout[n] (f32 table). */
    void (*embedding_forward)(const zb_backend *be, float *out, const int *ids, zb_wt table, int N, int C);
    void (*embedding_backward)(const zb_backend *be, float *dtable, const float *dout, const int *ids,
                               int N, int C);

    /* -- losses over rows [N, V], each returning a SUM over rows (accumulated in double):
     * cross_entropy: rows with target outside [0, V) ignored; *n_valid (host, may be NULL)
     *   counts the others; dlogits (may be NULL, may alias logits) OVERWRITTEN with
     *   scale * (softmax - onehot), zero rows where ignored.
     * kl_div: KL(teacher || student) at temperature tau, rows with mask[r] == 0 skipped (mask
     *   may be NULL); dstudent (may be NULL, may alias student) OVERWRITTEN with
     *   scale * (ps - pt) / tau, zero rows where skipped.
     * mse: returns sum((a-b)^2) / n (the mean); da (may be NULL) OVERWRITTEN with scale*2(a-b)/n.
     * Every loss returns only when its value is known (the host reads it). */
    double (*cross_entropy)(const zb_backend *be, float *dlogits, const float *logits, const int *targets,
                            int N, int V, float scale, int *n_valid);
    /* cross_entropy_head: cross_entropy with the gradient in place (logits OVERWRITTEN) for the
     *   training step, where the next use of it is matmul_backward(dout = logits) of the head:
     *   until that call the float32 contents of logits are undefined (the CUDA backend's bf16 mode
     *   hands the gradient over in bf16 only; the CPU's is cross_entropy). */
    double (*cross_entropy_head)(const zb_backend *be, float *logits, const int *targets, int N, int V,
                                 float scale);
    double (*kl_div)(const zb_backend *be, float *dstudent, const float *student, const float *teacher,
                     const int *mask, int N, int V, float tau, float scale);
    double (*mse)(const zb_backend *be, float *da, const float *a, const float *b, size_t n, float scale);
    /* mean_row_dist: the mean over N rows of ||s_n - t_n||_2 (rows of d, each norm in double);
     *   g (may be NULL) OVERWRITTEN with scale * (s_n - t_n) / (||s_n - t_n|| N), 0 where the
     *   rows are equal (ILD as the release). */
    double (*mean_row_dist)(const zb_backend *be, float *g, const float *s, const float *t, int N, int d,
                            float scale);
    /* -- the vocabulary-parallel cross-entropy (core/shard.c): rows [N, V] hold the slice
     * [v0, v0 + V) of a vocabulary of Vfull ids. Three passes around the TP group's two
     * all-reduces (max, then sums), so that a device's rows never leave it (Megatron-LM's
     * vocab-parallel CE):
     * vp_row_max: mx[n] = the largest value of row n;
     * vp_row_sums: with the group's mx: st[2n] = sum_v exp(row[v] - mx[n]) (double),
     *   st[2n + 1] = row[y_n - v0] when the slice holds target y_n, else 0;
     * vp_ce_grad: with the group's mx and st: returns the sum over the rows whose target is in
     *   [0, Vfull) of mx[n] + log st[2n] - st[2n + 1] (double); dlogits (may be NULL, may alias
     *   logits) OVERWRITTEN with scale * (softmax - onehot) on the slice, zero rows ignored.
     * mx, st and targets live where the backend's buffers do. */
    void (*vp_row_max)(const zb_backend *be, float *mx, const float *logits, int N, int V);
    void (*vp_row_sums)(const zb_backend *be, double *st, const float *logits, const float *mx, const int *targets,
                        int N, int V, int64_t v0);
    double (*vp_ce_grad)(const zb_backend *be, float *dlogits, const float *logits, const float *mx, const double *st,
                         const int *targets, int N, int V, int64_t v0, int64_t Vfull, float scale);
    /* -- greedy decoding on the device: out[n] = the index of the largest value of row n of x
     * [N, V], as zb_sample's scan (model.h): the lowest index on ties (-0 == +0), a NaN never
     * chosen, 0 when x[n, 0] is NaN. out: N ints where the backend's buffers are. */
    void (*argmax_rows)(const zb_backend *be, int *out, const float *x, int N, int V);
    /* -- the same pick over a vocabulary split in slices (TP's head: x [N, V] holds columns
     * v0 .. v0 + V of the full rows), in two steps around an all-gather of 2 N ints per slice:
     * argmax_pairs: pairs[2n] = the bits of the slice's largest value of row n (the first of
     *   equal ones; NaN never chosen), pairs[2n + 1] = its full index v0 + i, INT_MAX when the
     *   row's slice is all NaN, -1 when v0 == 0 and x[n, 0] is NaN (argmax_rows' pick 0);
     * argmax_pick: out[n] = the pick over the P slices' pairs [P][N][2] (slices in increasing
     *   v0): what argmax_rows gives on the full rows. pairs and out where the backend's buffers are. */
    void (*argmax_pairs)(const zb_backend *be, int *pairs, const float *x, int N, int V, int64_t v0);
    void (*argmax_pick)(const zb_backend *be, int *out, const int *pairs, int N, int P);
    /* -- pipelined greedy decode (zebra generate): the next decode step's inputs made from this
     * step's picks where they are, so that the next step can be queued before the host has read
     * them: for i < nb, pos[seqs[i]] += 1 and ids[i] = next[i] - v0 when v0 <= next[i] < v0 + V,
     * else -1 (a vocabulary-parallel shard's view of another rank's token; v0 = 0 and V the
     * vocabulary otherwise). ids, pos, next, seqs where the backend's buffers are. */
    void (*decode_advance)(const zb_backend *be, int *ids, int *pos, const int *next, const int *seqs, int nb,
                           int64_t v0, int V);

    /* -- the MLA mixer (SPEC §3), whole, so that a backend fuses freely. Training: x, out
     * [B*T, d], positions 0..T-1; acts (mla_act_floats) saved by the forward for the backward;
     * backward dx += , g += , scratch (mla_scratch_floats) overwritten.
     * Generation (absorbed form over the latent cache, zb_mla_cache_floats): mla_step feeds n
     * tokens x[B*n, d] of B sequences, sequence b's cache at cache + b*max_T*(r+dr) and its
     * first position pos[b], writing out [B*n, d] and appending the latents; mla_decode_seqs
     * one token x[i] of each sequence seqs[i] (cache at cache + seqs[i]*seq_floats, position
     * pos[seqs[i]]). Neither advances pos. w gives the norms, lin the matrices (f32 or bf16).
     * scratch: mla_step_scratch(max_T, ntok) floats for calls of up to ntok tokens. */
    size_t (*mla_act_floats)(const zb_backend *be, const zb_mla_dims *m, int d, int B, int T);
    size_t (*mla_scratch_floats)(const zb_backend *be, const zb_mla_dims *m, int d, int B, int T);
    void (*mla_forward)(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                        const zb_rope *rope, const float *x, float *out, float *acts, int B, int T);
    void (*mla_backward)(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                         zb_mla_weights *g, const zb_rope *rope, const float *x, const float *dout, float *dx,
                         float *acts, float *scratch, int B, int T);
    size_t (*mla_step_scratch)(const zb_backend *be, const zb_mla_dims *m, int d, int max_T, int ntok);
    void (*mla_step)(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                     const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out, float *cache,
                     int max_T, const int *pos, int n, int B, float *scratch);
    void (*mla_decode_seqs)(const zb_backend *be, const zb_mla_dims *m, int d, float eps,
                            const zb_mla_weights *w, const zb_mla_lin *lin, const zb_rope *rope, const float *x,
                            float *out, float *cache, size_t seq_floats, int max_T, const int *seqs,
                            const int *pos, int nb, float *scratch);

    /* -- the Mamba2 mixer (SPEC §4), whole. Training as MLA (chunked SSD). Generation: state of
     * sequence b at state + b*zb_mamba2_state_floats (zeroed before its first token);
     * mamba2_step feeds n tokens of B sequences (n > 1: the chunked form from the state,
     * n == 1: the recurrence), mamba2_decode_seqs one token of each sequence seqs[i] (state at
     * state + seqs[i]*state_floats). scratch: mamba2_step_scratch(ntok) floats for calls of up
     * to ntok tokens (n for mamba2_step, nb for decode_seqs). */
    size_t (*mamba2_act_floats)(const zb_backend *be, const zb_mamba2_dims *m, int d, int B, int T);
    size_t (*mamba2_scratch_floats)(const zb_backend *be, const zb_mamba2_dims *m, int d, int B, int T);
    void (*mamba2_forward)(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                           const zb_mamba2_weights *w, const float *x, float *out, float *acts, int B, int T);
    void (*mamba2_backward)(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                            const zb_mamba2_weights *w, zb_mamba2_weights *g, const float *x, const float *dout,
                            float *dx, float *acts, float *scratch, int B, int T);
    size_t (*mamba2_step_scratch)(const zb_backend *be, const zb_mamba2_dims *m, int d, int ntok);
    void (*mamba2_step)(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                        const zb_mamba2_weights *w, const zb_mamba2_lin *lin, const float *x, float *out,
                        float *state, int n, int B, float *scratch);
    void (*mamba2_decode_seqs)(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                               const zb_mamba2_weights *w, const zb_mamba2_lin *lin, const float *x, float *out,
                               float *state, const int *seqs, int nb, float *scratch);

    /* -- optimizer: one AdamW update of n floats (torch.optim.AdamW, optim.h):
     * g' = g * grad_scale; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
     * w = w * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps). */
    void (*adamw)(const zb_backend *be, float *w, const float *g, float *m, float *v, size_t n,
                  const zb_adamw_hp *hp);
    /* sum of x[i]^2 in double (the gradient norm). */
    double (*sumsq)(const zb_backend *be, const float *x, size_t n);
    /* The same over many ranges at once (every parameter of a model: one pass, one launch on a
     * GPU instead of one per tensor): adamw over each range r[i] of w, g, m, v + r[i].off with
     * r[i].decay and r[i].step_size (hp's own decay and step_size unused); sumsq_ranges returns
     * the sum over the ranges of x + r[i].off (double; decay, step_size unused). Same results as
     * the calls per range up to the order of the double additions. */
    void (*adamw_ranges)(const zb_backend *be, float *w, const float *g, float *m, float *v, int n,
                         const zb_range *r, const zb_adamw_hp *hp);
    double (*sumsq_ranges)(const zb_backend *be, const float *x, int n, const zb_range *r);
    /* n values a (2 zb_hash_uniform(seed, i) - 1) into x, as float32, or as bf16 when bf16 (the
     * synthetic caches and weights of the benchmarks, made where the memory is). */
    void (*fill_uniform)(const zb_backend *be, void *x, int bf16, size_t n, uint64_t seed, float a);
    /* Recording a repeated decode step and replaying it as one launch (a device backend; the
     * CPU records nothing and returns 0). *g: the caller's handle (NULL at first). op
     * ZB_GRAPH_REPLAY: launch what was recorded under key, return 1; 0 when nothing is (or the
     * memory it used may have moved). ZB_GRAPH_BEGIN: record the calls that follow instead of
     * running them (1 if recording). ZB_GRAPH_END: stop, launch the recording, return 1; 0 when
     * recording failed: nothing ran, the caller makes the calls again. ZB_GRAPH_END_HOLD: as
     * END but launch nothing (the ranks of a TP group first agree that each recorded its step:
     * a recording with collectives is launched by all of them or by none; then REPLAY).
     * ZB_GRAPH_FREE: release. */
    int (*step_graph)(const zb_backend *be, void **g, int op, long long key);
    /* Reading the results of queued work while later work runs, and the device time of steps
     * (zebra generate's decode). *q: the caller's handle (NULL at first). op:
     * ZB_STEPQ_START / ZB_STEPQ_STOP: marks before / after a step's work (not while recording);
     *   the time between each pair on the device (not the host's) adds to the sum that
     *   ZB_STEPQ_TIME returns in seconds (it waits for the marks queued);
     * ZB_STEPQ_FETCH: queue a copy of bytes from src (device memory) to the host after the work
     *   queued so far, without waiting (at most ZB_STEPQ_DEPTH fetches not yet waited for);
     * ZB_STEPQ_WAIT: wait for the oldest fetch not yet waited for, its bytes into dst (host);
     * ZB_STEPQ_FREE: release. Returns 0 (TIME: the seconds), -1 after zb_fail (a full queue,
     * no memory). A synchronous backend (the CPU) copies at FETCH and times with its clock. */
    double (*step_queue)(const zb_backend *be, void **q, int op, void *dst, const void *src, size_t bytes);
    /* Timing the pieces of the mixers (zebra bench --train --breakdown): with parts non-NULL
     * the mixer calls that follow synchronise after each piece and add its wall time to
     * parts[ZB_MIXP_*]; NULL stops. A backend whose mixers have no timed pieces (the CPU) does
     * nothing. */
    void (*mixer_profile)(const zb_backend *be, double *parts);
};

/* The timed pieces of the Mamba2 mixer (mixer_profile), forward then backward. */
enum { ZB_MIXP_M2_IN_PROJ, ZB_MIXP_M2_CONV, ZB_MIXP_M2_COEF, ZB_MIXP_M2_STATES, ZB_MIXP_M2_PASS, ZB_MIXP_M2_SCAN,
       ZB_MIXP_M2_NORM, ZB_MIXP_M2_OUT_PROJ,
       ZB_MIXP_M2_OUT_PROJ_B, ZB_MIXP_M2_NORM_B, ZB_MIXP_M2_DSTATES_B, ZB_MIXP_M2_PASS_B, ZB_MIXP_M2_DX_B,
       ZB_MIXP_M2_DC_B, ZB_MIXP_M2_DB_B, ZB_MIXP_M2_SCAL_B, ZB_MIXP_M2_SUMS_B, ZB_MIXP_M2_DT_B, ZB_MIXP_M2_CONV_B,
       ZB_MIXP_M2_IN_PROJ_B, ZB_MIXP_N };
/* "in_proj", "dt + conv", ... (backend.c); ZB_MIXP_M2_OUT_PROJ_B is the first backward piece. */
extern const char *const zb_mixp_names[ZB_MIXP_N];

enum { ZB_GRAPH_REPLAY = 0, ZB_GRAPH_BEGIN, ZB_GRAPH_END, ZB_GRAPH_FREE, ZB_GRAPH_END_HOLD };   /* step_graph's op */
enum { ZB_STEPQ_START = 0, ZB_STEPQ_STOP, ZB_STEPQ_TIME, ZB_STEPQ_FETCH, ZB_STEPQ_WAIT, ZB_STEPQ_FREE };   /* step_queue's op */
#define ZB_STEPQ_DEPTH 4

/* mlp_forward / mlp_backward made of be's separate entries (rmsnorm, matmul, swiglu): the CPU's
 * MLP, and a device backend's where it keeps float32 activations. */
void zb_mlp_forward_calls(const zb_backend *be, float *out, float *ln, float *rstd, float *g, float *u, float *h,
                          const float *x, const float *norm_w, const float *Wg, const float *Wu, const float *Wd,
                          int N, int d, int F, float eps);
void zb_mlp_linear_forward_calls(const zb_backend *be, float *out, float *g, float *u, const float *inp, zb_wt Wg,
                                 zb_wt Wu, zb_wt Wd, int N, int C, int F, int OC);
void zb_mlp_backward_calls(const zb_backend *be, float *dln, float *dWg, float *dWu, float *dWd, const float *dout,
                           const float *ln, const float *g, const float *u, const float *h, const float *Wg,
                           const float *Wu, const float *Wd, float *dh, float *dg, float *du, int N, int d, int F);

/* The CPU backend (core/cpu/): OpenBLAS + OpenMP, host memory, default options. */
const zb_backend *zb_backend_cpu(void);
/* "cpu", or "cuda" when built with it (-DZB_CUDA=ON: core/cuda/ defines zb_backend_cuda); NULL
 * after zb_fail(ZB_EARG, ...) naming what exists. */
const zb_backend *zb_backend_get(const char *name);
/* The name of the first NULL entry of be, or NULL when the table is complete. */
const char *zb_backend_missing(const zb_backend *be);

/* Allocate n floats / ints on be (zeroed), or fail the enclosing function with ZB_ENOMEM. */
#define ZB_BE_ALLOC(be, ptr, n, what) do { (ptr) = (be)->alloc((be), (size_t)(n) * sizeof(*(ptr)), (what)); \
    if (!(ptr)) return ZB_ENOMEM; } while (0)

/* The CPU backend's process-wide settings (core/cpu/linear.c), which the driver sets at start
 * and prints. zb_blas_uses_openmp: 1 when OpenBLAS is its OpenMP build (CMakeLists.txt prefers
 * it): BLAS calls then run on the same libgomp threads as our kernels (one pool), and inside
 * our parallel regions on one thread; 0 for the pthreads build (a second pool, which must not
 * run beside OpenMP regions). zb_linear_threads: the OpenMP threads of the CPU kernels (1
 * without OpenMP). zb_bf16_impl_name: the bf16 matrix kernel of that choice, ZB_BF16_AUTO: the
 * one picked for this CPU ("avx512", "avx2", "scalar"; core/cpu/linear.h runs them). */
int zb_blas_uses_openmp(void);
int zb_linear_threads(void);
void zb_linear_set_threads(int n);
typedef enum { ZB_BF16_AUTO = 0, ZB_BF16_SCALAR, ZB_BF16_AVX2, ZB_BF16_AVX512 } zb_bf16_impl;
const char *zb_bf16_impl_name(zb_bf16_impl impl);

#endif
