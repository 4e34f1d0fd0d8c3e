/* make_seeds.c — the fuzz harnesses' starting corpora, made from ../shared/fixtures at build /
 * run time (the fixtures are never copied into the repository):
 *   safetensors/  every fixture .safetensors with each tensor cut to at most 2 per dimension
 *                 (names, dtypes, ranks and the metadata kept; a few KB instead of 700), and
 *                 hf-llama-tiny's model.safetensors.index.json
 *   config/       the fixtures' config.json / hybrid_config.json
 *   tokenizer/    the Llama 3 tokenizer.json trimmed to its first 600 ids, the merges among them
 *                 and 16 added tokens, with its tokenizer_config.json's bos / eos
 *   encode/       the texts of tokenizer_ref.json and chat_ref.json
 *   plan/         zebra-release-tiny's hybrid_config.json (it has "mla_layers")
 *   hdf5/         small native checkpoints written by the project's own writer (the fixtures'
 *                 configs, a few fixture tensors cut to 2 rows, every stored dtype)
 *   shards/       text, chat and pref shard sets written by `zebra data` (zb_cmd_data) with the
 *                 Llama 3 tokenizer from chat_ref's conversations, packed as fuzz_shards reads
 * and from the repository (SRCDIR): configs/ and tests/ *.json into config/, the byte-level
 * configs/bytes-tokenizer.json into tokenizer/.
 * usage: make_seeds FIXTURES SRCDIR OUTDIR   (run as one MPI process) */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "commands.h"
#include "config.h"
#include "safetensors.h"
#include "store.h"
#include "zb_common.h"

static const char *fx, *srcdir, *out;

static void die(const char *what) {
    fprintf(stderr, "make_seeds: %s: %s\n", what, zb_errmsg());
    exit(1);
}

static void mkdir_p(const char *sub) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", out, sub);
    if (mkdir(p, 0755) != 0 && errno != EEXIST) { fprintf(stderr, "make_seeds: cannot create %s\n", p); exit(1); }
}

static void put(const char *sub, const char *name, const void *d, size_t n) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s/%s", out, sub, name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0) { fprintf(stderr, "make_seeds: cannot write %s\n", p); exit(1); }
}

/* Copy fixture file `rel` into sub/name. */
static void copy(const char *rel, const char *sub, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", fx, rel);
    char *d;
    size_t n;
    if (zb_read_file(p, &d, &n)) die(p);
    put(sub, name, d, n);
    free(d);
}

static cJSON *read_json(const char *rel) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", fx, rel);
    char *d;
    if (zb_read_file(p, &d, NULL)) die(p);
    cJSON *j = cJSON_Parse(d);
    free(d);
    if (!j) { fprintf(stderr, "make_seeds: %s: not JSON\n", p); exit(1); }
    return j;
}

/* Every *.json of the repository's folder `rel` into sub/ (skip: a name to leave out). */
static void copy_repo_json(const char *rel, const char *sub, const char *skip) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", srcdir, rel);
    DIR *d = opendir(p);
    if (!d) { fprintf(stderr, "make_seeds: cannot list %s\n", p); exit(1); }
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 6 || strcmp(e->d_name + n - 5, ".json") || (skip && !strcmp(e->d_name, skip))) continue;
        char f[4096 + 256], *t;
        size_t len;
        snprintf(f, sizeof f, "%s/%s", p, e->d_name);
        if (zb_read_file(f, &t, &len)) die(f);
        put(sub, e->d_name, t, len);
        free(t);
    }
    closedir(d);
}

/* ---- safetensors: each tensor cut to at most 2 per dimension, its first bytes as data ---- */
static void shrink_st(const char *rel, const char *name) {
    char p[4096], o[4096];
    snprintf(p, sizeof p, "%s/%s", fx, rel);
    snprintf(o, sizeof o, "%s/safetensors/%s", out, name);
    zb_safetensors *st;
    if (zb_st_open(&st, p)) die(p);
    zb_st_writer *w = zb_st_writer_new();
    for (int i = 0; i < zb_st_count(st) && i < 64; i++) {
        const zb_st_tensor *t = zb_st_at(st, i);
        int64_t sh[ZB_MAX_DIMS];
        for (int k = 0; k < t->ndim; k++) sh[k] = t->shape[k] < 2 ? t->shape[k] : 2;
        if (zb_st_writer_add(w, t->name, t->dtype, t->ndim, sh, t->data)) die(t->name);
    }
    if (zb_st_writer_save(w, o)) die(o);
    zb_st_writer_free(w);
    zb_st_close(st);
}

