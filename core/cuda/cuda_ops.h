/* cuda_ops.h — the layer kernels of ops.h / linear.h / optim.h on the GPU.
 *
 * Same names with zb_cuda_, same arguments and the same semantics as the CPU kernels (row-major,
 * [N, C] activations, weights [out, in], backward ACCUMULATES unless "overwrites"), every
 * pointer a DEVICE pointer. The matrix products follow the precision mode of cuda_common.h.
 * Where the GPU form differs it says so: attention saves a logsumexp per row instead of the
 * probabilities (no T x T matrix is kept), the losses take device targets and return the sum on
 * the host (one synchronisation). */
#ifndef ZB_CUDA_OPS_H
#define ZB_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "linear.h"
#include "ops.h"

/* ---- matrix products (cuBLAS) --------------------------------------------------------- */
/* Row-major C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C; op = transpose when trans. */
void zb_cuda_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
/* The same over `batch` problems, operand i at A + i*strideA etc. (in floats). */
void zb_cuda_gemm_strided(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                          long long strideA, const float *B, int ldb, long long strideB, float beta, float *C,
                          int ldc, long long strideC, int batch);
/* Row-major C[M,N] = A[M,K] @ B[N,K]^T with bf16 A and B, float32 C (benchmarks: the tensor
 * cores' rate on bf16 data). */
void zb_cuda_gemm_bf16_native(int M, int N, int K, const void *A, const void *B, float *C);
void zb_cuda_matmul_forward(float *out, const float *inp, const float *W, const float *bias, int N, int C, int OC);
void zb_cuda_matmul_backward(float *dinp, float *dW, float *dbias, const float *dout, const float *inp,
                             const float *W, int N, int C, int OC);
/* The bf16 CONVERT mode's backward with both gradients rounds dout to bf16 once for both products
 * (1, the default) or once per product (0; ZB_CUDA_BWD_SHARED=0): the same bits. */
void zb_cuda_matmul_bwd_shared(int on);
/* out[N,OC] = inp[N,C] @ W^T with W float32 (precision mode) or bf16 (bf16 operands, the input
 * rounded to bf16 on the fly, float32 accumulation): generation with bf16 weights. */
void zb_cuda_linear_forward(float *out, const float *inp, zb_wt W, int N, int C, int OC);
/* The fusions of generation (backend.h's linear_forward3, swiglu_linear_forward): one GEMV launch
 * when the weights are bf16 and N, C fit it, else the separate products. */
void zb_cuda_linear_forward3(float *out0, float *out1, float *out2, const float *inp, zb_wt W0, zb_wt W1, zb_wt W2,
                             int N, int C, int OC0, int OC1, int OC2);
void zb_cuda_swiglu_linear_forward(float *h, float *u, const float *inp, zb_wt Wg, zb_wt Wu, int N, int C,
                                   int F);

/* ---- conversions ---------------------------------------------------------------------- */
void zb_cuda_f32_to_bf16(uint16_t *dst, const float *src, size_t n);   /* round to nearest even */
void zb_cuda_bf16_to_f32(float *dst, const uint16_t *src, size_t n);
/* dst [groups * rep, per] = each of src's `groups` rows of per elements repeated rep times
 * (src float32, or bf16 widened exactly): MLA's kv_b per query head, for one batched product. */
void zb_cuda_expand_groups(float *dst, const void *src, int src_bf16, int groups, int rep, size_t per);

/* ---- RMSNorm, RoPE, SwiGLU, embedding ------------------------------------------------ */
void zb_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps);
void zb_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                              const float *rstd, int N, int C);
/* 1: the backward in one pass (ZB_CUDA_NORM_BWD=fused), 0: two kernels (the default), -1: from the
 * environment */
void zb_cuda_rmsnorm_bwd_fused(int on);
/* r is the HOST table (zb_rope_init); it travels as a kernel argument. */
void zb_cuda_rope_apply_seq(const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                            int head_stride, int offset, int pos0, int interleave, int inverse);
/* Rows i < nrows at positions pos[i / per_seq] + i % per_seq (pos: device ints, one per
 * sequence): generation, where each sequence of a batch sits at its own position. */
