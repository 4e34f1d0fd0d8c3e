/* cmd_export.c — `zebra export MODEL -o DIR [--dtype bf16|f32] [--max-shard-size 5GB]`:
 * a model (HF directory, release directory or .h5) written for the outside world:
 *   - a hybrid (MLA / Mamba2 layers) in the authors' Zebra-Llama release layout (release.h):
 *     config.json (the Llama base), hybrid_config.json, model.safetensors with the release's
 *     names and lm_head.weight stored even when tied, so that their HybridModelWrapper loads it;
 *   - a pure Llama model as a Hugging Face Llama directory (config.json, model.safetensors, no
 *     lm_head.weight when tied, as save_pretrained writes it).
 * Tensors keep their stored dtype unless --dtype converts them (f32 -> bf16 rounds to nearest
 * even, as torch). Above --max-shard-size (HF's default 5 GB = 5e9 bytes) the weights are split
 * as HF does: model-0000k-of-0000n.safetensors + model.safetensors.index.json. The tokenizer
 * files beside a MODEL directory come along. Everything is written into a temporary directory
 * beside DIR and renamed into place at the end: on any error nothing is left. A model that the
 * release would compute differently (an MLA with llama3-scaled RoPE, attention layers in a
 * hybrid, ...) is refused with one line saying why. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "release.h"
#include "safetensors.h"
#include "store.h"
#include "tensor_names.h"
#include "zb_common.h"

typedef struct {
    char name[ZB_TNAME_MAX];   /* written name */
    char src[ZB_TNAME_MAX];    /* zebra's name in the store */
    int ndim;
    int64_t shape[3];
    zb_dtype dt;               /* written dtype */
    size_t bytes;
} out_tensor;

typedef struct { const zb_store *st; const out_tensor *t; } fill_ctx;

/* One tensor's bytes in the written dtype: as stored, or converted through f32. */
static int fill(void *ctx, const char *name, void *dst, size_t nbytes) {
    const fill_ctx *f = ctx;
    const out_tensor *t = f->t;
    (void)name;
    int k = zb_store_find(f->st, t->src), nd;
    int64_t sh[ZB_MAX_DIMS], numel = 1;
    zb_dtype sdt;
    ZB_TRY(zb_store_info_at(f->st, k, &nd, sh, &sdt));
    for (int i = 0; i < nd; i++) numel *= sh[i];
    if (sdt == t->dt) return zb_store_read_raw(f->st, t->src, dst);
    float *x = zb_malloc(sizeof(float) * (size_t)numel, t->src);
    if (!x) return ZB_ENOMEM;
    int rc = zb_store_read(f->st, t->src, x, t->ndim, t->shape);
    if (!rc && t->dt == ZB_DT_F32) memcpy(dst, x, nbytes);
    else if (!rc) for (int64_t i = 0; i < numel; i++) ((uint16_t *)dst)[i] = zb_f32_to_bf16(x[i]);
    free(x);
    return rc;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int write_text(const char *dir, const char *name, const char *text) {
    char p[4096 + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot create (%s)", p, strerror(errno));
    int ok = fputs(text, f) >= 0 && fputs("\n", f) >= 0;
    if (fclose(f) != 0) ok = 0;
    return ok ? ZB_OK : zb_fail(ZB_EIO, "%s: write failed (%s)", p, strerror(errno));
}

/* The tokenizer files HF loaders read, copied from a MODEL directory when present. */
static int copy_side_files(const char *from, const char *to, int *copied) {
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "chat_template.jinja"};
    struct stat sb;
    *copied = 0;
    if (stat(from, &sb) || !S_ISDIR(sb.st_mode)) return ZB_OK;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[4096 + 64];
        snprintf(p, sizeof p, "%s/%s", from, names[i]);
        if (stat(p, &sb)) continue;
        char *txt = NULL;
        ZB_TRY(zb_read_file(p, &txt, NULL));
        int rc = write_text(to, names[i], txt);
        free(txt);
        ZB_TRY(rc);
        ++*copied;
    }
    return ZB_OK;
}

/* "5GB", "200KB", "1000000" -> bytes (decimal units, as HF's max_shard_size). */
static int parse_size(const char *s, size_t *out) {
    char *end;
    double v = *s >= '0' && *s <= '9' ? strtod(s, &end) : 0;   /* digits first: no nan, inf, sign, space */
    double mul = v <= 0 ? -1 : !*end ? 1 : !strcmp(end, "KB") ? 1e3 : !strcmp(end, "MB") ? 1e6 : !strcmp(end, "GB") ? 1e9 : -1;
    if (mul < 0 || !(v * mul >= 1 && v * mul <= 0x1p62))
        return zb_fail(ZB_EARG, "export: --max-shard-size '%s' must be a positive size (bytes, or with KB, MB, GB)", s);
    *out = (size_t)(v * mul);
    return ZB_OK;
}

