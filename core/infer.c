/* infer.c — inference-only forwards (model.h): one block applied in place on its working
 * buffers (SMART's layer scoring), and a whole frozen model's forward on one layer's buffers,
 * float32 or bf16 weights (the KD teacher), with its head's logits a block of rows at a time. */
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "shard.h"   /* TP hooks (m->tp != NULL), SPEC §9 */

void zb_block_ws_free(zb_block_ws *w) {
    if (w->be) {
        float *f[] = {w->ln, w->mo, w->g, w->u, w->mix_acts};
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) w->be->free(w->be, f[i]);
    }
    memset(w, 0, sizeof *w);
}

void zb_block_apply(const zb_model *m, int l, float *x, int B, zb_block_ws *w) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    const zb_block *b = &m->w.blocks[l];
    int N = B * w->T, d = c->d_model, F = c->ffn;
    size_t Nd = (size_t)N * d;
    double t0 = 0, t1 = 0;
    be->rmsnorm_forward(be, w->ln, NULL, x, b->attn_norm, N, d, c->rms_eps);
    if (w->prof) { be->sync(be); t0 = zb_now(); }
    zb_mixer_forward(m, l, w->ln, w->mo, w->mix_acts, B, w->T);
    if (w->prof) { be->sync(be); t1 = zb_now(); w->prof[0] += t1 - t0; }
    be->add_rmsnorm(be, x, w->mo, w->ln, b->mlp_norm, N, d, c->rms_eps);   /* x += mixer out; ln = RMSNorm(x) */
    /* mo = (silu(ln Wg^T) * (ln Wu^T)) Wd^T, f32 or bf16 matrices (tagged views) */
    be->mlp_linear_forward(be, w->mo, w->g, w->u, w->ln, b->lin.w_gate, b->lin.w_up, b->lin.w_down, N, d, F, d);
    if (m->tp) zb_tp_allreduce(m->tp, w->mo, Nd);   /* TP: down_proj is row-parallel */
    be->add(be, x, x, w->mo, Nd);
    if (w->prof) { be->sync(be); w->prof[1] += zb_now() - t1; }
}

int zb_infer_alloc(zb_infer *f, const zb_model *m, int B, int T) {
    const zb_config *c = &m->cfg;
    memset(f, 0, sizeof *f);
    if (B < 1 || T < 1 || (int64_t)B * T > (1 << 24))
        return zb_fail(ZB_EARG, "inference forward: %d rows x %d tokens: need 1 <= rows x tokens <= %d", B, T, 1 << 24);
    if (m->tp || m->pp_no_embed || m->pp_no_head)
        return zb_fail(ZB_EARG, "inference forward: a whole model on one rank only (not a TP shard / PP stage)");
    for (int l = 0; l < c->n_layers; l++)
        if (m->wdtype == ZB_WEIGHTS_BF16 && c->kinds[l] != ZB_LAYER_ATTN)
            return zb_fail(ZB_EARG, "inference forward: layer %d is %s: with bf16 weights only attention layers "
                           "(the MLA / Mamba2 training kernels read float32 matrices)", l,
                           c->kinds[l] == ZB_LAYER_MLA ? "MLA" : "Mamba2");
    const zb_backend *be = m->be;
    size_t N = (size_t)B * T;
    ZB_TRY(zb_block_ws_alloc(&f->w, m, B, T));
    f->be = be;
    ZB_BE_ALLOC(be, f->x, N * c->d_model, "inference forward");
    ZB_BE_ALLOC(be, f->hidden, N * c->d_model, "inference forward");
    ZB_BE_ALLOC(be, f->ids, N, "inference forward ids");
    return ZB_OK;
}

void zb_infer_free(zb_infer *f) {
    if (f->be) {
        f->be->free(f->be, f->x);
        f->be->free(f->be, f->hidden);
        f->be->free(f->be, f->ids);
    }
    zb_block_ws_free(&f->w);
    memset(f, 0, sizeof *f);
}

void zb_model_forward_infer(const zb_model *m, zb_infer *f, const int *ids) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int B = f->w.B, N = B * f->w.T, d = c->d_model;
    double t0 = 0;
    if (f->profile) { be->sync(be); t0 = zb_now(); }
    f->w.prof = f->profile ? f->prof_part : NULL;
    be->to_device(be, f->ids, ids, sizeof(int) * N);
    be->embedding_forward(be, f->x, f->ids, m->w.embed_lin, N, d);
    for (int l = 0; l < c->n_layers; l++) zb_block_apply(m, l, f->x, B, &f->w);
    be->rmsnorm_forward(be, f->hidden, NULL, f->x, m->w.final_norm, N, d, c->rms_eps);
    if (f->profile) { be->sync(be); f->prof += zb_now() - t0; }
}

void zb_model_head_rows(const zb_model *m, float *logits, const float *hidden, int rows) {
    m->be->linear_forward(m->be, logits, hidden, m->w.lm_head_lin, rows, m->cfg.d_model, m->cfg.vocab);
}