/* ---- tokenizer: the first 600 ids, the merges among them, 16 added tokens renumbered ---- */
static void trim_tokenizer(void) {
    enum { KEEP = 600, ADDED = 16 };
    cJSON *t = read_json("llama3-tokenizer/tokenizer.json");
    cJSON *model = cJSON_GetObjectItem(t, "model");
    cJSON *vocab = cJSON_GetObjectItem(model, "vocab"), *nv = cJSON_CreateObject();
    cJSON *v;
    cJSON_ArrayForEach(v, vocab)
        if (v->valueint < KEEP) cJSON_AddNumberToObject(nv, v->string, v->valueint);
    cJSON *merges = cJSON_GetObjectItem(model, "merges"), *nm = cJSON_CreateArray(), *m;
    cJSON_ArrayForEach(m, merges) {
        char a[256], b[256], ab[512];
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || (size_t)(sp - m->valuestring) >= sizeof a || strlen(sp + 1) >= sizeof b) continue;
            snprintf(a, sizeof a, "%.*s", (int)(sp - m->valuestring), m->valuestring);
            snprintf(b, sizeof b, "%s", sp + 1);
        } else if (cJSON_GetArraySize(m) == 2) {
            snprintf(a, sizeof a, "%s", cJSON_GetArrayItem(m, 0)->valuestring);
            snprintf(b, sizeof b, "%s", cJSON_GetArrayItem(m, 1)->valuestring);
        } else continue;
        snprintf(ab, sizeof ab, "%s%s", a, b);
        if (cJSON_GetObjectItemCaseSensitive(nv, a) && cJSON_GetObjectItemCaseSensitive(nv, b) &&
            cJSON_GetObjectItemCaseSensitive(nv, ab))
            cJSON_AddItemToArray(nm, cJSON_Duplicate(m, 1));
    }
    cJSON_ReplaceItemInObject(model, "vocab", nv);
    cJSON_ReplaceItemInObject(model, "merges", nm);
    cJSON *added = cJSON_GetObjectItem(t, "added_tokens"), *na = cJSON_CreateArray(), *a;
    int k = 0;
    cJSON_ArrayForEach(a, added) {
        if (k == ADDED) break;
        cJSON *c = cJSON_Duplicate(a, 1);
        cJSON_ReplaceItemInObject(c, "id", cJSON_CreateNumber(KEEP + k++));
        cJSON_AddItemToArray(na, c);
    }
    cJSON_ReplaceItemInObject(t, "added_tokens", na);
    cJSON *cfg = read_json("llama3-tokenizer/tokenizer_config.json"), *nc = cJSON_CreateObject();
    static const char *const keep[] = {"bos_token", "eos_token"};
    for (int i = 0; i < 2; i++) {
        cJSON *x = cJSON_GetObjectItem(cfg, keep[i]);
        if (x) cJSON_AddItemToObject(nc, keep[i], cJSON_Duplicate(x, 1));
    }
    char *ts = cJSON_Print(t), *cs = cJSON_Print(nc);
    size_t n = strlen(ts) + strlen(cs) + 64;
    char *s = malloc(n);
    snprintf(s, n, "%s\n@@@ tokenizer_config.json\n%s", ts, cs);
    put("tokenizer", "llama3-trimmed.json", s, strlen(s));
    put("tokenizer", "llama3-trimmed-noconfig.json", ts, strlen(ts));
    free(s); free(ts); free(cs);
    cJSON_Delete(t); cJSON_Delete(cfg); cJSON_Delete(nc);
}

/* ---- texts for the encoder ---- */
static void texts(const char *rel, const char *prefix) {
    cJSON *j = read_json(rel), *c;
    int i = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        cJSON *t = cJSON_GetObjectItem(c, "text");
        if (!cJSON_IsString(t)) continue;
        char name[64];
        snprintf(name, sizeof name, "%s-%02d.txt", prefix, i++);
        put("encode", name, t->valuestring, strlen(t->valuestring));
    }
    cJSON_Delete(j);
}

