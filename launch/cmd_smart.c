/* zebra smart --teacher T --data D --mla-layers K -o plan.json [--svg plan.svg]
 *             [--config C.json] [--student-init S] [--tokenizer tokenizer.json] [--seq 256]
 *             [--max-rows 8] [--batch 4] [--terminal-window 0] [--seed 1]
 *
 * SMART (SPEC.md §6): the sensitivity of layer l = the mean KL(teacher || student) per token on
 * held-out tokens, where the student is the teacher with only layer l replaced by a Mamba2
 * mixer (composed from that layer's attention, SPEC §5, or taken from --student-init S, e.g. an
 * ILD-trained all-Mamba2 model). Choice of the K MLA layers:
 *   - terminal rule: layer 0 and layer L-1 are MLA (with --terminal-window W: the most
 *     sensitive layer of [0, W] and of [L-1-W, L-1], "first and last regions");
 *   - the other K-2 are spread evenly: slot k has the ideal position k (L-1)/(K-1) and may move
 *     by at most a quarter of that gap, so that every gap stays about equal;
 *   - within its window each slot takes the most sensitive layer not yet taken.
 * Writes the plan JSON (scores, windows, chosen layers: `zebra compose --plan` reads its
 * "mla_layers") and an SVG bar chart of the scores with the windows and the chosen layers.
 *
 * Data D: a safetensors file with input_ids [B,T] (as `zebra dump` reads), or a text file
 * with --tokenizer (tokenized, cut into rows of --seq tokens). Only --max-rows rows are used. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "compose.h"
#include "model.h"
#include "safetensors.h"
#include "store.h"
#include "tokenizer.h"

/* ---- data ------------------------------------------------------------------------------- */

static int load_ids(const char *path, const char *tok_path, int seq, int max_rows, int V,
                    int **ids, int *R, int *T) {
    size_t len = strlen(path);
    int rc = ZB_OK;
    *ids = NULL;
    if (len > 12 && !strcmp(path + len - 12, ".safetensors")) {
        zb_safetensors *st = NULL;
        ZB_TRY(zb_st_open(&st, path));
        const zb_st_tensor *t = zb_st_get(st, "input_ids");
        if (!t || (t->ndim != 1 && t->ndim != 2))
            rc = zb_fail(ZB_EFORMAT, "%s: needs a tensor input_ids [B,T]", path);
        if (!rc) {
            int B = t->ndim == 2 ? (int)t->shape[0] : 1;
            *T = (int)t->shape[t->ndim - 1];
            int32_t *all = zb_malloc(sizeof(int32_t) * (size_t)t->numel, "input ids");
            if (!all) rc = ZB_ENOMEM;
            else rc = zb_st_to_i32(t, all);
            *R = B < max_rows ? B : max_rows;
            if (!rc) {
                *ids = zb_malloc(sizeof(int) * (size_t)*R * *T, "input ids");
                if (!*ids) rc = ZB_ENOMEM;
                else for (size_t i = 0; i < (size_t)*R * *T; i++) (*ids)[i] = all[i];
            }
            free(all);
        }
        zb_st_close(st);
    } else {
        if (!tok_path) return zb_fail(ZB_EARG, "smart: %s is not .safetensors; a text file needs --tokenizer", path);
        zb_tokenizer *tk = NULL;
        ZB_TRY(zb_tokenizer_load(&tk, tok_path));
        char *text = NULL;
        size_t n = 0, nt = 0;
        int32_t *tid = NULL;
        rc = zb_read_file(path, &text, &n);
        if (!rc) rc = zb_tokenizer_encode(tk, text, n, &tid, &nt);
        free(text);
        zb_tokenizer_free(tk);
        if (!rc && (int)nt < seq) rc = zb_fail(ZB_EARG, "%s: %zu tokens, fewer than --seq %d", path, nt, seq);
        if (!rc) {
            *T = seq;
            *R = (int)(nt / seq) < max_rows ? (int)(nt / seq) : max_rows;
            *ids = zb_malloc(sizeof(int) * (size_t)*R * seq, "input ids");
            if (!*ids) rc = ZB_ENOMEM;
            else for (size_t i = 0; i < (size_t)*R * seq; i++) (*ids)[i] = tid[i];
        }
        free(tid);
    }
    for (size_t i = 0; !rc && i < (size_t)*R * *T; i++)
        if ((*ids)[i] < 0 || (*ids)[i] >= V)
            rc = zb_fail(ZB_EARG, "%s: token id %d outside the teacher's vocabulary [0, %d)", path, (*ids)[i], V);
    if (rc) { free(*ids); *ids = NULL; }
    return rc;
}