/* x += a, then out = RMSNorm(x) with weight w, per row of C (backend.h add_rmsnorm) */
void zb_cuda_add_rmsnorm(float *x, const float *a, float *out, const float *w, int N, int C, float eps);
void zb_cuda_rope_apply_rows(const zb_rope *r, float *x, int nrows, int per_seq, const int *pos_dev,
                             int row_stride, int n_heads, int head_stride, int offset, int interleave,
                             int inverse);
void zb_cuda_swiglu_forward(float *h, const float *g, const float *u, size_t n);
void zb_cuda_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
/* bf16 activations (the bf16 MLP of zb_cuda_mlp_forward_bf16): the norm's output rounded to bf16
 * (rstd float32); SwiGLU reading and writing bf16, float32 arithmetic, one rounding per output.
 * gu [N, 2F]: row r is [g_r | u_r]; h, dh [N, F]; dgu [N, 2F] as gu (dg_r | du_r). */
void zb_cuda_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const float *x, const float *w, int N, int C, float eps);
void zb_cuda_swiglu_forward_bf16(uint16_t *h, const uint16_t *gu, int N, int F);
void zb_cuda_swiglu_backward_bf16(uint16_t *dgu, const uint16_t *dh, const uint16_t *gu, int N, int F);
/* The MLP of a training block (backend.h mlp_forward / mlp_backward) with bf16 activations: the
 * norm writes ln in bf16, one product with the stacked [Wg; Wu] writes [g | u] in bf16 (float32
 * sums) into g's floats (u's are not used), SwiGLU bf16, down_proj reads bf16 and writes float32;
 * backward: dout rounded to bf16 once, dh and [dg | du] (into dg's floats) in bf16, dln (one
 * product over 2F) and the weight gradients float32. ln, g, h, dh, dg hold bf16. Taken
 * in the bf16 CONVERT mode unless ZB_CUDA_MLP_BF16=0 (or zb_cuda_mlp_bf16(0)); returns 0 when not
 * taken (the caller makes the separate float32-activation calls). A forward and its backward
 * must run under the same mode and switch (the saved activations' format). */
void zb_cuda_mlp_bf16(int on);   /* -1: from the environment */
int zb_cuda_mlp_forward_bf16(float *out, float *ln, float *rstd, float *g, float *u, float *h, const float *x,
                             const float *norm_w, const float *Wg, const float *Wu, const float *Wd, int N, int d, int F,
                             float eps);
int zb_cuda_mlp_backward_bf16(float *dln, float *dWg, float *dWu, float *dWd, const float *dout, const float *ln,
                              const float *g, const float *u, const float *h, const float *Wg, const float *Wu,
                              const float *Wd, float *dh, float *dg, float *du, int N, int d, int F);
/* backend.h mlp_linear_forward with bf16 matrices at N >= 1024 rows (the KD teacher's forward):
 * the input rounded to bf16 once, [g | u] in bf16 (one product where Wg, Wu are stacked) in g's
 * floats, h in bf16 in u's, the down product into float32 out. 0: not taken (float32 matrices,
 * fewer rows, ZB_CUDA_MLP_BF16=0): the caller makes the separate calls. */
int zb_cuda_mlp_linear_forward_bf16(float *out, float *g, float *u, const float *inp, zb_wt Wg, zb_wt Wu, zb_wt Wd,
                                    int N, int C, int F, int OC);
/* ids: device ints. The backward adds with atomics (the order of the additions varies). */
void zb_cuda_embedding_forward(float *out, const int *ids, const float *table, int N, int C);
void zb_cuda_embedding_forward_bf16(float *out, const int *ids, const uint16_t *table, int N, int C);
void zb_cuda_embedding_backward(float *dtable, const float *dout, const int *ids, int N, int C);

