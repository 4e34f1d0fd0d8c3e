/* test_mamba2.c <fixture-dir> — one HF Mamba2Mixer (fixture hf-mamba2-layer): forward output
 * and every gradient of loss = sum(output * dloss_doutput) against torch.
 * Dimensions come from meta.json so that any fixture of this format can be checked. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mamba2.h"
#include "safetensors.h"
#include "zb_common.h"
#include "zb_test.h"

/* Python's json.dump writes bare Infinity / NaN; cJSON does not read them. Outside strings,
 * rewrite Infinity -> 1e999 (strtod gives inf) and NaN -> 0 (only config values we skip). */
static char *py_json_fix(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(n + 1), *q = o;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (in_str) {
            *q++ = s[i];
            if (s[i] == '\\' && i + 1 < n) *q++ = s[++i];
            else if (s[i] == '"') in_str = 0;
        } else if (s[i] == '"') { in_str = 1; *q++ = s[i]; }
        else if (!strncmp(s + i, "Infinity", 8)) { memcpy(q, "1e999", 5); q += 5; i += 7; }
        else if (!strncmp(s + i, "NaN", 3)) { *q++ = '0'; i += 2; }
        else *q++ = s[i];
    }
    *q = 0;
    return o;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) { fprintf(stderr, "meta.json: no number %s\n", k); exit(2); }
    return v->valuedouble;
}

