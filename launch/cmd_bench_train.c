/* zebra bench --train — training-step throughput on one device (a benchmark, not a test):
 * tokens/s of the whole step (forward, loss, backward, gradient norm, AdamW) for a model of a
 * config (synthetic weights) or a checkpoint, at B rows x T tokens, and the model-flops
 * utilisation against the matrix rate measured in the same run (bf16 GEMM 8192^3 on the GPU,
 * OpenBLAS sgemm on the CPU). With --kd TEACHER, the online-distillation step of SPEC §6: the
 * teacher's forward on the same ids, then the student's KL + CE forward / backward.
 *
 *   zebra bench --train MODEL [--kd TEACHER] [--batch 8] [--seq 2048] [--steps 5]
 *               [--device cuda] [--precision bf16|f32] [--md FILE] [--breakdown]
 *
 * --breakdown: a second table, ms per step by part (embedding, each mixer kind's forward and
 * backward, the rest of the blocks, head, loss, the KD teacher's forward, optimizer), from as
 * many further steps with every part synchronised.
 *
 * Model flops per token (the usual count, e.g. PaLM's appendix): 6 x the parameters of every
 * matrix product (the tied embedding once, as the head) + 6 L_attn T d_attn for causal attention
 * (QK^T and PV, forward and backward, half of the T x T square); MLA layers count their heads'
 * (qk + v) width, Mamba2 layers their matrices only. KD adds 2 x the teacher's parameters + its
 * attention's forward third. */
#if __has_include("backend.h")   /* the backend seam (issue 16) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "model.h"
#include "optim.h"
#include "store.h"
#include "train.h"

/* flops per token of one forward + backward (x3 of the forward's 2 per weight) */
static double model_flops_per_token(const zb_model *m, int T, int fwd_only) {
    const zb_config *c = &m->cfg;
    double params = (double)zb_model_num_params(m);
    if (!c->tie_embeddings) params -= (double)c->vocab * c->d_model;   /* the lookup is no product */
    double attn = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->kinds[l] == ZB_LAYER_ATTN) attn += (double)T * c->n_heads * c->head_dim * 2;
        else if (c->kinds[l] == ZB_LAYER_MLA)
            attn += (double)T * c->mla.n_heads * (c->mla.qk_nope + c->mla.qk_rope + c->mla.v_head_dim);
    }
    /* forward: 2 per weight, causal attention 2 x (T/2) x width per product pair */
    double fwd = 2 * params + attn;
    return fwd_only ? fwd : 3 * fwd;
}

/* A model of a config (synthetic weights) or a checkpoint; teacher: a KD teacher, held as
 * zb_kd_teacher_wdtype says for be (bf16 on a GPU in the bf16 mode: half the memory, no bf16
 * copies of the products' operands to make) */
static int load_model(zb_model *m, const char *path, const zb_backend *be, int teacher) {
    size_t len = strlen(path);
    zb_config c;
    int json = len > 5 && !strcmp(path + len - 5, ".json");
    if (json) ZB_TRY(zb_config_load(path, &c));
    else {
        zb_store *st = NULL;
        ZB_TRY(zb_store_open(&st, path));
        c = *zb_store_config(st);
        zb_store_close(st);
    }
    zb_wdtype wt = teacher ? zb_kd_teacher_wdtype(&c, be, 0) : ZB_WEIGHTS_F32;
    if (json) {
        ZB_TRY(zb_model_init_ex(m, &c, wt));
        zb_model_init_synthetic(m, 7, 0.02f);
        return ZB_OK;
    }
    return zb_model_load_ex(m, path, wt);
}

/* The matrix rate of the device (TFLOP/s): cuBLAS bf16 8192^3 on a GPU, else 0 (not measured). */
static double matmul_peak(const zb_backend *be) {
    double tflops = 0;
    if (!be->host_memory) zb_bench_gpu_ceilings(be, &tflops, NULL);
    return tflops;
}