/* n values a (2 zb_hash_uniform(seed, i) - 1) into x (float32, or bf16 when bf16): the host's
 * synthetic fills (benchmark weights and caches) made on the device. */
void zb_cuda_fill_uniform(void *x, int bf16, size_t n, uint64_t seed, float a);

/* ---- small elementwise helpers ---------------------------------------------------------- */
void zb_cuda_add(float *out, const float *a, const float *b, size_t n);     /* out = a + b */
void zb_cuda_sub(float *out, const float *a, const float *b, size_t n);     /* out = a - b */
void zb_cuda_axpy(float *y, float a, const float *x, size_t n);              /* y += a x */
/* out[i] = src[idx[i]] (idx NULL: src[i]) for i < n, device ints; out[i] = i. */
void zb_cuda_gather_int(int *out, const int *src, const int *idx, int n);
void zb_cuda_iota(int *out, int n);
void zb_cuda_scale(float *x, float a, size_t n);                             /* x *= a */
/* Copy `cols` floats of each of `rows` rows: dst row i at dst + i*dst_stride, src likewise. */
void zb_cuda_copy_cols(float *dst, int dst_stride, const float *src, int src_stride, int rows, int cols);
/* dst row i += src row i over cols floats (strided rows). */
void zb_cuda_add_cols(float *dst, int dst_stride, const float *src, int src_stride, int rows, int cols);

/* ---- causal GQA attention, flash-style --------------------------------------------------
 * Same shapes and strides as zb_attention_forward (zb_attn_shape); instead of the
 * probabilities it saves lse [B, H, T] (the log of each row's softmax denominator, scaled
 * scores). The products run on cuBLAS in blocks of query rows against the keys up to the block's
 * end (causal), so the memory is a [H, rows, T] block, never [B, H, T, T]; the backward
 * recomputes each block's probabilities from lse. dq, dk, dv OVERWRITTEN (head columns). */
void zb_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                               const zb_attn_shape *s);
/* out: the forward's output (the flash backward's D = rowsum(dO * O)). */
void zb_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                const float *lse, const float *q, const float *k, const float *v,
                                const zb_attn_shape *s);
/* Query rows per block (tests force small blocks to exercise the seams; 0 = by memory). */
void zb_cuda_attention_block_rows(int rows);
/* In the bf16 mode, head dims 64 / 128 (dqk == dv), aligned rows: the fused tensor-core flash
 * kernels of cuda_flash.cu (1, the default) or the blocked cuBLAS path (0; tests compare them). */
void zb_cuda_attention_use_flash(int on);
int zb_cuda_flash_supported(const zb_attn_shape *s, const void *q, const void *k, const void *v);
void zb_cuda_flash_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                           const zb_attn_shape *s);
void zb_cuda_flash_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                            const float *q, const float *k, const float *v, const zb_attn_shape *s);
/* Which flash kernels zb_cuda_flash_forward / _backward run: 2 = cuda_flash2.cu (FlashAttention-2
 * style: bf16 head-major copies, cp.async double buffering, ldmatrix), 1 = the first version of
 * cuda_flash.cu. The default (ZB_FLASH_DEFAULT in cuda_flash.cu) can be overridden by ZB_FLASH
 * (old or 1, new or 2), read at the first call; 0 restores it. zb_cuda_flash_version says which
 * one runs. */
void zb_cuda_flash_set_version(int v);
int zb_cuda_flash_version(void);
/* Version 2's launch shapes (benchmarks, tests). Forward CTA: 1 = 4 warps x 16 query rows, 2 = 8
 * warps x 16 rows, 3 = 4 warps x 32 rows (0 = ZB_FLASH_FWD or the default, 3). Backward CTA: 1 =
 * 4 warps x 16 keys with registers for 2 CTAs per SM, 2 = the same for 3 CTAs per SM (head dim
 * 64; 128 takes 1), 3 = 8 warps x 16 keys (0 = ZB_FLASH_BWD or the default: 2 for head dim 64,
 * 1 for 128). */
