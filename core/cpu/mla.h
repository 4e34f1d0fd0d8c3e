/* mla.h — Multi-head Latent Attention (SPEC.md §3; DeepSeek-V2/V3 form, Zebra options), the
 * CPU backend's implementation (the weight structs are in backend.h).
 *
 * Training path: full-sequence forward (expanded K/V, causal softmax) with backward.
 * Generation path: the cache holds only the normalised latent c (kv_lora_rank) and the
 * roped shared key k_pe (qk_rope) per token; decode absorbs W_UK into the query and W_UV
 * into the output so that K and V are never expanded. */
#ifndef ZB_MLA_H
#define ZB_MLA_H

#include <stddef.h>
#include "config.h"
#include "linear.h"
#include "ops.h"

/* Views of w's f32 matrices. */
zb_mla_lin zb_mla_lin_of(const zb_mla_weights *w);

/* The softmax scale of the scores: 1/sqrt(nope + rope) (SPEC §3), times YaRN's
 * get_mscale(factor, mscale_all_dim)^2 when the MLA's rope sets mscale_all_dim (DeepSeek; the
 * Zebra release leaves it 0). */
float zb_mla_softmax_scale(const zb_mla_dims *m);

/* Floats of saved activations for a [B,T] forward (training) and of backward scratch. */
size_t zb_mla_act_floats(const zb_mla_dims *m, int d, int B, int T);
size_t zb_mla_scratch_floats(const zb_mla_dims *m, int d, int B, int T);
/* out[B*T, d] = MLA(x[B*T, d]); positions 0..T-1. acts: zb_mla_act_floats floats. */
void zb_mla_forward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                    const zb_rope *rope, const float *x, float *out, float *acts, int B, int T);
/* View into acts after zb_mla_forward (tests): the attention output, the input of o_proj
 * [B*T, H*v_head_dim]. */
float *zb_mla_acts_att(const zb_mla_dims *m, float *acts, int B, int T);
/* dx[B*T,d] += d/dx; g (same layout as w) += parameter gradients. acts from the forward. */
void zb_mla_backward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                     zb_mla_weights *g, const zb_rope *rope, const float *x, const float *dout,
                     float *dx, float *acts, float *scratch, int B, int T);

/* The latent cache of one layer: backend.h zb_mla_cache_floats. Scratch of the step functions
 * (any number of tokens: rows are processed in blocks of a fixed size). */
size_t zb_mla_decode_scratch_floats(const zb_mla_dims *m, int d, int max_T);
/* Process n new tokens x[B*n, d] of each sequence b, sequence b starting at its own position
 * pos[b] (prefill: n = prompt length, pos[b] = 0; decode: n = 1; sequences of a batch may sit
 * at different positions). Appends their latents to sequence b's rows of cache and writes out
 * [B*n, d]. Uses absorbed weights (never expands K/V). */
void zb_mla_step(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                 const zb_rope *rope, const float *x, float *out, float *cache, int max_T,
                 const int *pos, int n, int B, float *scratch);
/* The same with the matrices taken from lin (f32 or bf16); w gives the norms. o: the decode
 * options (backend.h; NULL = defaults). */
void zb_mla_step_lin(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                     const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out,
                     float *cache, int max_T, const int *pos, int n, int B, float *scratch,
                     const zb_backend_opts *o);
/* Decode: one new token x[i] (row i of x[nb, d]) for each sequence seqs[i], at its position
 * pos[seqs[i]], against its rows cache + seqs[i] * seq_floats; writes out[nb, d]. Same result
 * as zb_mla_step_lin per sequence with n = 1, but the projections run on all nb rows at once
 * (every weight read once per step, not once per sequence). */
void zb_mla_decode_seqs(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                        const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out,
                        float *cache, size_t seq_floats, int max_T, const int *seqs,
                        const int *pos, int nb, float *scratch, const zb_backend_opts *o);

#endif
