/* zebra compose --teacher T --config C.json [--plan plan.json] -o student.h5 [--dtype f32|bf16]
 *               [--seed S] [--init rope-pairs|release]
 * A Zebra hybrid from a Llama target (SPEC.md §5): per layer the plan (or the config's
 * layer_kinds) says MLA or Mamba2; MLA by truncated SVD (--init: which rows, core/compose.h),
 * Mamba2 by the MambaInLlama mapping; norms, MLPs, embedding and head copied.
 *
 * zebra compose --mamba M.h5 --mla A.h5 --plan plan.json -o hybrid.h5 [--dtype f32|bf16]
 * Assembly (SPEC.md §6): whole decoder layers (mixer, MLP, norms) from the ILD'd all-MLA model A
 * at the plan's "mla_layers", from the ILD'd all-Mamba2 model M elsewhere; embedding, final
 * norm and head from M.
 *
 * Streams layer by layer: one teacher layer is read (through zb_store, any stored dtype) into
 * a one-layer working model, the student layer is built in another one-layer model and each
 * of its tensors is written to the checkpoint at once; the embedding / head go straight from
 * the teacher to the file. Peak memory is about one layer of each plus the embedding, so the
 * 8B composes in a few GB. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "commands.h"
#include "compose.h"
#include "model.h"
#include "store.h"

/* Plan JSON {"mla_layers": [..]}: those layers MLA, every other Mamba2 (overrides layer_kinds). */
int zb_plan_read(const char *path, zb_config *c) {
    char *text = NULL;
    size_t len = 0;
    ZB_TRY(zb_read_file(path, &text, &len));
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return zb_fail(ZB_EFORMAT, "%s: not valid JSON", path);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "mla_layers");
    int rc = ZB_OK;
    if (!cJSON_IsArray(a)) rc = zb_fail(ZB_EFORMAT, "%s: needs an array \"mla_layers\"", path);
    for (int l = 0; l < c->n_layers && !rc; l++) c->kinds[l] = ZB_LAYER_MAMBA2;
    const cJSON *e;
    if (!rc) cJSON_ArrayForEach(e, a) {
        long l;
        if (!zb_json_value_int(e, 0, c->n_layers - 1, &l)) {
            rc = zb_fail(ZB_EFORMAT, "%s: mla_layers entries must be layer indices in [0, %d)", path, c->n_layers);
            break;
        }
        if (c->kinds[l] == ZB_LAYER_MLA) {   /* a plan names each layer once */
            rc = zb_fail(ZB_EFORMAT, "%s: mla_layers lists layer %ld twice", path, l);
            break;
        }
        c->kinds[l] = ZB_LAYER_MLA;
    }
    cJSON_Delete(j);
    return rc;
}

/* Write one tensor (f32 source) as dtype; tmp is a growing bf16 buffer. */
static int put(zb_ckpt_writer *w, const char *name, zb_dtype dt, int ndim, const int64_t *shape,
               const float *x, uint16_t **tmp, size_t *cap) {
    size_t n = 1;
    for (int k = 0; k < ndim; k++) n *= (size_t)shape[k];
    if (dt == ZB_DT_F32) return zb_ckpt_write_tensor(w, name, dt, ndim, shape, x);
    if (n > *cap) {
        uint16_t *t = realloc(*tmp, sizeof(uint16_t) * n);
        if (!t) return zb_fail(ZB_ENOMEM, "out of memory converting '%s'", name);
        *tmp = t;
        *cap = n;
    }
    for (size_t i = 0; i < n; i++) (*tmp)[i] = zb_f32_to_bf16(x[i]);
    return zb_ckpt_write_tensor(w, name, dt, ndim, shape, *tmp);
}

/* A global tensor (embedding, final norm, head) straight from the teacher to the file. */
static int copy_global(const zb_store *st, zb_ckpt_writer *w, const char *src_name, const char *dst_name,
                       int ndim, const int64_t *shape, zb_dtype dt, uint16_t **tmp, size_t *cap) {
    size_t n = 1;
    for (int k = 0; k < ndim; k++) n *= (size_t)shape[k];
    float *x = zb_malloc(sizeof(float) * n, dst_name);
    if (!x) return ZB_ENOMEM;
    int rc = zb_store_read(st, src_name, x, ndim, shape);
    if (!rc) rc = put(w, dst_name, dt, ndim, shape, x, tmp, cap);
    free(x);
    return rc;
}