void zb_cuda_flash2_tune(int fwd_shape, int bwd_shape);
void zb_cuda_flash2_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                            const zb_attn_shape *s);
void zb_cuda_flash2_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                             const float *q, const float *k, const float *v, const zb_attn_shape *s);

/* ---- attention over caches (generation) ---------------------------------------------------
 * nb sequences, n new query rows each (row t of sequence i at position pos[i] + t, already in
 * the cache); sequence i's cache rows are K/V base + seq[i] * seq_stride (elements), KV group g
 * at + g * group_stride, position u at + u * row_stride. q [nb*n, H*dqk], out [nb*n, H*dv]
 * (float32). Keys of positions <= pos + t are attended. The cache is float32 (cache_bf16 0) or
 * bf16 (1, then q and the probabilities are rounded to bf16 for the products). seq_dev, pos_dev:
 * device ints [nb]; max_len: the largest pos[i] + n over the batch (host). */
typedef struct {
    int H, Hkv, dqk, dv;
    long long seq_stride, group_stride, row_stride;   /* elements of the cache */
    float scale;
    int cache_bf16;
} zb_cuda_cache_attn;
void zb_cuda_attention_cached(float *out, const float *q, const void *kc, const void *vc, const int *seq_dev,
                              const int *pos_dev, int nb, int n, int max_len, const zb_cuda_cache_attn *a);
/* The same on cuBLAS whatever n: per sequence (n > 1: and head) S = q K^T, the masked softmax,
 * out = P V as batched GEMMs (tensor cores with bf16 caches); n == 1 takes the rep heads of a
 * group as the rows of one product (MLA's latent cache: all 32 heads against one group). S
 * takes nb * H * n * max_len floats of the device's scratch. */
void zb_cuda_attention_cached_gemm(float *out, const float *q, const void *kc, const void *vc, const int *seq_dev,
                                   const int *pos_dev, int nb, int n, int max_len, const zb_cuda_cache_attn *a);
/* One new token per sequence (n = 1) by flash-decoding (cuda_decode.cu): each sequence's length
 * is read on the device from pos (pos[i] + 1 keys), so no host round trip; max_T bounds the
 * positions. zb_cuda_decode_attn_ok: at most 64 heads per group, their queries in 96 KB.
 * zb_cuda_attention_cached takes this path for n = 1 by itself. */
int zb_cuda_decode_attn_ok(int H, int Hkv, int dqk);
void zb_cuda_decode_attn(float *out, const float *q, const void *kc, const void *vc, const int *seq_dev,
                         const int *pos_dev, int nb, int max_T, const zb_cuda_cache_attn *a);
/* MLA's decode attention (n = 1) in one fused pass over a bf16 latent cache (cuda_decode.cu):
 * one group (Hkv 1) of H <= 64 heads, rows of dqk (a multiple of 16, <= 256) whose first dv
 * columns (a multiple of 16) are the values (kc == vc); each cache row read once, S = Q K^T and
 * P V on the tensor cores (q and the probabilities rounded to bf16, float32 sums), online softmax,
 * chunks merged as zb_cuda_decode_attn's. _ok: the shapes it takes. */
int zb_cuda_decode_mla_ok(const void *kc, const void *vc, const zb_cuda_cache_attn *a);
void zb_cuda_decode_mla(float *out, const float *q, const void *cache, const int *seq_dev, const int *pos_dev,
                        int nb, int max_T, const zb_cuda_cache_attn *a);
/* Which fused kernel: 0 the register one (mma.sync, scores and output in registers; dqk <= 256,
 * dv <= 160, H <= 64; the wmma kernel for other shapes), 1 the older wmma one (scores, output
 * through shared memory), -1 from the environment: ZB_MLA_DECODE=wmma picks the older one. */