/* The Mamba2 shape of SPEC §4 derived from the teacher (when no --config gives one). */
static zb_mamba2_dims mamba_from_teacher(const zb_config *t, int T) {
    zb_mamba2_dims m;
    memset(&m, 0, sizeof m);
    m.nheads = t->n_heads;
    m.headdim = m.d_state = t->head_dim;
    m.d_inner = t->n_heads * t->head_dim;
    m.x_groups = m.b_groups = t->n_kv_heads;
    m.c_groups = t->n_heads;
    m.conv_k = 4;
    m.chunk = T < 256 ? T : 256;
    m.norm_group = t->head_dim;
    m.dt_min = 0.0f;
    m.dt_max = INFINITY;
    m.conv_bias = 1;
    return m;
}

/* ---- forward pieces ---------------------------------------------------------------------- */

typedef struct {
    float *ln, *mo, *g, *u;   /* [N,d] [N,d] [N,F] [N,F] */
    float *mix_acts;          /* the Mamba2 working model's activations */
} smart_buf;

/* x[N,d] += mixer(norm(x)); x += MLP(norm(x)) with the teacher's block l, the mixer from
 * model mm's layer ml (the teacher itself or a one-layer Mamba2 model). */
static void block_forward(const zb_model *t, int l, const zb_model *mm, int ml, float *acts,
                          float *x, smart_buf *b, int B, int T) {
    const zb_config *c = &t->cfg;
    const zb_block *w = &t->w.blocks[l];
    int N = B * T, d = c->d_model, F = c->ffn;
    size_t Nd = (size_t)N * d;
    zb_rmsnorm_forward(b->ln, NULL, x, w->attn_norm, N, d, c->rms_eps);
    zb_mixer_forward(mm, ml, b->ln, b->mo, acts, B, T);
    for (size_t i = 0; i < Nd; i++) x[i] += b->mo[i];
    zb_rmsnorm_forward(b->ln, NULL, x, w->mlp_norm, N, d, c->rms_eps);
    zb_matmul_forward(b->g, b->ln, w->w_gate, NULL, N, d, F);
    zb_matmul_forward(b->u, b->ln, w->w_up, NULL, N, d, F);
    zb_swiglu_forward(b->g, b->g, b->u, (size_t)N * F);
    zb_matmul_forward(b->mo, b->g, w->w_down, NULL, N, F, d);
    for (size_t i = 0; i < Nd; i++) x[i] += b->mo[i];
}

/* ---- choice ------------------------------------------------------------------------------- */

/* Most sensitive untaken layer in [lo, hi] (clipped); -1 if none. */
static int best_in(const double *score, const int *taken, int L, int lo, int hi) {
    int best = -1;
    if (lo < 0) lo = 0;
    if (hi > L - 1) hi = L - 1;
    for (int l = lo; l <= hi; l++)
        if (!taken[l] && (best < 0 || score[l] > score[best])) best = l;
    return best;
}

/* Fills chosen[K] (sorted) and windows[K][2]. */
static int choose(const double *score, int L, int K, int tw, int *chosen, int (*win)[2]) {
    if (K < 1 || K > L) return zb_fail(ZB_EARG, "smart: --mla-layers %d must be in [1, %d]", K, L);
    int *taken = calloc((size_t)L, sizeof(int));
    if (!taken) return zb_fail(ZB_ENOMEM, "out of memory");
    double gap = K > 1 ? (double)(L - 1) / (K - 1) : 0;
    /* terminal slots first, then the interior ones */
    int order[ZB_MAX_LAYERS], n = 0;
    order[n++] = 0;
    if (K > 1) order[n++] = K - 1;
    for (int k = 1; k < K - 1; k++) order[n++] = k;
    for (int oi = 0; oi < K; oi++) {
        int k = order[oi], lo, hi;
        if (k == 0) { lo = 0; hi = tw; }
        else if (k == K - 1) { lo = L - 1 - tw; hi = L - 1; }
        else {
            double c = k * gap;
            lo = (int)ceil(c - gap / 4);
            hi = (int)floor(c + gap / 4);
            if (hi < lo) lo = hi = (int)lround(c);
        }
        win[k][0] = lo < 0 ? 0 : lo;
        win[k][1] = hi > L - 1 ? L - 1 : hi;
        int b = best_in(score, taken, L, lo, hi);
        for (int wdn = 1; b < 0 && wdn < L; wdn++)   /* window exhausted: nearest free layer */
            b = best_in(score, taken, L, lo - wdn, hi + wdn);
        taken[b] = 1;
        chosen[k] = b;
    }
    free(taken);
    for (int a = 1; a < K; a++)
        for (int b = a; b > 0 && chosen[b - 1] > chosen[b]; b--) { int t = chosen[b]; chosen[b] = chosen[b - 1]; chosen[b - 1] = t; }
    return ZB_OK;
}

