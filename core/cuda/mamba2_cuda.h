/* mamba2_cuda.h — the Mamba2 (SSD) mixer on CUDA, float32 (SPEC.md §4; semantics of core/mamba2.c).
 *
 * The whole-mixer entries have the signatures of core/mamba2.h with DEVICE pointers: every
 * pointer argument is device memory except m and w / g / lin themselves (host structs whose
 * fields are device pointers). Gradients accumulate (+=) as on the CPU.
 *
 * Buffers differ from the CPU sizes in three places (hence own size functions):
 *  - acts: the CPU prefix proj | xbc_pre | xbc | dt | y | rstd | o | states (so
 *    zb_mamba2_acts_y / _xbc give the same views) followed by the per-head coefficients
 *    cs | exp(cs) | exp(cs_end - cs) dt | dt, each [B, nheads, T], instead of the CPU chunk temps;
 *  - scratch (backward): the CPU prefix dproj | dxbc | dy | ddt, then the kernels' own buffers;
 *  - step scratch: all B*n rows at once (the CPU runs sequences one after another), so it takes B.
 * decode_seqs: seqs is a device array of nb ints.
 *
 * Matrix products go through one cuBLAS handle and stream (zb_cuda_mamba2_set_blas); bf16 views
 * in zb_mamba2_lin: on the backend's stream (zb_cuda_init done) its GEMV at <= 8 rows and its
 * cuBLAS bf16 product above (the input rounded to bf16); elsewhere a tiled kernel here (f32
 * accumulate of the widened weights, as the CPU's bf16 path). Kernel launch errors print one line naming
 * the kernel and exit (no CUDA call here returns an error code to the caller). */
#ifndef ZB_MAMBA2_CUDA_H
#define ZB_MAMBA2_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "mamba2.h"

/* The cuBLAS handle (cublasHandle_t) and stream (cudaStream_t) every call runs on; NULL handle:
 * one is created on first use, bound to `stream` (NULL: the default stream). */
void zb_cuda_mamba2_set_blas(void *cublas_handle, void *stream);

/* Timing the pieces of the forward / backward (backend.h mixer_profile): parts non-NULL: each
 * piece of the calls that follow synchronises the stream and adds its wall time to
 * parts[ZB_MIXP_M2_*]; NULL: off (no synchronisation). */
void zb_cuda_mamba2_profile(double *parts);

size_t zb_cuda_mamba2_act_floats(const zb_mamba2_dims *m, int d, int B, int T);
size_t zb_cuda_mamba2_scratch_floats(const zb_mamba2_dims *m, int d, int B, int T);
/* Scratch of zb_cuda_mamba2_step / _step_lin for B sequences of n tokens (decode_seqs: n = 1,
 * B = nb). */
size_t zb_cuda_mamba2_step_scratch_floats(const zb_mamba2_dims *m, int d, int n, int B);

void zb_cuda_mamba2_forward(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                            const float *x, float *out, float *acts, int B, int T);
void zb_cuda_mamba2_backward(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                             zb_mamba2_weights *g, const float *x, const float *dout, float *dx,
                             float *acts, float *scratch, int B, int T);
/* state: B * zb_mamba2_state_floats(m) floats, [conv state | SSM state] per sequence as on the CPU.
 * state_bf16 (_lin, decode_seqs): the SSM part is kept in bf16 in the first half of its float32
 * room (the conv state stays float32): read, updated in float32, rounded once when stored; the
 * step's output y takes the float32 value (as mamba_ssm's selective_state_update on a bf16 cache,
 * whose dtype follows the in_proj weight's). The backend sets it with bf16 weights and caches
 * (ZB_M2_STATE=f32 keeps float32). */
void zb_cuda_mamba2_step(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                         const float *x, float *out, float *state, int n, int B, float *scratch);
void zb_cuda_mamba2_step_lin(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                             const zb_mamba2_lin *lin, const float *x, float *out, float *state,
                             int n, int B, float *scratch, int state_bf16);