void zb_cuda_decode_mla_set_kernel(int k);
/* out[N, OC] = x[N, C] @ W^T for bf16 W and 1 <= N <= 8 (zb_cuda_gemv_ok: C % 8 == 0, 16-byte
 * aligned x and W): warps stream W's rows (split over C when OC is small; decode with bf16
 * weights). _multi: up to 3 matrices on the same x in one launch (q, k, v), out_s [N, OC_s];
 * _swiglu: h[N, F] = silu(x Wg^T) * (x Wu^T) in one launch (gate, up). set_split forces the
 * warps per row (1, 2, 4, 8; 0 = chosen per shape: 2 at one row over >= 1024 columns, else the
 * S6 rule; 16 = the S6 rule everywhere, ZB_GEMV_SPLIT=auto), for the benchmark. */
int zb_cuda_gemv_ok(const void *x, const void *W, int N, int C);
void zb_cuda_gemv_bf16(float *out, const float *x, const uint16_t *W, int N, int C, int OC);
typedef struct { const uint16_t *W; float *out; int OC; } zb_gemv_seg;
void zb_cuda_gemv_bf16_multi(const float *x, int N, int C, int nseg, const zb_gemv_seg *segs);
void zb_cuda_gemv_bf16_swiglu(float *h, const float *x, const uint16_t *Wg, const uint16_t *Wu, int N, int C, int F);
/* out = x W^T (as zb_cuda_gemv_bf16), then nx += out and ln = RMSNorm(nx) nw by the grid's last
 * block, in the same launch (generation's residual step after a projection; the same bits as
 * zb_cuda_add_rmsnorm after the GEMV). 0 (nothing launched) when it does not apply: ZB_GEMV_NORM=0,
 * not a GEMV (zb_cuda_gemv_ok), OC <= 128. _norm_set(1 / 0) forces, (-1) reads the environment. */
int zb_cuda_gemv_bf16_add_rmsnorm(float *out, const float *x, const uint16_t *W, int N, int C, int OC, float *nx,
                                  float *ln, const float *nw, float eps);
int zb_cuda_gemv_norm_on(void);
void zb_cuda_gemv_norm_set(int on);
/* linear_forward then add_rmsnorm (backend.h linear_add_rmsnorm): one launch where the GEMV applies */
void zb_cuda_linear_add_rmsnorm(float *out, const float *inp, zb_wt W, int N, int C, int OC, float *x, float *ln,
                                const float *w, float eps);
void zb_cuda_gemv_set_split(int ks);
/* 16-byte weight loads in flight per lane of the one-row GEMV: 4 or 8; 9: 8 for the single matrices,
 * 4 for the gate|up pair (0: ZB_GEMV_UNROLL: 4 the default, 8, or 8s for 9) */
void zb_cuda_gemv_set_unroll(int u);
/* bytes of a decode GEMV's weights fetched into the L2 before it waits on the kernel before (PDL):
 * -1 = ZB_GEMV_PREFETCH_MB (default 0: none), -2 = each lane's first round of loads only */
void zb_cuda_gemv_set_prefetch(long long bytes);
/* the first round of a decode GEMV's weight loads issued into registers before its PDL wait, while
 * a decode step is recorded (zb_cuda_recording; the weights constant): off unless ZB_GEMV_PRELOAD=1;
 * _set(1 / 0) forces it, _set(-1) reads the environment again. The same products, the same bits. */
int zb_cuda_gemv_preload(void);
void zb_cuda_gemv_set_preload(int on);
/* The decode step's bf16 products of 9..64 rows (linear_forward with bf16 weights): cuBLASLt's
 * candidates and cublasGemmEx timed once per shape at its first eager use, the fastest kept
 * (cuda_gemm.cu). tune: 1 on (the default; ZB_CUDA_GEMM_TUNE=0 turns it off), 0 off, -1 from the
 * environment. reset forgets the choices (shutdown). choice: 1 Lt, 0 cublasGemmEx, -1 not tuned;
 * the times measured (ms, may be NULL). */
void zb_cuda_gemm_tune(int on);
void zb_cuda_gemm_tune_reset(void);
int zb_cuda_gemm_tune_choice(int N, int C, int OC, float *ms_lt, float *ms_ex);
/* The decode step's small pieces fused (cuda_decode.cu): on unless ZB_DEC_FUSE=0 in the environment;
 * _set(1 / 0) forces it (tests and benchmarks compare), _set(-1) reads the environment again. */
