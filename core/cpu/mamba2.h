/* mamba2.h — the Mamba2 (SSD) mixer (SPEC.md §4), HF Mamba2Mixer semantics.
 *
 * in_proj rows [z | x | B | C | dt]; depthwise causal conv1d (+bias) and SiLU over [x|B|C];
 * dt = clamp(softplus(dt + dt_bias)); A = -exp(A_log); per head h:
 *   S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,  y_t = S_t C_t + D x_t
 * then gated RMSNorm of y * silu(z) per norm_group channels, weight, out_proj.
 * Training: chunked SSD (chunk from dims); generation: one-token recurrence with a conv
 * state and an SSM state per sequence. The CPU backend's implementation (the weight structs
 * and the state layout zb_mamba2_state_floats are in backend.h). */
#ifndef ZB_MAMBA2_H
#define ZB_MAMBA2_H

#include <stddef.h>
#include "config.h"
#include "backend.h"
#include "linear.h"

size_t zb_mamba2_act_floats(const zb_mamba2_dims *m, int d, int B, int T);
size_t zb_mamba2_scratch_floats(const zb_mamba2_dims *m, int d, int B, int T);
/* out[B*T,d] = Mamba2(x[B*T,d]) by the chunked SSD algorithm (ragged last chunk allowed).
 * acts (act_floats) keeps what the backward needs, incl. the SSM state at each chunk start. */
void zb_mamba2_forward(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                       const float *x, float *out, float *acts, int B, int T);
/* Views into acts after zb_mamba2_forward (tests, debugging): the SSD output y (D x included,
 * before the gate and norm) [B*T, d_inner], the conv+SiLU output [x|B|C] [B*T, conv_dim], and
 * the gated-norm output o (the input of out_proj) [B*T, d_inner]. */
float *zb_mamba2_acts_y(const zb_mamba2_dims *m, float *acts, int B, int T);
float *zb_mamba2_acts_xbc(const zb_mamba2_dims *m, float *acts, int B, int T);
float *zb_mamba2_acts_o(const zb_mamba2_dims *m, float *acts, int B, int T);
/* dx += ; g += parameter gradients. acts as left by the forward; scratch (scratch_floats)
 * is overwritten. */
void zb_mamba2_backward(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                        zb_mamba2_weights *g, const float *x, const float *dout, float *dx,
                        float *acts, float *scratch, int B, int T);

size_t zb_mamba2_step_scratch_floats(const zb_mamba2_dims *m, int d, int n);
/* Process n new tokens x[B*n, d] for B sequences, continuing from state[B * state_floats]
 * (zeroed by the caller before the first call) and updating it. Prefill (n > 1) uses the
 * chunked form with the state as initial state; n == 1 is the recurrent step. Sequences are
 * processed one after another (scratch is sized for n tokens, not B*n). */
void zb_mamba2_step(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                    const float *x, float *out, float *state, int n, int B, float *scratch);
/* The same with in_proj / out_proj taken from lin (f32 or bf16); w gives the rest. */
void zb_mamba2_step_lin(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                        const zb_mamba2_lin *lin, const float *x, float *out, float *state, int n,
                        int B, float *scratch);
/* Decode: one new token x[i] (row i of x[nb, d]) for each sequence seqs[i], whose state is
 * state + seqs[i] * state_floats; writes out[nb, d]. Same result as zb_mamba2_step_lin per
 * sequence with n = 1, but in_proj / out_proj run on all nb rows at once (every weight read
 * once per step). scratch: zb_mamba2_step_scratch_floats(m, d, nb) floats. opt: the decode
 * options (backend.h; NULL = defaults: the per-head loop on one thread). */
void zb_mamba2_decode_seqs(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                           const zb_mamba2_lin *lin, const float *x, float *out, float *state,
                           const int *seqs, int nb, float *scratch, const zb_backend_opts *opt);

#endif