/* The written tensors of config c in the layout chosen (release names, lm_head when tied). */
static int plan(const zb_store *st, const zb_config *c, int release, int force_dt, zb_dtype dt, out_tensor **out,
                int *n_out) {
    zb_tensor_spec *spec = NULL;
    int n = 0;
    ZB_TRY(zb_expected_tensors(c, &spec, &n));
    int tied_head = release && c->tie_embeddings;   /* the release stores it anyway */
    out_tensor *t = zb_calloc((size_t)n + 1, sizeof *t, "export plan");
    if (!t) { free(spec); return ZB_ENOMEM; }
    int rc = ZB_OK;
    for (int i = 0; i < n + tied_head && !rc; i++) {
        const zb_tensor_spec *s = i < n ? &spec[i] : zb_tensor_spec_find(spec, n, "model.embed_tokens.weight");
        const char *ours = i < n ? s->name : "lm_head.weight";
        snprintf(t[i].src, sizeof t[i].src, "%s", s->name);
        if (release) zb_release_stored_name(c, ours, t[i].name, sizeof t[i].name);
        else snprintf(t[i].name, sizeof t[i].name, "%s", ours);
        t[i].ndim = s->ndim;
        size_t numel = 1;
        for (int k = 0; k < s->ndim; k++) { t[i].shape[k] = s->shape[k]; numel *= (size_t)s->shape[k]; }
        int k = zb_store_find(st, s->name), nd;
        int64_t sh[ZB_MAX_DIMS];
        zb_dtype sdt;
        if (k < 0) { rc = zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing", zb_store_path(st), s->name); break; }
        if ((rc = zb_store_info_at(st, k, &nd, sh, &sdt))) break;
        if (sdt != ZB_DT_F32 && sdt != ZB_DT_BF16 && !force_dt) sdt = ZB_DT_F32;   /* f16 / f64: as f32 */
        t[i].dt = force_dt ? dt : sdt;
        t[i].bytes = numel * zb_dtype_size(t[i].dt);
    }
    free(spec);
    if (rc) { free(t); return rc; }
    *out = t;
    *n_out = n + tied_head;
    return ZB_OK;
}

static const char *torch_dtype(zb_dtype d) { return d == ZB_DT_BF16 ? "bfloat16" : "float32"; }

/* The weights: one file, or HF's shards (a new shard when the next tensor would pass max_shard;
 * a tensor larger than max_shard alone in its own) + model.safetensors.index.json. */
static int write_weights(const zb_store *st, const out_tensor *t, int n, const char *dir, size_t max_shard,
                         int *n_shards) {
    int *shard_of = zb_calloc((size_t)n, sizeof(int), "shard plan");
    if (!shard_of) return ZB_ENOMEM;
    size_t cur = 0, total = 0;
    int ns = 1;
    for (int i = 0; i < n; i++) {
        if (cur > 0 && cur + t[i].bytes > max_shard) { ns++; cur = 0; }
        shard_of[i] = ns - 1;
        cur += t[i].bytes;
        total += t[i].bytes;
    }
    fill_ctx *ctx = zb_calloc((size_t)n, sizeof *ctx, "export");
    int rc = ctx ? ZB_OK : ZB_ENOMEM;
    char file[64], path[4096 + 128];
    for (int s = 0; s < ns && !rc; s++) {
        zb_st_writer *w = zb_st_writer_new();
        if (!w) { rc = ZB_ENOMEM; break; }
        for (int i = 0; i < n && !rc; i++)
            if (shard_of[i] == s) {
                ctx[i].st = st;
                ctx[i].t = &t[i];
                rc = zb_st_writer_add_fill(w, t[i].name, t[i].dt, t[i].ndim, t[i].shape, fill, &ctx[i]);
            }
        if (ns == 1) snprintf(file, sizeof file, "model.safetensors");
        else snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, ns);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        if (!rc) rc = zb_st_writer_save(w, path);
        zb_st_writer_free(w);
    }
    if (!rc && ns > 1) {   /* the index, as HF writes it */
        size_t cap = 256 + (size_t)n * (ZB_TNAME_MAX + 64), len = 0;
        char *ix = zb_malloc(cap, "index");
        if (!ix) rc = ZB_ENOMEM;
        for (int i = 0; !rc && i <= n; i++) {
            if (i == 0) len += (size_t)snprintf(ix + len, cap - len, "{\n  \"metadata\": {\n    \"total_size\": %zu\n  },\n"
                                                "  \"weight_map\": {", total);
            if (i == n) { len += (size_t)snprintf(ix + len, cap - len, "\n  }\n}"); break; }
            snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, ns);
            len += (size_t)snprintf(ix + len, cap - len, "%s\n    \"%s\": \"%s\"", i ? "," : "", t[i].name, file);
        }
        if (!rc) rc = write_text(dir, "model.safetensors.index.json", ix);
        free(ix);
    }
    free(ctx);
    free(shard_of);
    *n_shards = ns;
    return rc;
}