/* --breakdown's table: ms per step by part (pdt the profiled steps' time, popt their optimizer's) */
static void print_breakdown(FILE *md, const zb_trainer *tr, int have_t, int steps, double pdt, double popt) {
    double tf = 0;
    for (int k = 0; k < ZB_TPROF_N; k++) tf += tr->ta.prof[k];
    tf += tr->tf.prof;   /* the inference forward (its logits are made in the loss) */
    fprintf(md, "\n--breakdown (%d steps, each part synchronised): %.1f ms per step\n\n| part | ms/step | "
                "share |\n|---|---|---|\n", steps, 1e3 * pdt / steps);
    double acc = 0;
    if (have_t) {
        fprintf(md, "| teacher forward | %.2f | %.1f%% |\n", 1e3 * tf / steps, 100 * tf / pdt);
        acc += tf;
        const char *tp[2] = {"mixers", "norms, MLPs, residual adds"};
        for (int q = 0; q < 2; q++)   /* inside the inference forward; not added again */
            if (tr->tf.prof_part[q] > 0)
                fprintf(md, "| &nbsp;&nbsp;teacher forward: %s | %.2f | %.1f%% |\n", tp[q],
                        1e3 * tr->tf.prof_part[q] / steps, 100 * tr->tf.prof_part[q] / pdt);
    }
    for (int k = 0; k < ZB_TPROF_N; k++) {
        if (tr->a.prof[k] <= 0) continue;
        fprintf(md, "| %s | %.2f | %.1f%% |\n", zb_tprof_names[k], 1e3 * tr->a.prof[k] / steps,
                100 * tr->a.prof[k] / pdt);
        acc += tr->a.prof[k];
        /* the pieces inside the Mamba2 parts (a backend that times them: mixer_profile),
         * each synchronised; not added again to the total */
        if (k != ZB_TPROF_MAMBA_F && k != ZB_TPROF_MAMBA_B) continue;
        int p0 = k == ZB_TPROF_MAMBA_F ? 0 : ZB_MIXP_M2_OUT_PROJ_B,
            p1 = k == ZB_TPROF_MAMBA_F ? ZB_MIXP_M2_OUT_PROJ_B : ZB_MIXP_N;
        for (int q = p0; q < p1; q++)
            if (tr->a.prof_mix[q] > 0)
                fprintf(md, "| &nbsp;&nbsp;%s: %s | %.2f | %.1f%% |\n", zb_tprof_names[k], zb_mixp_names[q],
                        1e3 * tr->a.prof_mix[q] / steps, 100 * tr->a.prof_mix[q] / pdt);
    }
    fprintf(md, "| grad norm + AdamW | %.2f | %.1f%% |\n", 1e3 * popt / steps, 100 * popt / pdt);
    acc += popt;
    fprintf(md, "| other | %.2f | %.1f%% |\n", 1e3 * (pdt - acc) / steps, 100 * (pdt - acc) / pdt);
}