/* ---- HDF5: the project's writer on small tensors ---- */
static void h5_seed(const char *name, const char *config_rel, const char *weights_rel) {
    char p[4096], o[4096];
    snprintf(p, sizeof p, "%s/%s", fx, config_rel);
    snprintf(o, sizeof o, "%s/hdf5/%s", out, name);
    zb_config c;
    if (zb_config_load(p, &c)) die(p);
    char *cj = zb_config_to_json(&c);
    zb_ckpt_writer *w = NULL;
    if (!cj || zb_ckpt_writer_open(&w, o, MPI_COMM_SELF) || zb_ckpt_set_config(w, cj)) die(o);
    free(cj);
    static const float f[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    static const uint16_t h[4] = {0x3f80, 0x4000, 0xc040, 0x7f80};
    static const int32_t ids[3] = {1, 2, 128000};
    static const double dd[2] = {0.5, -1};
    static const uint8_t run[] = "{\"stage\": \"pretrain\"}";
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s3[1] = {3}, s2[1] = {2}, sr[1] = {sizeof run - 1};
    int rc = zb_ckpt_write_tensor(w, "seed.f32", ZB_DT_F32, 2, s23, f);
    if (!rc) rc = zb_ckpt_write_tensor(w, "seed.bf16", ZB_DT_BF16, 1, s4, h);
    if (!rc) rc = zb_ckpt_write_tensor(w, "train.step", ZB_DT_F32, 0, NULL, f + 2);
    if (!rc) rc = zb_ckpt_write_tensor(w, "train.ids", ZB_DT_I32, 1, s3, ids);
    if (!rc) rc = zb_ckpt_write_tensor(w, "train.f64", ZB_DT_F64, 1, s2, dd);
    if (!rc) rc = zb_ckpt_write_tensor(w, "train.run_json", ZB_DT_U8, 1, sr, run);
    if (!rc) rc = zb_ckpt_write_rows(w, "seed.f16", ZB_DT_F16, 1, s4, 0, 4, h);
    if (weights_rel) {   /* a few real tensors, 2 rows each */
        snprintf(p, sizeof p, "%s/%s", fx, weights_rel);
        zb_safetensors *st;
        if (zb_st_open(&st, p)) die(p);
        for (int i = 0; i < zb_st_count(st) && i < 4 && !rc; i++) {
            const zb_st_tensor *t = zb_st_at(st, i);
            int64_t sh[ZB_MAX_DIMS];
            memcpy(sh, t->shape, sizeof sh);
            if (t->ndim && sh[0] > 2) sh[0] = 2;
            rc = zb_ckpt_write_tensor(w, t->name, t->dtype, t->ndim, sh, t->data);
        }
        zb_st_close(st);
    }
    if (rc) { zb_ckpt_abort(w); die(o); }
    if (zb_ckpt_close(w)) die(o);
}

/* ---- shard sets by `zebra data`, packed into one input ---- */
static void pack_dir(const char *dir, const char *name) {
    static const char *const files[] = {"manifest.json", "train.bin", "train.idx", "train.mask", "val.bin", "val.idx",
                                        "val.mask", "train.prefs.bin", "train.prefs.idx", "val.prefs.bin",
                                        "val.prefs.idx", NULL};
    char p[8192];
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (int k = 0; files[k]; k++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[k]);
        char *d;
        size_t len;
        if (access(p, F_OK) != 0) continue;
        if (zb_read_file(p, &d, &len)) die(p);
        while (n + len + 64 > cap) buf = realloc(buf, cap *= 2);
        if (k) n += (size_t)sprintf(buf + n, "\n@@@ %s\n", files[k]);
        memcpy(buf + n, d, len);
        n += len;
        free(d);
    }
    put("shards", name, buf, n);
    free(buf);
}

static void shard_seed(const char *tmp, const char *fmt, const char *input, const char *name) {
    char tok[4096], o[4096];
    snprintf(tok, sizeof tok, "%s/llama3-tokenizer/tokenizer.json", fx);
    snprintf(o, sizeof o, "%s/%s", tmp, name);
    char *argv[] = {"data", "--tokenizer", tok, "--input", (char *)input, "-o", o, "--format", (char *)fmt,
                    "--val-fraction", "0.5", "--seed", "3", NULL};
    if (zb_cmd_data(13, argv)) die(name);
    pack_dir(o, name);
}

