/* backend.c — picking a backend table by name, checking that a table is complete, and the
 * host-side pieces every backend shares (the RoPE frequency table, cache / state layouts). */
#include "backend.h"

#include <math.h>
#include <string.h>

#include "zb_common.h"

/* The CUDA backend's table (core/cuda/cuda_backend.c, built with -DZB_CUDA=ON); it returns NULL
 * after zb_fail when no GPU can be used. A plain reference where that file compiles its table
 * (the same condition as its own guard), so that the linker takes it out of the static
 * library; elsewhere a weak one, NULL. */
#if defined(ZB_HAVE_CUDA) && __has_include("mamba2_cuda.h")
const zb_backend *zb_backend_cuda(void);
#define ZB_CUDA_BUILT 1
#else
const zb_backend *zb_backend_cuda(void) __attribute__((weak));
#define ZB_CUDA_BUILT (zb_backend_cuda != NULL)
#endif

const zb_backend *zb_backend_get(const char *name) {
    if (!name || !strcmp(name, "cpu")) return zb_backend_cpu();
    if (!strcmp(name, "cuda")) {
        if (ZB_CUDA_BUILT) return zb_backend_cuda();
        zb_fail(ZB_EARG, "device 'cuda': this build has no CUDA backend (configure with -DZB_CUDA=ON)");
        return NULL;
    }
    zb_fail(ZB_EARG, "unknown device '%s' (cpu%s)", name, ZB_CUDA_BUILT ? " or cuda" : "");
    return NULL;
}

/* every field from alloc to the end of the struct is a function pointer (backend.h), in this
 * order (the count is checked at compile time) */
typedef void (*zb_any_fn)(void);
static const char *const entry_names[] = {
    "alloc", "free", "zero", "copy", "to_device", "to_host", "copy_2d", "sync", "add", "sub",
    "scale", "matmul_forward", "matmul_backward", "linear_forward", "linear_forward3",
    "swiglu_linear_forward", "mlp_linear_forward", "rmsnorm_forward",
    "rmsnorm_backward", "add_rmsnorm", "linear_add_rmsnorm", "rope", "attention_saved_floats", "attention_forward",
    "attention_backward", "attention_step_scratch", "attention_step", "swiglu_forward",
    "swiglu_backward", "mlp_forward", "mlp_backward", "embedding_forward", "embedding_backward", "cross_entropy", "cross_entropy_head", "kl_div", "mse",
    "mean_row_dist", "vp_row_max", "vp_row_sums", "vp_ce_grad", "argmax_rows", "argmax_pairs", "argmax_pick", "decode_advance", "mla_act_floats", "mla_scratch_floats", "mla_forward", "mla_backward",
    "mla_step_scratch", "mla_step", "mla_decode_seqs", "mamba2_act_floats",
    "mamba2_scratch_floats", "mamba2_forward", "mamba2_backward", "mamba2_step_scratch",
    "mamba2_step", "mamba2_decode_seqs", "adamw", "sumsq", "adamw_ranges", "sumsq_ranges", "fill_uniform",
    "step_graph", "step_queue", "mixer_profile"};
_Static_assert(sizeof(zb_backend) - offsetof(zb_backend, alloc) ==
                   sizeof entry_names / sizeof *entry_names * sizeof(zb_any_fn),
               "zb_backend: entry_names lists every function pointer after alloc, nothing else follows");

const char *const zb_mixp_names[ZB_MIXP_N] = {
    "in_proj", "dt + conv", "scan coefficients", "scan chunk states", "scan state pass", "scan output",
    "gated norm", "out_proj",
    "out_proj bwd", "gated norm bwd", "scan state grads", "scan state pass bwd", "scan dx", "scan dC", "scan dB",
    "scan ddt dA dD", "scan group sums", "dt bwd", "conv bwd", "in_proj bwd"};

const char *zb_backend_missing(const zb_backend *be) {
    const char *base = (const char *)be + offsetof(zb_backend, alloc);
    for (size_t i = 0; i < sizeof entry_names / sizeof *entry_names; i++) {
        zb_any_fn f;
        memcpy(&f, base + i * sizeof f, sizeof f);
        if (!f) return entry_names[i];
    }
    return NULL;
}

/* ---- the MLP from the separate entries (backend.h) --------------------------------------- */

void zb_mlp_forward_calls(const zb_backend *be, float *out, float *ln, float *rstd, float *g, float *u, float *h,
                          const float *x, const float *norm_w, const float *Wg, const float *Wu, const float *Wd,
                          int N, int d, int F, float eps) {
    size_t NF = (size_t)N * F;
    be->rmsnorm_forward(be, ln, rstd, x, norm_w, N, d, eps);
    be->matmul_forward(be, g, ln, Wg, NULL, N, d, F);
    be->matmul_forward(be, u, ln, Wu, NULL, N, d, F);
    be->swiglu_forward(be, h, g, u, NF);
    be->matmul_forward(be, out, h, Wd, NULL, N, F, d);
}