/* ---- outputs ------------------------------------------------------------------------------- */

static int write_json(const char *path, const char *teacher, const double *score, int L, int K,
                      const int *chosen, int (*win)[2], int tw, long tokens) {
    FILE *f = fopen(path, "w");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot write", path);
    fprintf(f, "{\n  \"method\": \"SMART (SPEC.md §6): per-layer mean KL(teacher || student) per token, "
               "student = teacher with that layer replaced by Mamba2\",\n");
    fprintf(f, "  \"teacher\": \"%s\",\n  \"layers\": %d,\n  \"tokens\": %ld,\n  \"terminal_window\": %d,\n",
            teacher, L, tokens, tw);
    fprintf(f, "  \"scores\": [");
    for (int l = 0; l < L; l++) fprintf(f, "%s%.9g", l ? ", " : "", score[l]);
    fprintf(f, "],\n  \"windows\": [");
    for (int k = 0; k < K; k++) fprintf(f, "%s[%d, %d]", k ? ", " : "", win[k][0], win[k][1]);
    fprintf(f, "],\n  \"mla_layers\": [");
    for (int k = 0; k < K; k++) fprintf(f, "%s%d", k ? ", " : "", chosen[k]);
    fprintf(f, "]\n}\n");
    return fclose(f) == 0 ? ZB_OK : zb_fail(ZB_EIO, "%s: write failed", path);
}

static int write_svg(const char *path, const double *score, int L, int K, const int *chosen,
                     int (*win)[2]) {
    FILE *f = fopen(path, "w");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot write", path);
    int bw = L > 40 ? 16 : 28, left = 70, top = 50, H = 260, W = left + L * bw + 30, Ht = top + H + 70;
    double mx = 0;
    for (int l = 0; l < L; l++) if (score[l] > mx) mx = score[l];
    if (mx <= 0) mx = 1;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", W, Ht);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"20\" font-size=\"14\">SMART: KL to the teacher when one layer becomes Mamba2</text>\n", left);
    fprintf(f, "<text x=\"%d\" y=\"38\" fill=\"#555\">orange = chosen MLA (%d); shaded = the window each MLA slot may take (even spread, terminal rule)</text>\n", left, K);
    for (int k = 0; k < K; k++)   /* windows */
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#f3e3c8\"/>\n",
                left + win[k][0] * bw, top, (win[k][1] - win[k][0] + 1) * bw, H);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, top + H, left + L * bw, top + H);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, top, left, top + H);
    for (int i = 0; i <= 4; i++) {
        double v = mx * i / 4;
        int y = top + H - (int)(H * i / 4.0);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g</text>\n", left - 4, y + 4, v);
    }
    for (int l = 0; l < L; l++) {
        int sel = 0;
        for (int k = 0; k < K; k++) sel |= chosen[k] == l;
        int h = (int)(H * score[l] / mx + 0.5);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>layer %d: KL %.6g%s</title></rect>\n",
                left + l * bw + 3, top + H - h, bw - 6, h, sel ? "#e07b00" : "#4a7ab5", l, score[l],
                sel ? " (MLA)" : "");
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", left + l * bw + bw / 2, top + H + 14, l);
        if (sel) fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#e07b00\">MLA</text>\n",
                         left + l * bw + bw / 2, top + H + 28);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">layer</text>\n", left + L * bw / 2, top + H + 48);
    fprintf(f, "<text x=\"16\" y=\"%d\" transform=\"rotate(-90 16 %d)\" text-anchor=\"middle\">mean KL / token</text>\n",
            top + H / 2, top + H / 2);
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? ZB_OK : zb_fail(ZB_EIO, "%s: write failed", path);
}

/* ---- the command ------------------------------------------------------------------------------ */

/* Layer l's Mamba2 mixer as a one-layer model: from --student-init (if it has Mamba2 there)
 * or composed from the teacher's layer l. */