int zb_cuda_dec_fuse(void);
void zb_cuda_dec_fuse_set(int on);
/* The decode GEMVs launched with programmatic dependent launch (cuda_pdl.cuh: their first weight
 * loads overlap the end of the kernel before): on unless ZB_DEC_PDL=0; _set as above. */
int zb_cuda_dec_pdl(void);
void zb_cuda_dec_pdl_set(int on);
/* Attention decode (one token per sequence i < nb, slot seq[i] at position pos[seq[i]]): the query
 * heads of q [nb, H*hd] roped in place, the key heads of k [nb, Hkv*hd] roped and stored with v's
 * into the head-major caches (strides as zb_cuda_cache_attn, row stride hd), posi[i] = pos[seq[i]];
 * the same values as zb_cuda_gather_int + zb_cuda_rope_apply_rows + zb_cuda_cache_store.
 * _ok: the fused path is on and takes the table (rotary dim <= hd). */
int zb_cuda_decode_qkv_prep_ok(const zb_rope *r, int hd);
void zb_cuda_decode_qkv_prep(const zb_rope *r, float *q, const float *k, const float *v, void *kc, void *vc,
                             int cache_bf16, const int *seq_dev, const int *pos_dev, int *posi, int nb, int H, int Hkv,
                             int hd, long long seq_stride, long long group_stride);
/* The attention of a decode step in one kernel (cuda_decode.cu): zb_cuda_decode_qkv_prep's work
 * (RoPE of q and k, k and v stored into the caches at p = pos[seq[i]], posi[i] = p; q itself is
 * left unroped), flash-decoding over the caches and the chunks' merge (by the last block of each
 * (sequence, group)), out [nb, H*dv] as zb_cuda_decode_attn's. Returns 0 without doing anything
 * where it does not take the shapes (D = dqk = dv of 64, 128 or 256; 1, 2, 4 or 8 heads per group;
 * rotary dim a multiple of 16; 16-byte aligned rows) or ZB_DEC_ATTN=old / ZB_DEC_FUSE=0 is set:
 * then the separate kernels do it. _set(1 / 0) forces it on / off, -1 reads the environment. */
int zb_cuda_decode_attn_fused(const zb_rope *r, float *out, const float *q, const float *k, const float *v, void *kc,
                              void *vc, const int *seq_dev, const int *pos_dev, int *posi, int nb, int max_T,
                              const zb_cuda_cache_attn *a);
void zb_cuda_decode_attn_fused_set(int on);
/* the most chunks a sequence's attention is split into for its merge to be done inside the kernel
 * (by the last block of each group); more: k_decode_merge after it. -1: ZB_DEC_ATTN_MERGE_MAX
 * from the environment, default 16. */
void zb_cuda_decode_attn_set_merge_max(int n);
/* MLA decode (cuda_decode.cu), the fused path of zb_cuda_mla_decode_fused (cuda_mla.h):
 * _dec_prep: per sequence i the absorbed queries qlat [nb, H, R + dr] = [W_UK_h^T q_nope_h |
 * RoPE(q_pe_h)] from q [nb, H, dn + dr] and kv_b ([groups][dn + dvo][R], group h / rep; bf16 or
 * float32), and the latent row [c | RoPE(k_pe)] of kva [nb, R + dr] stored into the cache (slot
 * seq[i], row stride R + dr, slot stride seq_stride elements) at p = pos[pidx[i]] (pidx NULL:
 * pos[i]); posi[i] = p (posi may be NULL). _ok: the shapes it takes.
 * _decode_mla_uv: zb_cuda_decode_mla with W_UV after the merge: out [nb, H, dvo], the value rows
 * dn.. of kv_b times each head's merged latent row. */