void zb_cuda_mamba2_decode_seqs(const zb_mamba2_dims *m, int d, float eps, const zb_mamba2_weights *w,
                                const zb_mamba2_lin *lin, const float *x, float *out, float *state,
                                const int *seqs, int nb, float *scratch, int state_bf16);

/* ---- the stages the mixer is made of (device pointers; tests compare each with the CPU) ---- */

/* dt[N, nh] = clamp(softplus(proj[:, P-nh+h] + dt_bias[h])) (proj rows of P floats). */
void zb_cuda_m2_dt_forward(const zb_mamba2_dims *m, const float *dt_bias, const float *proj,
                           float *dt, int N);
/* Causal depthwise conv + SiLU over B sequences of T rows: in = proj + d_inner (rows of P);
 * pre (may be NULL) and post [B*T, cd]. hist (may be NULL): sequence b's conv state at
 * hist + b * hist_stride, [cd, K-1] oldest first, standing in for the rows before t = 0. */
void zb_cuda_m2_conv_forward(const zb_mamba2_dims *m, const float *conv_w, const float *conv_b,
                             const float *proj, const float *hist, size_t hist_stride, float *pre,
                             float *post, int B, int T);
/* Moves each sequence's conv state on past n new rows (in = proj + d_inner, rows of P). */
void zb_cuda_m2_conv_state_update(const zb_mamba2_dims *m, const float *proj, float *hist,
                                  size_t hist_stride, int B, int n);
/* Per-head chunk coefficients of dt (rows [B*T, nh]) into coef = cs | ecs | wend | dtT, each
 * [B, nh, T]: cs = cumsum of dt A restarted per chunk, ecs = exp(cs), wend = exp(cs_L - cs) dt. */
void zb_cuda_m2_ssd_coef(const zb_mamba2_dims *m, const float *A_log, const float *dt, float *coef,
                         int B, int T);
/* Chunked SSD forward after zb_cuda_m2_ssd_coef: y [B*T, di] (D x included) and states
 * [B, nc, nh, hd, ds] (the state at the start of each chunk). S0 (may be NULL: zero) the initial
 * state of sequence b at S0 + b * s_stride, [nh, hd, ds]; Sfin (may be NULL, may equal S0) gets
 * the final state. */
void zb_cuda_m2_ssd_forward(const zb_mamba2_dims *m, const float *D, const float *xbc,
                            const float *coef, float *y, float *states, const float *S0,
                            float *Sfin, size_t s_stride, int B, int T);
/* The same with S0 / Sfin as bf16 states (s_bf16; strides still in floats: the bf16 values in the
 * first half of each slot). */
void zb_cuda_m2_ssd_forward_st(const zb_mamba2_dims *m, const float *D, const float *xbc,
                               const float *coef, float *y, float *states, const float *S0,
                               float *Sfin, size_t s_stride, int B, int T, int s_bf16);
/* The fused per-chunk SSD kernels (chunk, headdim and d_state <= 64; forward and backward): 1 on,
 * 0 the tile kernels, -1 back to the environment's choice (on unless ZB_SSD=old or ZB_SSD=tiles).
 * For tests that compare the two. */
void zb_cuda_m2_ssd_fused(int on);
/* The fused backward's block in the bf16 mode: 16 warps (16, the default) or 8 (8; ZB_SSD_BWD_WARPS=8),
 * -1 back to the environment's choice. For tests that compare the two. */
void zb_cuda_m2_ssd_bwd_warps(int w);
/* The fused backward fetching each head's coefficients with its operands (1, the default) or at the
 * head's start (0; ZB_SSD_BWD_PREFETCH=0), -1 back to the environment's choice. The same values. */
void zb_cuda_m2_ssd_bwd_prefetch(int on);
/* The fused backward's tensor-core products two at a time, their k steps interleaved (1, the default) or
 * one after the other (0; ZB_SSD_BWD_ILP=0), -1 back to the environment's choice. The same sums. */