int zb_bench_train(int argc, char **argv, const zb_backend *be) {
    const char *path = zb_arg_str(argc, argv, "--train", NULL), *tpath = zb_arg_str(argc, argv, "--kd", NULL);
    int B, T, steps;
    ZB_TRY(zb_arg_int(argc, argv, "--batch", 8, 1, 1 << 16, &B));
    ZB_TRY(zb_arg_int(argc, argv, "--seq", 2048, 2, 1 << 24, &T));
    ZB_TRY(zb_arg_int(argc, argv, "--steps", 5, 1, 1 << 24, &steps));
    if (B < 1 || T < 2 || steps < 1) return zb_fail(ZB_EARG, "bench --train: --batch >= 1, --seq >= 2, --steps >= 1");
    zb_model m, t;
    int have_t = 0;
    ZB_TRY(load_model(&m, path, be, 0));
    int rc = zb_model_set_backend(&m, be);
    if (!rc && tpath) {
        rc = load_model(&t, tpath, be, 1);
        if (!rc) { have_t = 1; rc = zb_model_set_backend(&t, be); }
    }
    zb_trainer tr;
    zb_loss_cfg lc;   /* KD: KL only, tau 1 */
    memset(&lc, 0, sizeof lc);
    lc.kl_weight = 1.0f;
    lc.temperature = 1.0f;
    lc.beta = 0.1f;
    int tr_ok = 0;
    if (!rc) rc = zb_trainer_init(&tr, have_t ? ZB_STAGE_KD : ZB_STAGE_PRETRAIN, &lc, &m, have_t ? &t : NULL, B, T);
    if (!rc) tr_ok = 1;
    zb_adamw o;
    int o_ok = 0;
    zb_optim_cfg oc = zb_optim_defaults();
    if (!rc) rc = zb_adamw_init(&o, &m, &oc);
    if (!rc) o_ok = 1;
    int *ids = malloc(sizeof(int) * (size_t)B * T * 2), *tg = ids ? ids + (size_t)B * T : NULL;
    if (!rc && !ids) rc = zb_fail(ZB_ENOMEM, "bench --train: ids");
    double dt = 0, loss = 0, pdt = 0, popt = 0;
    int breakdown = zb_arg_flag(argc, argv, "--breakdown");
    if (!rc) {
        for (size_t i = 0; i < (size_t)B * T; i++) ids[i] = (int)((i * 2654435761u) % (unsigned)m.cfg.vocab);
        for (int b = 0; b < B; b++)
            for (int j = 0; j < T; j++) tg[(size_t)b * T + j] = j + 1 < T ? ids[(size_t)b * T + j + 1] : -1;
        /* step 0: warm-up (first allocations, handles); then the timed steps; with --breakdown
         * as many steps again, each part synchronised and timed (slower: not the table's time) */
        for (int s = 0; s <= steps * (breakdown ? 2 : 1) && !rc; s++) {
            int prof = s > steps;
            tr.a.profile = tr.ta.profile = tr.tf.profile = prof;
            be->sync(be);
            double t0 = zb_now();
            zb_model_zero_grad(&m);
            zb_loss_parts p;
            rc = zb_trainer_step(&tr, ids, tg, 1, 1.0f, &p);
            if (rc) break;
            if (prof) be->sync(be);
            double t1 = zb_now();
            double gn = zb_grad_norm(&o, &m);
            zb_adamw_step(&o, &m, oc.lr, zb_clip_scale(&oc, gn));
            be->sync(be);
            double t2 = zb_now();
            if (prof) { popt += t2 - t1; pdt += t2 - t0; }
            else if (s > 0) { dt += t2 - t0; loss = p.loss; }
        }
    }
    if (!rc) {
        double tps = (double)B * T * steps / dt;
        double fpt = model_flops_per_token(&m, T, 0) + (have_t ? model_flops_per_token(&t, T, 1) : 0);
        int bf16 = be->opts.gpu_bf16;
        size_t used = 0, total = 0;   /* before the peak's measurement allocates its matrices */
        int have_mem = !be->host_memory && zb_bench_device_memory(&used, &total) == 0;
        double peak = matmul_peak(be);
        const char *mdp = zb_arg_str(argc, argv, "--md", NULL);
        FILE *md = mdp ? fopen(mdp, "w") : stdout;
        if (!md) md = stdout;
        fprintf(md, "| step | model | device | products | batch x seq | step ms | tokens/s | model TFLOP/s | "
                    "bf16 matmul peak | MFU | loss |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        fprintf(md, "| %s | %s%s%s | %s | %s | %d x %d | %.1f | %.0f | %.1f | %.1f | %.1f%% | %.4f |\n",
                have_t ? "kd" : "pretrain", path, have_t ? " <- " : "", have_t ? tpath : "", be->name,
                bf16 ? "bf16 operands" : "float32", B, T, 1e3 * dt / steps, tps, tps * fpt / 1e12, peak,
                peak > 0 ? 100.0 * tps * fpt / 1e12 / peak : 0.0, loss);
        if (have_t)
            fprintf(md, "\nteacher: %s weights, %s forward%s\n", zb_wdtype_name(t.wdtype),
                    tr.kd_infer ? "inference" : "training", tr.kd_infer ? " (logits by blocks of rows in the loss)" : "");
        if (have_mem)
            fprintf(md, "\ndevice memory in use after the steps (the peak: buffers are allocated once): %.1f of %.1f GiB\n",
                    used / 1073741824.0, total / 1073741824.0);
        if (breakdown && pdt > 0) print_breakdown(md, &tr, have_t, steps, pdt, popt);
        if (md != stdout) fclose(md);
    }
    free(ids);
    if (o_ok) zb_adamw_free(&o);
    if (tr_ok) zb_trainer_free(&tr);
    if (have_t) zb_model_free(&t);
    zb_model_free(&m);
    return rc;
}
#endif