static void shards(void) {
    /* a fixed work folder (not mkdtemp): the shards' headers name their inputs, and the seeds
     * must be the same bytes on every run for CI's fixed-seed fuzzing to be reproducible */
    char tmp[2048];
    if (snprintf(tmp, sizeof tmp, "%s/.shards-work", out) >= (int)sizeof tmp) { fprintf(stderr, "make_seeds: path too long\n"); exit(1); }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) { perror("make_seeds"); exit(1); }
    cJSON *j = read_json("llama3-tokenizer/chat_ref.json"), *c;
    char p[3][4096];
    snprintf(p[0], sizeof p[0], "%s/text.jsonl", tmp);
    snprintf(p[1], sizeof p[1], "%s/chat.jsonl", tmp);
    snprintf(p[2], sizeof p[2], "%s/pref.jsonl", tmp);
    FILE *ft = fopen(p[0], "w"), *fc = fopen(p[1], "w"), *fp = fopen(p[2], "w");
    if (!ft || !fc || !fp) { perror("make_seeds"); exit(1); }
    int i = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        if (cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"))) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "messages", cJSON_Duplicate(msgs, 1));
        char *s = cJSON_PrintUnformatted(o);
        fprintf(fc, "%s\n", s);
        free(s);
        cJSON_Delete(o);
        o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "text", cJSON_CreateString(cJSON_GetObjectItem(c, "text")->valuestring));
        s = cJSON_PrintUnformatted(o);
        fprintf(ft, "%s\n", s);
        free(s);
        cJSON_Delete(o);
        fprintf(fp, "{\"prompt\": \"question %d?\", \"chosen\": \"a good answer\", \"rejected\": \"no\"}\n", i++);
    }
    cJSON_Delete(j);
    fclose(ft); fclose(fc); fclose(fp);
    shard_seed(tmp, "jsonl", p[0], "text");
    shard_seed(tmp, "chat", p[1], "chat");
    shard_seed(tmp, "pref", p[2], "pref");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "make_seeds: could not remove %s\n", tmp);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 4) { fprintf(stderr, "usage: make_seeds FIXTURES SRCDIR OUTDIR\n"); return 2; }
    fx = argv[1];
    srcdir = argv[2];
    out = argv[3];
    if (mkdir(out, 0755) != 0 && errno != EEXIST) { fprintf(stderr, "make_seeds: cannot create %s\n", out); return 1; }
    static const char *const subs[] = {"safetensors", "config", "tokenizer", "encode", "plan", "hdf5", "shards", "runcfg"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) mkdir_p(subs[i]);

    static const char *const st[][2] = {
        {"hf-llama-tiny/model-00001-of-00003.safetensors", "llama-shard1.safetensors"},
        {"hf-llama-tiny/model-00002-of-00003.safetensors", "llama-shard2.safetensors"},
        {"hf-llama-tiny/model-00003-of-00003.safetensors", "llama-shard3.safetensors"},
        {"hf-llama-tiny/ref.safetensors", "llama-ref.safetensors"},
        {"hf-mla-tiny/model.safetensors", "mla.safetensors"},
        {"hf-mla-tiny/ref.safetensors", "mla-ref.safetensors"},
        {"hf-mamba2-layer/layer.safetensors", "mamba2-layer.safetensors"},
        {"zebra-release-tiny/model.safetensors", "zebra-release.safetensors"},
        {"zebra-release-tiny/ref.safetensors", "zebra-release-ref.safetensors"},
    };
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) shrink_st(st[i][0], st[i][1]);
    copy("hf-llama-tiny/model.safetensors.index.json", "safetensors", "llama-index.json");

    copy("hf-llama-tiny/config.json", "config", "llama-tiny.json");
    copy("hf-mla-tiny/config.json", "config", "mla-tiny.json");
    copy("zebra-release-tiny/config.json", "config", "zebra-release.json");
    copy("zebra-release-tiny/hybrid_config.json", "config", "zebra-release-hybrid.json");
    copy("hf-mamba2-layer/meta.json", "config", "mamba2-meta.json");
    copy_repo_json("configs", "config", "bytes-tokenizer.json");
    copy_repo_json("tests", "config", NULL);

    trim_tokenizer();
    char bt[4096], *t;
    size_t len;
    snprintf(bt, sizeof bt, "%s/configs/bytes-tokenizer.json", srcdir);
    if (zb_read_file(bt, &t, &len)) die(bt);
    put("tokenizer", "bytes-tokenizer.json", t, len);
    free(t);
    texts("llama3-tokenizer/tokenizer_ref.json", "ref");
    texts("llama3-tokenizer/chat_ref.json", "chat");

    copy("zebra-release-tiny/hybrid_config.json", "plan", "zebra-release-hybrid.json");

    h5_seed("llama.h5", "hf-llama-tiny/config.json", "hf-llama-tiny/model-00001-of-00003.safetensors");
    h5_seed("mla.h5", "hf-mla-tiny/config.json", "hf-mla-tiny/model.safetensors");
    h5_seed("small.h5", "hf-llama-tiny/config.json", NULL);

    shards();
    printf("make_seeds: corpora in %s\n", out);
    MPI_Finalize();
    return 0;
}