void zb_cuda_m2_ssd_bwd_ilp(int on);
/* The fused forward output's block in the bf16 mode: 8 warps (8, the default) or 16 (16;
 * ZB_SSD_FWD_WARPS=16), -1 back to the environment's choice. */
void zb_cuda_m2_ssd_fwd_warps(int w);
/* Chunked SSD backward: dy [B*T, di] -> dxbc [B*T, cd] (OVERWRITTEN), ddt [B*T, nh]
 * (OVERWRITTEN); gA_log[h], gD[h] accumulate. work: zb_cuda_m2_ssd_bwd_floats(m, B, T). */
size_t zb_cuda_m2_ssd_bwd_floats(const zb_mamba2_dims *m, int B, int T);
void zb_cuda_m2_ssd_backward(const zb_mamba2_dims *m, const float *A_log, const float *D,
                             const float *xbc, const float *coef, const float *states,
                             const float *dy, float *dxbc, float *ddt, float *gA_log, float *gD,
                             float *work, int B, int T);
/* One-token recurrence for nb rows: row i (xbc [nb, cd], dt [nb, nh]) updates the SSM state at
 * S + seq_i * s_stride ([nh, hd, ds]; seq_i = seqs[i], or i when seqs is NULL) and writes
 * y [nb, di]. */
void zb_cuda_m2_ssd_step(const zb_mamba2_dims *m, const float *A_log, const float *D,
                         const float *xbc, const float *dt, float *S, size_t s_stride,
                         const int *seqs, float *y, int nb);
/* The same on bf16 states (s_bf16, as zb_cuda_m2_ssd_forward_st): y from the float32 update, the
 * state rounded when stored. */
void zb_cuda_m2_ssd_step_st(const zb_mamba2_dims *m, const float *A_log, const float *D,
                            const float *xbc, const float *dt, float *S, size_t s_stride,
                            const int *seqs, float *y, int nb, int s_bf16);
/* Gated RMSNorm forward over N rows: o = w * g / rms_group(g), g = y silu(z) (z rows of z_stride);
 * rstd [N, ng] (may be NULL). */
/* The one-token decode step's pieces fused (mamba2_decode.cu; used while zb_cuda_dec_fuse()):
 * _conv: xbc = silu(conv(state, proj's xBC columns)), each slot's conv state moved on, dt from
 * proj's dt columns (zb_cuda_m2_conv_forward + _conv_state_update + _dt_forward for n = 1, slots
 * seqs[i] or i of `state`, slot stride zb_mamba2_state_floats); _ssd_norm: the recurrence on the
 * SSM states S (slot stride s_stride floats, bf16 values when s_bf16) and o = the gated norm of y
 * with z [nb, z_stride] (zb_cuda_m2_ssd_step_st + _gated_norm_forward). _ok: shapes it takes (d_state
 * 128 or 256, norm groups inside a head, 16-byte aligned). */
void zb_cuda_m2_decode_conv(const zb_mamba2_dims *m, const float *dt_bias, const float *conv_w, const float *conv_b,
                            const float *proj, float *state, const int *seqs, float *xbc, float *dt, int nb);
int zb_cuda_m2_decode_ssd_norm_ok(const zb_mamba2_dims *m, const float *xbc, const float *S, size_t s_stride);
void zb_cuda_m2_decode_ssd_norm(const zb_mamba2_dims *m, const float *A_log, const float *D, const float *norm_w,
                                float eps, const float *xbc, const float *dt, const float *z, int z_stride, float *S,
                                size_t s_stride, const int *seqs, float *o, int nb, int s_bf16);
void zb_cuda_m2_gated_norm_forward(const zb_mamba2_dims *m, const float *norm_w, float eps,
                                   const float *y, const float *z, int z_stride, float *o,
                                   float *rstd, int N);