static int mamba_layer(const zb_model *t, const zb_config *mc, const zb_store *init, int l,
                       uint64_t seed, zb_model *one) {
    zb_config c1 = zb_config_one_layer(mc, ZB_LAYER_MAMBA2);
    c1.ffn = 1;   /* the MLP is the teacher's; keep the working model small */
    ZB_TRY(zb_model_init(one, &c1));
    zb_model_init_random(one, seed + 7919u * (uint64_t)(l + 1), 0.02f);
    int rc = ZB_OK;
    if (init && zb_store_config(init)->kinds[l] == ZB_LAYER_MAMBA2) {
        char name[ZB_PARAM_NAME + 16];
        for (int i = 0; i < one->n_params && !rc; i++) {
            const zb_param *p = &one->params[i];
            if (p->layer != 0 || !strstr(p->name, ".mamba.")) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s", l, p->name + strlen("model.layers.0."));
            rc = zb_store_read(init, name, one->data + p->offset, p->ndim, p->shape);
        }
    } else {
        const zb_block *b = &t->w.blocks[l];
        zb_attn_src a = {t->cfg.d_model, t->cfg.n_heads, t->cfg.n_kv_heads, t->cfg.head_dim, b->wq, b->wk, b->wv, b->wo};
        rc = zb_compose_mamba2(&a, &c1.mamba, &one->w.blocks[0].mamba);
    }
    if (rc) zb_model_free(one);
    return rc;
}