/* "model.layers.<l>.<rest>" for the working model's "model.layers.0.<rest>". */
static void layer_name(char *out, size_t cap, const char *name0, int l) {
    const char *rest = name0 + strlen("model.layers.0.");
    snprintf(out, cap, "model.layers.%d.%s", l, rest);
}

/* Layer l's tensors from store st into the one-layer model `one` (names of layer 0 there). */
static int read_layer(const zb_store *st, zb_model *one, int l) {
    char name[ZB_PARAM_NAME + 16];
    for (int i = 0; i < one->n_params; i++) {
        const zb_param *p = &one->params[i];
        if (p->layer != 0) continue;
        layer_name(name, sizeof name, p->name, l);
        ZB_TRY(zb_store_read(st, name, one->data + p->offset, p->ndim, p->shape));
    }
    return ZB_OK;
}

static int compose(const char *tpath, zb_config *sc, const char *out, zb_dtype dt, uint64_t seed, zb_mla_init init) {
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, tpath));
    const zb_config *tc = zb_store_config(st);
    int rc = zb_compose_check(tc, sc, tpath);
    if (!sc->teacher_layers && !rc) {   /* so that `zebra info` of the result counts against it */
        sc->teacher_layers = tc->n_layers;
        sc->teacher_kv_heads = tc->n_kv_heads;
        sc->teacher_head_dim = tc->head_dim;
    }
    if (!rc) rc = zb_config_validate(sc, "student config");
    zb_ckpt_writer *w = NULL;
    char *json = rc ? NULL : zb_config_to_json(sc);
    if (!rc && !json) rc = zb_fail(ZB_ENOMEM, "cannot serialise the config");
    if (!rc) rc = zb_ckpt_writer_open(&w, out, MPI_COMM_SELF);
    if (!rc) rc = zb_ckpt_set_config(w, json);
    free(json);
    uint16_t *tmp = NULL;
    size_t cap = 0;
    int64_t emb[2] = {tc->vocab, tc->d_model}, dvec[1] = {tc->d_model};
    if (!rc) rc = copy_global(st, w, "model.embed_tokens.weight", "model.embed_tokens.weight", 2, emb, dt, &tmp, &cap);

    printf("compose %s -> %s (%s, MLA init %s)\n", tpath, out, dt == ZB_DT_BF16 ? "bf16" : "f32",
           init == ZB_MLA_INIT_RELEASE ? "release" : "rope-pairs");
    printf("layer  kind     kv energy  (rank, 99%% at)  q energy  (rank, 99%% at)  cache B/token  state B/seq"
           "  kv err  q err  rope err\n");
    double err[3] = {0, 0, 0};
    int n_mla = 0;
    zb_config tone = zb_config_one_layer(tc, ZB_LAYER_ATTN);
    zb_model tm;
    memset(&tm, 0, sizeof tm);
    if (!rc) rc = zb_model_init(&tm, &tone);
    double t0 = zb_now();
    for (int l = 0; l < sc->n_layers && !rc; l++) {
        char name[ZB_PARAM_NAME + 16];
        if ((rc = read_layer(st, &tm, l))) break;   /* the teacher's layer l */
        /* the student's layer l: fresh values, then the composed ones */
        zb_config sone = zb_config_one_layer(sc, sc->kinds[l]);
        zb_model sm;
        zb_mla_init_stats s;
        if ((rc = zb_compose_layer(tc, &tm.w.blocks[0], sc, l, seed, init, &sm, &s))) break;
        for (int i = 0; i < sm.n_params && !rc; i++) {
            const zb_param *p = &sm.params[i];
            if (p->layer != 0) continue;
            layer_name(name, sizeof name, p->name, l);
            rc = put(w, name, dt, p->ndim, p->shape, sm.data + p->offset, &tmp, &cap);
        }
        zb_model_free(&sm);
        if (rc) break;
        size_t kv = 0, stt = 0;
        zb_cache_sizes(&sone, &kv, &stt);
        if (sc->kinds[l] == ZB_LAYER_MLA) {
            printf("%5d  %-7s  %9.4f  (%4d, %4d)     ", l, "mla", s.kv_energy, sc->mla.kv_lora_rank, s.kv_rank_99);
            if (sc->mla.q_lora_rank > 0)
                printf("%8.4f  (%4d, %4d)     ", s.q_energy, sc->mla.q_lora_rank, s.q_rank_99);
            else
                printf("%8s  %-16s", "-", "(q_proj)");
        } else {
            printf("%5d  %-7s  %9s  %-16s %8s  %-16s", l, zb_layer_kind_name(sc->kinds[l]), "-", "", "-", "");
        }
        printf("%13zu  %11zu", kv * sizeof(float), stt * sizeof(float));
        if (sc->kinds[l] == ZB_LAYER_MLA) {
            printf("  %6.4f  %5.4f  %8.4f", s.kv_rel_err, s.q_rel_err, s.rope_rel_err);
            err[0] += s.kv_rel_err; err[1] += s.q_rel_err; err[2] += s.rope_rel_err;
            n_mla++;
        }
        printf("\n");
        fflush(stdout);
    }
    zb_model_free(&tm);
    if (!rc && n_mla)
        printf("MLA reconstruction, mean over %d layers (||rows - factors||_F / ||rows||_F): kv %.4f, q %.4f, "
               "rope key %.4f\n", n_mla, err[0] / n_mla, err[1] / n_mla, err[2] / n_mla);
    if (!rc) rc = copy_global(st, w, "model.norm.weight", "model.norm.weight", 1, dvec, dt, &tmp, &cap);
    if (!rc && !sc->tie_embeddings)
        rc = copy_global(st, w, tc->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                         "lm_head.weight", 2, emb, dt, &tmp, &cap);
    free(tmp);
    zb_store_close(st);
    if (rc) { if (w) zb_ckpt_abort(w); return rc; }
    ZB_TRY(zb_ckpt_close(w));
    size_t kv = 0, stt = 0;
    zb_cache_sizes(sc, &kv, &stt);
    double teacher = 2.0 * sc->teacher_layers * sc->teacher_kv_heads * sc->teacher_head_dim;
    printf("total: %d MLA + %d Mamba2 layers; cache %zu numbers/token (%zu B f32) = %.2f%% of the teacher's "
           "%.0f (SPEC §7); Mamba2 state %zu B/seq; %.1f s\n",
           n_mla, sc->n_layers - n_mla, kv, kv * sizeof(float), teacher > 0 ? 100.0 * kv / teacher : 0.0,
           teacher, stt * sizeof(float), zb_now() - t0);
    return ZB_OK;
}

