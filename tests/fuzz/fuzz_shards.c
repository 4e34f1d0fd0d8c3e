/* fuzz_shards.c — the shard set readers (core/data.c: zb_shard_open, the loader, zb_pref_open,
 * zb_shards_verify) on a shard directory that is the input: manifest.json first, then the
 * other files as "@@@ <name>" sections (fuzz_common.h). Each input runs twice: as given, and
 * with the manifest's sizes and hashes made to match the files (so that the fuzzer reaches the
 * readers of the binary files without having to forge FNV hashes). */
#include <cJSON.h>

#include "data.h"
#include "fuzz_common.h"

static const char *const names[] = {"manifest.json", "train.bin", "train.idx", "train.mask", "val.bin", "val.idx",
                                    "val.mask", "train.prefs.bin", "train.prefs.idx", "val.prefs.bin",
                                    "val.prefs.idx", NULL};

static void read_split(const char *dir, const char *split) {
    zb_shard *s = NULL;
    int rc = zb_shard_open(&s, dir, split);
    if (rc) { fz_check_msg(rc, dir); }
    else {
        uint64_t nt = 0;
        const uint32_t *tok = zb_shard_tokens(s, &nt);
        fz_touch(tok, nt * 4);
        const uint8_t *m = zb_shard_mask(s);
        if (m) fz_touch(m, nt);
        uint64_t nd = zb_shard_docs(s);
        for (uint64_t i = 0; i < nd && i < 100000; i++) {
            uint64_t a, b;
            FZ_ASSERT(!zb_shard_doc(s, i, &a, &b), "doc %llu: %s", (unsigned long long)i, zb_errmsg());
            FZ_ASSERT(a <= b && b <= nt, "doc %llu spans [%llu, %llu) of %llu tokens", (unsigned long long)i,
                      (unsigned long long)a, (unsigned long long)b, (unsigned long long)nt);
            fz_touch(tok + a, (b - a) * 4);
        }
        FZ_ASSERT(zb_shard_doc(s, nd, &(uint64_t){0}, &(uint64_t){0}), "a doc past the end was given");
        zb_shard_close(s);
    }
    zb_loader *l = NULL;
    rc = zb_loader_open(&l, dir, split, 2, 3, 1, 2);
    if (rc) { fz_check_msg(rc, dir); }
    else {
        /* a row may still be refused as it is read (a token id outside the manifest's
         * vocabulary): then with one clear line naming the file */
        int ids[6], tg[6], bad = 0;
        for (int k = 0; k < 5 && !bad; k++)
            if ((rc = zb_loader_next(l, ids, tg))) { fz_check_msg(rc, dir); bad = 1; }
        if (!bad) {
            zb_loader_pos p = zb_loader_tell(l);
            FZ_ASSERT(!zb_loader_seek(l, p), "seek to tell: %s", zb_errmsg());
            if ((rc = zb_loader_next(l, ids, tg))) fz_check_msg(rc, dir);
        }
        zb_loader_close(l);
    }
    zb_prefs *pr = NULL;
    rc = zb_pref_open(&pr, dir, split);
    if (rc) { fz_check_msg(rc, dir); }
    else {
        uint64_t np = zb_pref_count(pr);
        for (uint64_t i = 0; i < np && i < 100000; i++) {
            zb_pref_pair pp;
            if ((rc = zb_pref_get(pr, i, &pp))) { fz_check_msg(rc, dir); break; }   /* e.g. an id outside the vocabulary */
            fz_touch(pp.prompt, pp.n_prompt * 4);
            fz_touch(pp.chosen, pp.n_chosen * 4);
            fz_touch(pp.rejected, pp.n_rejected * 4);
        }
        zb_pref_close(pr);
    }
}

static void read_all(const char *dir) {
    read_split(dir, "train");
    read_split(dir, "val");
    int rc = zb_shards_verify(dir);
    if (rc) fz_check_msg(rc, dir);
}

/* Rewrite manifest.json with "files" entries matching the files present; 0 if nothing changed
 * or the manifest is not a JSON object. */
static int fix_manifest(const char *dir) {
    char p[512];
    char *txt = NULL;
    if (zb_read_file(fz_path(p, sizeof p, "manifest.json"), &txt, NULL)) return 0;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsObject(j)) { cJSON_Delete(j); return 0; }
    cJSON *files = cJSON_CreateObject();
    for (int k = 1; names[k]; k++) {
        char *d = NULL;
        size_t n = 0;
        if (zb_read_file(fz_path(p, sizeof p, names[k]), &d, &n)) continue;
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)zb_fnv64(d, n, ZB_FNV64_INIT));
        free(d);
        cJSON *f = cJSON_AddObjectToObject(files, names[k]);
        cJSON_AddNumberToObject(f, "bytes", (double)n);
        cJSON_AddStringToObject(f, "fnv64", hex);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "files");
    cJSON_AddItemToObject(j, "files", files);
    char *out = cJSON_Print(j);
    cJSON_Delete(j);
    if (!out) return 0;
    fz_write(p, sizeof p, "manifest.json", out, strlen(out));
    free(out);
    (void)dir;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write_files(data, size, names);
    const char *dir = fz_dir();
    read_all(dir);
    if (fix_manifest(dir)) read_all(dir);
    return 0;
}