static int export_model(const char *in, const char *out, int force_dt, zb_dtype dt, size_t max_shard) {
    struct stat sb;
    if (!stat(out, &sb)) {   /* never write into (or over) something that holds files; an empty
                              * directory is replaced by the final rename */
        int entries = 0;
        DIR *d = S_ISDIR(sb.st_mode) ? opendir(out) : NULL;
        for (struct dirent *e; d && (e = readdir(d));) entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
        if (d) closedir(d);
        if (!d || entries) return zb_fail(ZB_EIO, "export: %s exists and is not an empty directory", out);
    }
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, in));
    const zb_config *c = zb_store_config(st);
    int llama = 1;
    for (int i = 0; i < c->n_layers; i++) llama &= c->kinds[i] == ZB_LAYER_ATTN;
    int rc = llama ? ZB_OK : zb_release_check(c);
    if (rc) { zb_fail_prefix(rc, in); zb_store_close(st); return rc; }
    out_tensor *t = NULL;
    int n = 0;
    if ((rc = plan(st, c, !llama, force_dt, dt, &t, &n))) { zb_store_close(st); return rc; }
    zb_dtype main_dt = t[0].dt;   /* the embedding's: config.json's torch_dtype */

    char tmp[4096 + 64];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    if (mkdir(tmp, 0755)) rc = zb_fail(ZB_EIO, "export: cannot create %s (%s)", tmp, strerror(errno));
    char *base = NULL, *hyb = NULL;
    int shards = 0, side = 0;
    if (!rc && !(base = zb_hf_llama_json(c, torch_dtype(main_dt)))) rc = ZB_ENOMEM;
    if (!rc) rc = write_text(tmp, "config.json", base);
    if (!rc && !llama && !(hyb = zb_release_hybrid_json(c))) rc = ZB_ENOMEM;
    if (!rc && !llama) rc = write_text(tmp, "hybrid_config.json", hyb);
    if (!rc) rc = copy_side_files(in, tmp, &side);
    if (!rc) rc = write_weights(st, t, n, tmp, max_shard, &shards);
    if (!rc && rename(tmp, out)) rc = zb_fail(ZB_EIO, "export: cannot rename %s to %s (%s)", tmp, out, strerror(errno));
    if (rc) rm_tree(tmp);
    size_t bytes = 0;
    for (int i = 0; i < n; i++) bytes += t[i].bytes;
    if (!rc)
        printf("exported %d tensors (%.1f MB, %s%s) of %s as %s to %s: %s%s, %d weight file%s%s\n", n, bytes / 1e6,
               torch_dtype(main_dt), force_dt ? "" : " as stored", in,
               llama ? "a Hugging Face Llama" : "a Zebra-Llama release checkpoint", out,
               llama ? "config.json" : "config.json + hybrid_config.json", side ? " + tokenizer files" : "", shards,
               shards > 1 ? "s + index" : "", !llama && c->tie_embeddings ? " (lm_head.weight stored, tied)" : "");
    free(base);
    free(hyb);
    free(t);
    zb_store_close(st);
    return rc;
}

int zb_cmd_export(int argc, char **argv) {
    static const char *const vals[] = {"-o", "--out", "--dtype", "--max-shard-size", NULL};
    static const char *const usage = "usage: zebra export MODEL -o DIR [--dtype bf16|f32] [--max-shard-size 5GB]";
    ZB_TRY(zb_args_check(argc, argv, vals, NULL, 1));
    const char *in = zb_arg_pos(argc, argv, vals, 0);
    const char *out = zb_arg_str(argc, argv, "-o", zb_arg_str(argc, argv, "--out", NULL));
    if (!in || !out) return zb_fail(ZB_EARG, "export: needs MODEL and -o DIR (%s)", usage);
    const char *dts = zb_arg_str(argc, argv, "--dtype", NULL);
    zb_dtype dt = ZB_DT_F32;
    if (dts && strcmp(dts, "f32") && strcmp(dts, "bf16"))
        return zb_fail(ZB_EARG, "export: --dtype must be f32 or bf16, not '%s'", dts);
    if (dts && !strcmp(dts, "bf16")) dt = ZB_DT_BF16;
    size_t max_shard = 5000000000ull;   /* HF save_pretrained's max_shard_size "5GB" */
    const char *ms = zb_arg_str(argc, argv, "--max-shard-size", NULL);
    if (ms) ZB_TRY(parse_size(ms, &max_shard));
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) return zb_fail(ZB_EARG, "export: run it on one rank (it streams one tensor at a time)");
    return export_model(in, out, dts != NULL, dt, max_shard);
}