/* One layer l of the hybrid (its kind's tensors), read from store st and written to w. */
static int copy_layer(const zb_store *st, zb_ckpt_writer *w, const zb_config *hc, int l, zb_dtype dt,
                      uint16_t **tmp, size_t *cap) {
    zb_config c1 = zb_config_one_layer(hc, hc->kinds[l]);
    zb_model one;
    ZB_TRY(zb_model_init(&one, &c1));
    int rc = read_layer(st, &one, l);
    char name[ZB_PARAM_NAME + 16];
    for (int i = 0; i < one.n_params && !rc; i++) {
        const zb_param *p = &one.params[i];
        if (p->layer != 0) continue;
        layer_name(name, sizeof name, p->name, l);
        rc = put(w, name, dt, p->ndim, p->shape, one.data + p->offset, tmp, cap);
    }
    zb_model_free(&one);
    return rc;
}

static int assemble(const char *mpath, const char *apath, const char *plan, const char *out, zb_dtype dt) {
    zb_store *sm = NULL, *sa = NULL;
    ZB_TRY(zb_store_open(&sm, mpath));
    int rc = zb_store_open(&sa, apath);
    zb_config hc, pc = rc ? (zb_config){0} : *zb_store_config(sm);
    unsigned char is_mla[ZB_MAX_LAYERS] = {0};
    if (!rc) rc = zb_plan_read(plan, &pc);
    for (int l = 0; !rc && l < pc.n_layers; l++) is_mla[l] = pc.kinds[l] == ZB_LAYER_MLA;
    if (!rc) rc = zb_assemble_config(zb_store_config(sm), zb_store_config(sa), is_mla, &hc, plan);
    zb_ckpt_writer *w = NULL;
    char *json = rc ? NULL : zb_config_to_json(&hc);
    if (!rc && !json) rc = zb_fail(ZB_ENOMEM, "cannot serialise the config");
    if (!rc) rc = zb_ckpt_writer_open(&w, out, MPI_COMM_SELF);
    if (!rc) rc = zb_ckpt_set_config(w, json);
    free(json);
    uint16_t *tmp = NULL;
    size_t cap = 0;
    int64_t emb[2] = {hc.vocab, hc.d_model}, dvec[1] = {hc.d_model};
    double t0 = zb_now();
    if (!rc) {
        printf("assemble %s (MLA) + %s (Mamba2) by %s -> %s (%s)\nlayers:", apath, mpath, plan, out,
               dt == ZB_DT_BF16 ? "bf16" : "f32");
        for (int l = 0; l < hc.n_layers; l++) printf(" %d:%s", l, is_mla[l] ? "mla" : "m2");
        printf("\n");
        rc = copy_global(sm, w, "model.embed_tokens.weight", "model.embed_tokens.weight", 2, emb, dt, &tmp, &cap);
    }
    for (int l = 0; l < hc.n_layers && !rc; l++) rc = copy_layer(is_mla[l] ? sa : sm, w, &hc, l, dt, &tmp, &cap);
    if (!rc) rc = copy_global(sm, w, "model.norm.weight", "model.norm.weight", 1, dvec, dt, &tmp, &cap);
    if (!rc && !hc.tie_embeddings) rc = copy_global(sm, w, "lm_head.weight", "lm_head.weight", 2, emb, dt, &tmp, &cap);
    free(tmp);
    zb_store_close(sa);
    zb_store_close(sm);
    if (rc) { if (w) zb_ckpt_abort(w); return rc; }
    ZB_TRY(zb_ckpt_close(w));
    size_t kv = 0, stt = 0;
    zb_cache_sizes(&hc, &kv, &stt);
    double teacher = 2.0 * hc.teacher_layers * hc.teacher_kv_heads * hc.teacher_head_dim;
    printf("total: cache %zu numbers/token = %.2f%% of the teacher's %.0f (SPEC §7); Mamba2 state %zu B/seq; %.1f s\n",
           kv, teacher > 0 ? 100.0 * kv / teacher : 0.0, teacher, stt * sizeof(float), zb_now() - t0);
    return ZB_OK;
}