int zb_cuda_mla_dec_prep_ok(const zb_rope *r, int dn, int dr);
void zb_cuda_mla_dec_prep(const zb_rope *r, const float *q, const float *kva, const void *kv_b, int kv_b_bf16,
                          float *qlat, void *cache, int cache_bf16, const int *seq_dev, const int *pos_dev,
                          const int *pidx, int *posi, int nb, int H, int rep, int dn, int dvo, int dr, int R,
                          int interleave, long long seq_stride);
void zb_cuda_decode_mla_uv(float *out, const float *q, const void *cache, const int *seq_dev, const int *pos_dev,
                           int nb, int max_T, const zb_cuda_cache_attn *a, const void *kv_b, int kv_b_bf16, int rep,
                           int dn, int dvo);
/* positions per block of the decode attention (0 = chosen per call), for the benchmark */
void zb_cuda_decode_set_chunk(int ch);
/* Write rows into a cache (float32 or bf16): source row r = (i, t) (i < nb sequences, t < n
 * tokens) at src + r * src_stride, its `groups` runs of `width` floats go to sequence seq[i]'s
 * group g at position pos[i] + t (strides in elements, as zb_cuda_cache_attn). */
void zb_cuda_cache_store(void *cache, int cache_bf16, const float *src, int src_stride, const int *seq_dev,
                         const int *pos_dev, int nb, int n, int groups, int width, long long seq_stride,
                         long long group_stride, long long row_stride);

/* ---- losses (device logits, device targets / mask; sums returned to the host) ---------------- */
/* Cross-entropy and KL: the fused two-pass kernels (0, the default; cuda_loss.cu) or the kernels of
 * one pass per statistic (1; ZB_CUDA_LOSS=rows in the environment); tests compare both. */
void zb_cuda_loss_use_rows(int on);
double zb_cuda_cross_entropy(float *dlogits, const float *logits, const int *targets, int N, int V, float scale);
/* The same, also counting the rows with a target in [0, V) (*n_valid, host; may be NULL). */
double zb_cuda_cross_entropy_n(float *dlogits, const float *logits, const int *targets, int N, int V, float scale,
                               int *n_valid);
/* backend.h cross_entropy_head: in the bf16 CONVERT mode the gradient goes in bf16 only to the next
 * zb_cuda_matmul_backward with dout = logits (zb_cuda_dout16), else zb_cuda_cross_entropy in
 * place. ZB_CUDA_DLOGITS16=0 (or zb_cuda_dlogits16(0); -1: the environment): always the latter. */
double zb_cuda_cross_entropy_head(float *logits, const int *targets, int N, int V, float scale);
void zb_cuda_dlogits16(int on);
int zb_cuda_dlogits16_on(void);
/* The bf16 buffer [N, OC] the next zb_cuda_matmul_backward with this dout takes as dout already
 * rounded (its float32 contents not read), or NULL where that backward would not (then nothing is
 * recorded). Nothing else may use the GEMM_A scratch in between. */
uint16_t *zb_cuda_dout16(const float *dout, int N, int OC);
/* zb_cuda_matmul_forward (no bias) / zb_cuda_matmul_backward (no bias) with the input activation
 * given in bf16 (in16 [N, C]): the bf16 CONVERT mode's products without its conversion (the same
 * bits). 0: another mode (nothing done). */
int zb_cuda_matmul_forward_in16(float *out, const uint16_t *in16, const float *W, int N, int C, int OC);
int zb_cuda_matmul_backward_in16(float *dinp, float *dW, const float *dout, const uint16_t *in16, const float *W,
                                 int N, int C, int OC);
double zb_cuda_kl_div(float *dstudent, const float *student, const float *teacher, const int *mask, int N, int V,
                      float tau, float scale);
/* The vocabulary-parallel cross-entropy's passes (backend.h vp_row_max / vp_row_sums / vp_ce_grad). */
void zb_cuda_vp_row_max(float *mx, const float *logits, int N, int V);
void zb_cuda_vp_row_sums(double *st, const float *logits, const float *mx, const int *targets, int N, int V, long long v0);
double zb_cuda_vp_ce_grad(float *dlogits, const float *logits, const float *mx, const double *st, const int *targets,
                          int N, int V, long long v0, long long Vfull, float scale);
