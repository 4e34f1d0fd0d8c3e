/* cuda_mla.h — Multi-head Latent Attention on the GPU (the CPU form is core/mla.h).
 *
 * The weight structs are mla.h's, holding DEVICE pointers. Training: the expanded form of
 * mla.c (K = [k_nope | k_pe], V from kv_b of the latent) with the flash-style attention of
 * cuda_ops.h, so the saved activations hold a logsumexp per row instead of [B, H, T, T]
 * probabilities. Generation: the latent cache [c | k_pe] per token and the absorbed products
 * (W_UK into the query, W_UV after the attention), as zb_mla_decode_seqs. */
#ifndef ZB_CUDA_MLA_H
#define ZB_CUDA_MLA_H

#include "cuda_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "mla.h"

size_t zb_cuda_mla_act_floats(const zb_mla_dims *m, int d, int B, int T);
size_t zb_cuda_mla_scratch_floats(const zb_mla_dims *m, int d, int B, int T);
void zb_cuda_mla_forward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_rope *rope,
                         const float *x, float *out, float *acts, int B, int T);
void zb_cuda_mla_backward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, zb_mla_weights *g,
                          const zb_rope *rope, const float *x, const float *dout, float *dx, float *acts,
                          float *scratch, int B, int T);

/* Generation. The latent cache of one layer: slots x max_T rows of kv_lora_rank + qk_rope
 * elements (float32 or bf16). nb sequences seq[i] (device) get n new tokens x [nb*n, d] each, at
 * positions pos[i].. (device); their latents are appended and out [nb*n, d] written. max_len =
 * the largest pos[i] + n (host). scratch: zb_cuda_mla_gen_scratch_floats(m, d, nb*n). */
size_t zb_cuda_mla_gen_scratch_floats(const zb_mla_dims *m, int d, int rows);
void zb_cuda_mla_gen(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_mla_lin *lin,
                     const zb_rope *rope, const float *x, float *out, void *cache, int cache_bf16, int max_T,
                     const int *seq_dev, const int *pos_dev, int nb, int n, int max_len, float *scratch);

/* Decode (one token per sequence) in 6 launches instead of 14 while zb_cuda_dec_fuse(): q_a | kv_a
 * in one GEMV, q_b, zb_cuda_mla_dec_prep (RoPE, cache store, absorbed queries), the fused attention
 * with W_UV after its merge (zb_cuda_decode_mla_uv), o_proj. Positions p_i = pos[pidx[i]] (pidx
 * NULL: pos[i]), written to posi[i] when posi is not NULL (the attention then reads posi). 0 (nothing
 * done) where it does not apply: kv norm, a float32 cache, shapes of neither kernel, the fused
 * attention off (zb_cuda_mla_use_fused(0) / ZB_MLA_DECODE). Scratch as zb_cuda_mla_gen (rows = nb). */
int zb_cuda_mla_decode_fused(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_mla_lin *lin,
                             const zb_rope *rope, const float *x, float *out, void *cache, int cache_bf16, int max_T,
                             const int *seq_dev, const int *pos_dev, const int *pidx, int *posi, int nb,
                             float *scratch);

/* Decode (n = 1) on a bf16 cache through the fused kernel zb_cuda_decode_mla (1, the default) or
 * the cuBLAS form (0). */
void zb_cuda_mla_use_fused(int on);

#ifdef __cplusplus
}
#endif

#endif