void zb_mlp_linear_forward_calls(const zb_backend *be, float *out, float *g, float *u, const float *inp, zb_wt Wg,
                                 zb_wt Wu, zb_wt Wd, int N, int C, int F, int OC) {
    be->swiglu_linear_forward(be, g, u, inp, Wg, Wu, N, C, F);
    be->linear_forward(be, out, g, Wd, N, F, OC);
}

void zb_mlp_backward_calls(const zb_backend *be, float *dln, float *dWg, float *dWu, float *dWd, const float *dout,
                           const float *ln, const float *g, const float *u, const float *h, const float *Wg,
                           const float *Wu, const float *Wd, float *dh, float *dg, float *du, int N, int d, int F) {
    size_t NF = (size_t)N * F;
    be->zero(be, dh, sizeof(float) * NF);
    be->matmul_backward(be, dh, dWd, NULL, dout, h, Wd, N, F, d);
    be->swiglu_backward(be, dg, du, dh, g, u, NF);
    be->zero(be, dln, sizeof(float) * (size_t)N * d);
    be->matmul_backward(be, dln, dWg, NULL, dg, ln, Wg, N, d, F);
    be->matmul_backward(be, dln, dWu, NULL, du, ln, Wu, N, d, F);
}

/* ---- RoPE ----------------------------------------------------------------------------------- */

/* YaRN's ramp ends (DeepSeek's yarn_find_correction_range, SPEC §3): the rotary pair whose
 * wavelength turns `rot` times over the original context, floor for beta_fast / ceil for
 * beta_slow, clamped to [0, dim - 1]. */
static double yarn_corr_dim(double rot, int dim, double base, double orig) {
    return (dim * log(orig / (rot * 2.0 * M_PI))) / (2.0 * log(base));
}

void zb_rope_init(zb_rope *r, int dim, const zb_rope_cfg *cfg) {
    r->dim = dim;
    r->mscale = 1.0f;
    int low = 0, high = 0;
    if (cfg->type == ZB_ROPE_YARN) {
        low = (int)floor(yarn_corr_dim(cfg->beta_fast, dim, cfg->theta, cfg->original_max_pos));
        high = (int)ceil(yarn_corr_dim(cfg->beta_slow, dim, cfg->theta, cfg->original_max_pos));
        if (low < 0) low = 0;
        if (high > dim - 1) high = dim - 1;
        r->mscale = (float)(zb_yarn_get_mscale(cfg->factor, cfg->mscale) /
                            zb_yarn_get_mscale(cfg->factor, cfg->mscale_all_dim));
    }
    for (int i = 0; i < dim / 2; i++) {
        /* inv_freq_i = theta^(-2i/dim), in float32 as HF computes it */
        float f = (float)(1.0 / pow((double)cfg->theta, (double)(2 * i) / dim));
        if (cfg->type == ZB_ROPE_LLAMA3) {
            /* Llama-3 scaling (SPEC §2): long wavelengths divided by factor, short ones kept,
             * a smooth blend in between. */
            double orig = cfg->original_max_pos;
            double low_wl = orig / cfg->low_freq_factor, high_wl = orig / cfg->high_freq_factor;
            double wl = 2.0 * M_PI / f;
            if (wl > low_wl) f = f / cfg->factor;
            else if (wl >= high_wl) {
                double smooth = (orig / wl - cfg->low_freq_factor) /
                                (cfg->high_freq_factor - cfg->low_freq_factor);
                f = (float)((1.0 - smooth) * f / cfg->factor + smooth * f);
            }
        } else if (cfg->type == ZB_ROPE_YARN) {
            /* YaRN (SPEC §3, DeepSeek's DeepseekV3YarnRotaryEmbedding, float32 like it): pairs
             * below `low` keep theta^(-2i/dim) (extrapolated), pairs above `high` are divided by
             * factor (interpolated), a linear ramp between; mask = 1 - ramp. */
            float pw = (float)pow((double)cfg->theta, (double)((float)(2 * i) / (float)dim));
            float extra = 1.0f / pw, inter = 1.0f / (cfg->factor * pw);
            float span = low == high ? 0.001f : (float)(high - low);   /* their singularity guard */
            float ramp = ((float)i - (float)low) / span;
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            float mask = 1.0f - ramp;
            f = inter * (1.0f - mask) + extra * mask;
        }
        r->inv_freq[i] = f;
    }
}

/* ---- layouts -------------------------------------------------------------------------------- */

int zb_mamba2_in_proj_rows(const zb_mamba2_dims *m) {
    return m->d_inner + m->x_groups * m->headdim + (m->b_groups + m->c_groups) * m->d_state +
           m->nheads;
}

int zb_mamba2_conv_dim(const zb_mamba2_dims *m) {
    return m->x_groups * m->headdim + (m->b_groups + m->c_groups) * m->d_state;
}

size_t zb_mamba2_state_floats(const zb_mamba2_dims *m) {
    return (size_t)zb_mamba2_conv_dim(m) * (m->conv_k - 1) +
           (size_t)m->nheads * m->headdim * m->d_state;
}

size_t zb_mla_cache_floats(const zb_mla_dims *m, int B, int max_T) {
    return (size_t)B * max_T * (m->kv_lora_rank + m->qk_rope);
}