/* out[n] = the argmax of row n of x [N, V] (backend.h argmax_rows: zb_sample's greedy pick);
 * out: device ints. */
void zb_cuda_argmax_rows(int *out, const float *x, int N, int V);
/* argmax_rows over many blocks a row (N <= 64, V in 4097..262144; one launch, the last block of a
 * row picks): on unless ZB_ARGMAX_SPLIT=0; _set(1 / 0) forces, (-1) reads the environment again */
void zb_cuda_argmax_set_split(int on);
/* the same in a vocabulary slice and over the slices (backend.h argmax_pairs / argmax_pick) */
void zb_cuda_argmax_pairs(int *pairs, const float *x, int N, int V, long long v0);
void zb_cuda_argmax_pick(int *out, const int *pairs, int N, int P);
/* for i < nb: pos[seqs[i]] += 1, ids[i] = next[i] - v0 if in [0, V) else -1 (backend.h
 * decode_advance); device ints, one kernel. */
void zb_cuda_decode_advance(int *ids, int *pos, const int *next, const int *seqs, int nb, long long v0, int V);
double zb_cuda_mse(float *da, const float *a, const float *b, size_t n, float scale);
/* The mean over N rows of ||s_n - t_n||_2 (rows of d; each norm in double); g (may be NULL)
 * OVERWRITTEN with scale (s_n - t_n) / (||s_n - t_n|| N), 0 where the rows are equal. */
double zb_cuda_mean_row_dist(float *g, const float *s, const float *t, int N, int d, float scale);
/* Per-row target log-probabilities logp[r] = logits[r, y_r] - logsumexp(row r) (0 where the
 * target is < 0), double, device output: DPO's sequence log-likelihoods. */
void zb_cuda_target_logprobs(double *logp_dev, const float *logits, const int *targets, int N, int V);

/* AdamW over one contiguous range of n floats with the per-range constants of optim.h:
 * decay = 1 - lr_i wd_i, step_size = lr_i / (1 - beta1^t), bc2s = sqrt(1 - beta2^t). */
void zb_cuda_adamw_range(float *w, const float *g, float *m, float *v, size_t n, float beta1, float beta2,
                         float eps, float decay, float step_size, float bc2s, float grad_scale);
/* sum of x^2 over n floats (double), returned to the host. */
double zb_cuda_sumsq_range(const float *x, size_t n);

/* backend.h adamw_ranges / sumsq_ranges: every range in one launch (r: HOST table). */
void zb_cuda_adamw_ranges(float *w, const float *g, float *m, float *v, int n, const zb_range *r, float beta1,
                          float beta2, float eps, float bc2s, float grad_scale);
double zb_cuda_sumsq_ranges(const float *x, int n, const zb_range *r);

/* ---- optimizer ------------------------------------------------------------------------------
 * A list of parameter segments [off, off + n) of the flat float32 buffers with their learning
 * rate multiplier and weight decay (the trainable parameters of a zb_adamw), held on the device. */
typedef struct zb_cuda_segs zb_cuda_segs;
int zb_cuda_segs_create(zb_cuda_segs **s, int n, const size_t *off, const size_t *len, const float *lr_mult,
                        const float *wd);
void zb_cuda_segs_free(zb_cuda_segs *s);
/* sum of g^2 over the segments (double), returned to the host. */
double zb_cuda_sumsq(const zb_cuda_segs *s, const float *g);
/* One AdamW update (optim.h's formula, torch.optim.AdamW) of every segment: w, g, m, v are the
 * flat buffers; t = the step number (1-based) of the bias corrections. */
void zb_cuda_adamw(const zb_cuda_segs *s, float *w, const float *g, float *m, float *v, float lr, float beta1,
                   float beta2, float eps, float grad_scale, long long t);

#ifdef __cplusplus
}
#endif

#endif