/* Its backward: dy [N, di] holds dL/do on entry and dL/dy on exit; dz (rows of z_stride)
 * OVERWRITTEN; g_norm_w accumulates. work: N-independent, zb_cuda_m2_colsum_floats(di) floats. */
void zb_cuda_m2_gated_norm_backward(const zb_mamba2_dims *m, const float *norm_w, const float *y,
                                    const float *z, int z_stride, const float *rstd, float *dy,
                                    float *dz, float *g_norm_w, float *work, int N);
/* dt backward: dproj[:, P-nh+h] OVERWRITTEN with ddt softplus'(v) (0 where the clamp is
 * active); g_dt_bias accumulates. */
void zb_cuda_m2_dt_backward(const zb_mamba2_dims *m, const float *dt_bias, const float *proj,
                            const float *ddt, float *dproj, float *g_dt_bias, float *work, int N);
/* Conv + SiLU backward for B sequences of T rows: dxbc [B*T, cd] the gradient of the SiLU
 * output; dpre [B*T, cd] work (OVERWRITTEN, or not used by the one-pass kernel); dproj[:, di + c]
 * OVERWRITTEN; g_conv_w, g_conv_b (may be NULL) accumulate. work: zb_cuda_m2_colsum_floats(cd (K + 1))
 * floats. zb_cuda_m2_conv_bwd_vec: the conv backward in one pass over channel quads (4, the default
 * where the shape allows: K = 4, widths multiples of 4) or pairs (2; ZB_CONV_BWD=pair), or
 * (0; ZB_CONV_BWD=old / one) as zb_cuda_m2_conv_bwd_one says: in one pass over 8-row groups (1; ZB_CONV_BWD=one) or two kernels
 * (0); zb_cuda_m2_conv_rows: the training conv forward over groups of rows (1, the
 * default) or a block per row (0; ZB_CONV=old); -1 the environment's choice (for tests). */
void zb_cuda_m2_conv_bwd_vec(int v);
void zb_cuda_m2_conv_bwd_one(int on);
void zb_cuda_m2_conv_rows(int on);
/* The training conv forward's kernel where zb_cuda_m2_conv_rows is on: over channel pairs (2, the default
 * where K = 4 and the widths are multiples of 4) or over groups of 8 rows (1; ZB_CONV=rows); -1 the
 * environment's (for tests). */
void zb_cuda_m2_conv_fwd_kind(int k);
/* The mixer backward's in_proj output gradient written in bf16 by its producers (1, the default in
 * the bf16 mode), float32 then converted (0; ZB_M2_DPROJ16=0), -1 the environment's (for tests). */
void zb_cuda_m2_dproj16(int on);
/* The training mixer's gated-norm output kept in bf16 for out_proj (1, the default in the bf16 CONVERT
 * mode), float32 (0; ZB_M2_O16=0), -1 the environment's (for tests). */
void zb_cuda_m2_o16(int on);
/* The training forward leaving the conv's pre-activation unstored, the backward recomputing it (1, the
 * default where the conv backward's vector kernel runs), stored and read back (0; ZB_CONV_PRE=keep),
 * -1 the environment's (for tests). */
void zb_cuda_m2_conv_pre_recompute(int on);
/* The gated norm's forward over groups of rows and its backward's rows in groups with their loads
 * together (1, the default where the norm groups are 32-128 wide; the same bits), the S6 kernels (0;
 * ZB_GNORM=old), -1 the environment's (for tests). */
void zb_cuda_m2_gnorm_rows(int on);
void zb_cuda_m2_conv_backward(const zb_mamba2_dims *m, const float *conv_w, const float *proj,
                              const float *xbc_pre, const float *dxbc, float *dpre, float *dproj,
                              float *g_conv_w, float *g_conv_b, float *work, int B, int T);
/* Work floats for a column reduction of up to C columns (the gradient sums over rows). */
size_t zb_cuda_m2_colsum_floats(int C);

#ifdef __cplusplus
}
#endif

#endif