int zb_cmd_compose(int argc, char **argv) {
    static const char *const vals[] = {"--teacher", "--config", "--plan", "-o", "--dtype", "--seed", "--init",
                                       "--mamba", "--mla", NULL};
    static const char *const flags[] = {NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *teacher = zb_arg_str(argc, argv, "--teacher", NULL);
    const char *cfg_path = zb_arg_str(argc, argv, "--config", NULL);
    const char *plan = zb_arg_str(argc, argv, "--plan", NULL);
    const char *out = zb_arg_str(argc, argv, "-o", NULL);
    const char *dts = zb_arg_str(argc, argv, "--dtype", "f32");
    const char *inits = zb_arg_str(argc, argv, "--init", "rope-pairs");
    const char *mamba = zb_arg_str(argc, argv, "--mamba", NULL), *mla = zb_arg_str(argc, argv, "--mla", NULL);
    int asm_mode = mamba || mla;
    if (asm_mode && (!mamba || !mla || !plan || !out || teacher || cfg_path))
        return zb_fail(ZB_EARG, "compose: assembly needs --mamba M --mla A --plan plan.json -o hybrid.h5 "
                       "(no --teacher / --config)");
    if (!asm_mode && (!teacher || !cfg_path || !out))
        return zb_fail(ZB_EARG, "compose: needs --teacher T --config C.json -o student.h5 "
                       "(or --mamba M --mla A --plan P -o H)");
    zb_dtype dt;
    if (!strcmp(dts, "f32")) dt = ZB_DT_F32;
    else if (!strcmp(dts, "bf16")) dt = ZB_DT_BF16;
    else return zb_fail(ZB_EARG, "compose: --dtype must be f32 or bf16, not '%s'", dts);
    zb_mla_init init;
    if (!strcmp(inits, "rope-pairs")) init = ZB_MLA_INIT_ROPE_PAIRS;
    else if (!strcmp(inits, "release")) init = ZB_MLA_INIT_RELEASE;
    else return zb_fail(ZB_EARG, "compose: --init must be rope-pairs or release, not '%s'", inits);
    uint64_t seed;
    ZB_TRY(zb_arg_u64(argc, argv, "--seed", 1, &seed));
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) return zb_fail(ZB_EARG, "compose: run it on one rank (it streams one layer at a time)");
    if (asm_mode) return assemble(mamba, mla, plan, out, dt);
    zb_config c;
    ZB_TRY(zb_config_load(cfg_path, &c));
    if (plan) ZB_TRY(zb_plan_read(plan, &c));
    ZB_TRY(zb_config_validate(&c, cfg_path));
    return compose(teacher, &c, out, dt, seed, init);
}