static float *load(zb_safetensors *st, const char *name, size_t want) {
    const zb_st_tensor *t = zb_st_get(st, name);
    if (!t || (size_t)t->numel != want) {
        fprintf(stderr, "fixture: tensor %s missing or numel != %zu\n", name, want);
        exit(2);
    }
    float *p = malloc(want * sizeof(float));
    if (zb_st_to_f32(t, p)) { fprintf(stderr, "%s\n", zb_errmsg()); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 2) { fprintf(stderr, "usage: %s <hf-mamba2-layer dir>\n", argv[0]); return 2; }
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.json", argv[1]);
    char *txt; size_t len;
    ZB_TEST_OK(zb_read_file(path, &txt, &len));
    char *fixed = py_json_fix(txt);
    cJSON *meta = cJSON_Parse(fixed);
    if (!meta) { fprintf(stderr, "meta.json: parse error\n"); return 2; }
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(meta, "config");
    int B = (int)num(meta, "B"), T = (int)num(meta, "T");
    int d = (int)num(cfg, "hidden_size"), nh = (int)num(cfg, "num_heads"),
        hd = (int)num(cfg, "head_dim"), ds = (int)num(cfg, "state_size"),
        ng = (int)num(cfg, "n_groups"), K = (int)num(cfg, "conv_kernel"),
        chunk = (int)num(cfg, "chunk_size");
    float eps = (float)num(cfg, "layer_norm_epsilon");
    const cJSON *lim = cJSON_GetObjectItemCaseSensitive(cfg, "time_step_limit");
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(cfg, "use_conv_bias");
    zb_mamba2_dims m = {
        .d_inner = nh * hd, .nheads = nh, .headdim = hd, .d_state = ds,
        .x_groups = nh, .b_groups = ng, .c_groups = ng, .conv_k = K, .chunk = chunk,
        .norm_group = nh * hd,   /* HF MambaRMSNormGated: the whole inner dimension */
        .dt_min = (float)cJSON_GetArrayItem(lim, 0)->valuedouble,
        .dt_max = (float)cJSON_GetArrayItem(lim, 1)->valuedouble,
        .conv_bias = cb ? cJSON_IsTrue(cb) : 1,
    };
    printf("mamba2 fixture: B=%d T=%d d=%d heads=%d x %d state=%d groups=%d K=%d chunk=%d "
           "dt_limit=(%g,%g)\n", B, T, d, nh, hd, ds, ng, K, chunk, m.dt_min, m.dt_max);

    int P = zb_mamba2_in_proj_rows(&m), cd = zb_mamba2_conv_dim(&m), di = m.d_inner;
    size_t N = (size_t)B * T;
    snprintf(path, sizeof path, "%s/layer.safetensors", argv[1]);
    zb_safetensors *st;
    ZB_TEST_OK(zb_st_open(&st, path));
    /* parameter name, our pointer slot, size */
    struct { const char *name; size_t n; size_t off; } ps[] = {
        {"in_proj.weight", (size_t)P * d, offsetof(zb_mamba2_weights, in_proj)},
        {"conv1d.weight", (size_t)cd * K, offsetof(zb_mamba2_weights, conv_w)},
        {"conv1d.bias", (size_t)cd, offsetof(zb_mamba2_weights, conv_b)},
        {"dt_bias", (size_t)nh, offsetof(zb_mamba2_weights, dt_bias)},
        {"A_log", (size_t)nh, offsetof(zb_mamba2_weights, A_log)},
        {"D", (size_t)nh, offsetof(zb_mamba2_weights, D)},
        {"norm.weight", (size_t)di, offsetof(zb_mamba2_weights, norm_w)},
        {"out_proj.weight", (size_t)d * di, offsetof(zb_mamba2_weights, out_proj)},
    };
    int np = (int)(sizeof ps / sizeof ps[0]);
    zb_mamba2_weights w, g;
    char nm[256];
    for (int i = 0; i < np; i++) {
        snprintf(nm, sizeof nm, "param.%s", ps[i].name);
        *(float **)((char *)&w + ps[i].off) = load(st, nm, ps[i].n);
        *(float **)((char *)&g + ps[i].off) = calloc(ps[i].n, sizeof(float));
    }
    float *x = load(st, "input", N * d), *ref = load(st, "output", N * d),
          *R = load(st, "dloss_doutput", N * d), *gx_ref = load(st, "grad.input", N * d);
    float *out = malloc(N * d * sizeof(float)), *gx = calloc(N * d, sizeof(float));
    float *acts = malloc(zb_mamba2_act_floats(&m, d, B, T) * sizeof(float));
    float *scr = malloc(zb_mamba2_scratch_floats(&m, d, B, T) * sizeof(float));

    /* Bounds (zb_test.h): two float32 evaluations of the layer (ours, torch's) differ by at most
     * 2 lambda u sqrt(n_ops) x the magnitude of the summed terms. The output sums o W_out^T:
     * magnitude |o| |W_out|, n_ops the forward's. A gradient is a sum over the loss rows
     * loss_n = out[n] . R[n]: magnitude sum_n |d loss_n / d theta| (one backward per row), n_ops
     * the forward's and the backward's. */
    double sf = zb_bound_scale(sqrt(zb_ops_mamba2(&m, d, T, 1))), pb = sqrt(zb_ops_mamba2(&m, d, T, 0) + N);
    float *omag = malloc(N * d * sizeof(float));
    zb_mamba2_forward(&m, d, eps, &w, x, out, acts, B, T);
    zb_mag_matmul(omag, zb_mamba2_acts_o(&m, acts, B, T), w.out_proj, (int)N, d, di);
    zb_check_elem_bound("output", out, ref, omag, N * d, sf);
    /* magnitudes of the gradients' summed terms */
    zb_mamba2_weights gm, g1;
    float *gxm = calloc(N * d, sizeof(float)), *gx1 = malloc(N * d * sizeof(float)), *R1 = calloc(N * d, sizeof(float));
    for (int i = 0; i < np; i++) {
        *(float **)((char *)&gm + ps[i].off) = calloc(ps[i].n, sizeof(float));
        *(float **)((char *)&g1 + ps[i].off) = malloc(ps[i].n * sizeof(float));
    }
    for (size_t n = 0; n < N; n++) {
        memcpy(R1 + n * d, R + n * d, d * sizeof(float));
        memset(gx1, 0, N * d * sizeof(float));
        for (int i = 0; i < np; i++) memset(*(float **)((char *)&g1 + ps[i].off), 0, ps[i].n * sizeof(float));
        zb_mamba2_backward(&m, d, eps, &w, &g1, x, R1, gx1, acts, scr, B, T);
        for (size_t q = 0; q < N * d; q++) gxm[q] += fabsf(gx1[q]);
        for (int i = 0; i < np; i++)
            for (size_t q = 0; q < ps[i].n; q++)
                (*(float **)((char *)&gm + ps[i].off))[q] += fabsf((*(float **)((char *)&g1 + ps[i].off))[q]);
        memset(R1 + n * d, 0, d * sizeof(float));
    }
    zb_mamba2_backward(&m, d, eps, &w, &g, x, R, gx, acts, scr, B, T);
    double r;
    int sens;
    int gok = zb_tensor_within(gx, gx_ref, gxm, N * d, pb, &r, &sens);
    zb_check(gok && sens, "grad.input: %.2g of its float32 bound (catches 1e-3: %d)", r, sens);
    for (int i = 0; i < np; i++) {
        snprintf(nm, sizeof nm, "grad.%s", ps[i].name);
        float *gr = load(st, nm, ps[i].n);
        int ok = zb_tensor_within(*(float **)((char *)&g + ps[i].off), gr, *(float **)((char *)&gm + ps[i].off),
                                  ps[i].n, pb, &r, &sens);
        zb_check(ok && sens, "%s: %.2g of its float32 bound (catches 1e-3: %d)", nm, r, sens);
        free(gr);
        free(*(float **)((char *)&gm + ps[i].off));
        free(*(float **)((char *)&g1 + ps[i].off));
    }
    free(gxm); free(gx1); free(R1);
    /* the same layer with other chunk lengths gives the same output (n_ops of that chunking) */
    int chunks[] = {1, 5, 64};
    for (int c = 0; c < 3; c++) {
        zb_mamba2_dims m2 = m;
        m2.chunk = chunks[c];
        float *a2 = malloc(zb_mamba2_act_floats(&m2, d, B, T) * sizeof(float));
        float *o2 = malloc(N * d * sizeof(float));
        zb_mamba2_forward(&m2, d, eps, &w, x, o2, a2, B, T);
        snprintf(nm, sizeof nm, "output (chunk %d)", chunks[c]);
        double s2 = zb_bound_scale(sqrt(zb_ops_mamba2(&m2, d, T, 1)));
        zb_check_elem_bound(nm, o2, ref, omag, N * d, s2 > sf ? s2 : sf);
        free(a2); free(o2);
    }
    free(omag);

    for (int i = 0; i < np; i++) {
        free(*(float **)((char *)&w + ps[i].off));
        free(*(float **)((char *)&g + ps[i].off));
    }
    free(x); free(ref); free(R); free(gx_ref); free(out); free(gx); free(acts); free(scr);
    zb_st_close(st);
    cJSON_Delete(meta);
    free(fixed); free(txt);
    return zb_test_finish();
}