static int smart(int argc, char **argv) {
    const char *tpath = zb_arg_str(argc, argv, "--teacher", NULL);
    const char *data = zb_arg_str(argc, argv, "--data", NULL);
    const char *out = zb_arg_str(argc, argv, "-o", NULL);
    const char *svg = zb_arg_str(argc, argv, "--svg", NULL);
    const char *cfg_path = zb_arg_str(argc, argv, "--config", NULL);
    const char *init_path = zb_arg_str(argc, argv, "--student-init", NULL);
    int K = zb_arg_int(argc, argv, "--mla-layers", 0), tw = zb_arg_int(argc, argv, "--terminal-window", 0);
    int seq = zb_arg_int(argc, argv, "--seq", 256), max_rows = zb_arg_int(argc, argv, "--max-rows", 8);
    int batch = zb_arg_int(argc, argv, "--batch", 4);
    uint64_t seed = (uint64_t)zb_arg_int(argc, argv, "--seed", 1);
    if (!tpath || !data || !out || K <= 0)
        return zb_fail(ZB_EARG, "smart: needs --teacher T --data D --mla-layers K -o plan.json");
    if (seq <= 0 || max_rows <= 0 || batch <= 0 || tw < 0)
        return zb_fail(ZB_EARG, "smart: --seq, --max-rows, --batch must be positive, --terminal-window >= 0");

    zb_model t;
    ZB_TRY(zb_model_load(&t, tpath));
    const zb_config *tc = &t.cfg;
    int L = tc->n_layers, d = tc->d_model, V = tc->vocab, F = tc->ffn;
    int rc = ZB_OK, *ids = NULL, R = 0, T = 0;
    zb_store *init = NULL;
    zb_model *minis = NULL;
    double *score = NULL;
    float *tlog = NULL, *x = NULL, *mix_acts = NULL;
    smart_buf b = {0};
    zb_acts a;
    memset(&a, 0, sizeof a);
    for (int l = 0; l < L && !rc; l++)
        if (tc->kinds[l] != ZB_LAYER_ATTN) rc = zb_fail(ZB_EARG, "%s: layer %d is not attention", tpath, l);
    if (!rc && K > L) rc = zb_fail(ZB_EARG, "smart: --mla-layers %d > %d layers", K, L);
    if (!rc) rc = load_ids(data, zb_arg_str(argc, argv, "--tokenizer", NULL), seq, max_rows, V, &ids, &R, &T);
    if (!rc && R < 1) rc = zb_fail(ZB_EARG, "%s: no complete row of tokens", data);
    /* the Mamba2 shape: --config, --student-init's, or SPEC §4 from the teacher */
    zb_config mc = *tc;
    mc.mamba = mamba_from_teacher(tc, T);
    if (!rc && cfg_path) {
        zb_config c;
        rc = zb_config_load(cfg_path, &c);
        if (!rc) mc.mamba = c.mamba;
    }
    if (!rc && init_path) {
        rc = zb_store_open(&init, init_path);
        if (!rc) rc = zb_compose_check(tc, zb_store_config(init), init_path);
        if (!rc) mc.mamba = zb_store_config(init)->mamba;
    }
    if (!rc && !(minis = calloc((size_t)L, sizeof(zb_model)))) rc = zb_fail(ZB_ENOMEM, "out of memory");
    for (int l = 0; l < L && !rc; l++) rc = mamba_layer(&t, &mc, init, l, seed, &minis[l]);
    int Bb = batch < R ? batch : R, N = Bb * T;
    if (!rc) rc = zb_acts_alloc(&a, &t, Bb, T);
    if (!rc) {
        score = calloc((size_t)L, sizeof(double));
        tlog = malloc(sizeof(float) * (size_t)N * V);
        x = malloc(sizeof(float) * (size_t)N * d);
        b.ln = malloc(sizeof(float) * (size_t)N * d);
        b.mo = malloc(sizeof(float) * (size_t)N * d);
        b.g = malloc(sizeof(float) * (size_t)N * F);
        b.u = malloc(sizeof(float) * (size_t)N * F);
        mix_acts = malloc(sizeof(float) * zb_mamba2_act_floats(&mc.mamba, d, Bb, T));
        if (!score || !tlog || !x || !b.ln || !b.mo || !b.g || !b.u || !mix_acts)
            rc = zb_fail(ZB_ENOMEM, "smart: out of memory for %d x %d tokens", Bb, T);
    }
    long tokens = 0;
    double t0 = zb_now();
    for (int r0 = 0; r0 + Bb <= R && !rc; r0 += Bb) {
        const int *bid = ids + (size_t)r0 * T;
        zb_model_forward(&t, &a, bid);
        memcpy(tlog, a.logits, sizeof(float) * (size_t)N * V);
        for (int l = 0; l < L; l++) {
            /* layer l by Mamba2, layers after it by the teacher */
            memcpy(x, a.res + (size_t)l * N * d, sizeof(float) * (size_t)N * d);
            block_forward(&t, l, &minis[l], 0, mix_acts, x, &b, Bb, T);
            for (int k = l + 1; k < L; k++) block_forward(&t, k, &t, k, a.mix_acts[k], x, &b, Bb, T);
            zb_rmsnorm_forward(b.ln, NULL, x, t.w.final_norm, N, d, tc->rms_eps);
            zb_matmul_forward(a.logits, b.ln, t.w.lm_head, NULL, N, d, V);
            score[l] += zb_kl_div(NULL, a.logits, tlog, NULL, N, V, 1.0f, 0.0f);
        }
        tokens += N;
    }
    if (!rc) {
        for (int l = 0; l < L; l++) score[l] /= (double)tokens;
        int chosen[ZB_MAX_LAYERS], win[ZB_MAX_LAYERS][2];
        rc = choose(score, L, K, tw, chosen, win);
        if (!rc) {
            printf("SMART on %ld tokens (%d x %d), %.1f s; mean KL per token when the layer is Mamba2:\n",
                   tokens, R / Bb * Bb, T, zb_now() - t0);
            for (int l = 0; l < L; l++) {
                int sel = 0;
                for (int k = 0; k < K; k++) sel |= chosen[k] == l;
                printf("  layer %3d  %.6g%s\n", l, score[l], sel ? "  MLA" : "");
            }
            printf("mla_layers:");
            for (int k = 0; k < K; k++) printf(" %d", chosen[k]);
            printf("\n");
            rc = write_json(out, tpath, score, L, K, chosen, win, tw, tokens);
        }
        if (!rc && svg) rc = write_svg(svg, score, L, K, chosen, win);
    }
    for (int l = 0; minis && l < L; l++) if (minis[l].data) zb_model_free(&minis[l]);
    free(minis);
    zb_store_close(init);
    zb_acts_free(&a);
    free(score); free(tlog); free(x); free(b.ln); free(b.mo); free(b.g); free(b.u); free(mix_acts);
    free(ids);
    zb_model_free(&t);
    return rc;
}

int zb_cmd_smart(int argc, char **argv) {
    static const char *const vals[] = {"--teacher", "--data", "--mla-layers", "-o", "--svg", "--config",
                                       "--student-init", "--tokenizer", "--seq", "--max-rows", "--batch",
                                       "--terminal-window", "--seed", NULL};
    static const char *const flags[] = {NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    return smart(argc, argv);
}
