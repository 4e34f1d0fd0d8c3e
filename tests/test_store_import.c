/* test_store_import.c — zb_store over an HF directory and over the native .h5 written by
 * `zebra import` (bit-exact agreement, shapes, row slices, config), the expected-tensor
 * enumeration against both fixtures, broken .h5 files, and (with several ranks) a collective
 * row-sliced write. Usage: test_store_import FIXTURES_DIR */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "commands.h"
#include "store.h"
#include "tensor_names.h"
#include "zb_common.h"
#include "zb_test.h"

static char tmpdir[256];
static int rank, nranks;

/* Every tensor of b is in a with the same dtype, shape and bytes; configs identical. */
static void compare_stores(const char *what, const zb_store *a, const zb_store *b) {
    zb_check(!memcmp(zb_store_config(a), zb_store_config(b), sizeof(zb_config)), "%s: identical config", what);
    int bad = 0, n = zb_store_count(b);
    for (int i = 0; i < n; i++) {
        const char *name = zb_store_name_at(b, i);
        int k = zb_store_find(a, name), nda, ndb;
        int64_t sa[ZB_MAX_DIMS], sb[ZB_MAX_DIMS], numel = 1;
        zb_dtype da, db;
        if (k < 0) { bad++; printf("  %s missing\n", name); continue; }
        zb_store_info_at(a, k, &nda, sa, &da);
        zb_store_info_at(b, i, &ndb, sb, &db);
        if (nda != ndb || da != db || memcmp(sa, sb, (size_t)nda * sizeof *sa)) { bad++; continue; }
        for (int d = 0; d < nda; d++) numel *= sa[d];
        size_t nb = (size_t)numel * zb_dtype_size(da);
        char *x = malloc(nb + 1), *y = malloc(nb + 1);
        if (zb_store_read_raw(a, name, x) || zb_store_read_raw(b, name, y) || memcmp(x, y, nb)) bad++;
        float *fx = malloc((size_t)numel * 4 + 4), *fy = malloc((size_t)numel * 4 + 4);
        if (zb_store_read(a, name, fx, nda, sa) || zb_store_read(b, name, fy, ndb, sb) ||
            memcmp(fx, fy, (size_t)numel * 4)) bad++;
        free(x); free(y); free(fx); free(fy);
    }
    zb_check(bad == 0 && n > 0, "%s: %d tensors bit-exact (%d bad)", what, n, bad);
}

static void check_expected(const char *what, const zb_store *s, int want_n) {
    zb_tensor_spec *spec = NULL;
    int n = 0, bad = 0;
    zb_check(zb_expected_tensors(zb_store_config(s), &spec, &n) == 0, "%s: expected tensors", what);
    for (int i = 0; i < n; i++) {
        int k = zb_store_find(s, spec[i].name), nd;
        int64_t sh[ZB_MAX_DIMS];
        zb_dtype dt;
        if (k < 0 || zb_store_info_at(s, k, &nd, sh, &dt) || nd != spec[i].ndim ||
            memcmp(sh, spec[i].shape, (size_t)nd * sizeof *sh)) {
            bad++;
            printf("  %s: %s absent or wrong shape\n", what, spec[i].name);
        }
    }
    zb_check(bad == 0 && n == want_n, "%s: %d expected tensors (want %d), all present with their shapes", what, n, want_n);
    zb_check(n == 0 || zb_tensor_spec_find(spec, n, "model.embed_tokens.weight") == &spec[0], "%s: embed first", what);
    free(spec);
}

static void test_store(const char *fx, const char *sub, int want_n) {
    char dir[1024], h5[512];
    snprintf(dir, sizeof dir, "%s/%s", fx, sub);
    snprintf(h5, sizeof h5, "%s/%s.h5", tmpdir, sub);
    char *av[] = {"import", dir, "-o", h5, NULL};
    int rc = zb_cmd_import(4, av);
    zb_check(rc == 0, "%s: import: %s", sub, rc ? zb_errmsg() : "ok");
    zb_store *a = NULL, *b = NULL;
    if (!zb_check(zb_store_open(&a, dir) == 0, "%s: open dir: %s", sub, zb_errmsg())) return;
    if (!zb_check(zb_store_open(&b, h5) == 0, "%s: open h5: %s", sub, zb_errmsg())) { zb_store_close(a); return; }
    check_expected(sub, a, want_n);
    check_expected(sub, b, want_n);
    zb_check(zb_store_count(b) == want_n, "%s: h5 holds exactly the expected tensors", sub);
    compare_stores(sub, a, b);

    /* shape mismatch and absence */
    const zb_store *both[2] = {a, b};
    const zb_config *c = zb_store_config(a);
    for (int s = 0; s < 2; s++) {
        const zb_store *st = both[s];
        int64_t wrong[2] = {c->vocab, c->d_model + 1};
        float *buf = malloc((size_t)c->vocab * (c->d_model + 1) * sizeof *buf);
        rc = zb_store_read(st, "model.embed_tokens.weight", buf, 2, wrong);
        const char *m = zb_errmsg();
        char want[64], found[64];
        snprintf(want, sizeof want, "expected shape [%d, %d]", c->vocab, c->d_model + 1);
        snprintf(found, sizeof found, "found [%d, %d]", c->vocab, c->d_model);
        zb_check(rc == ZB_ESHAPE && strstr(m, "model.embed_tokens.weight") && strstr(m, want) && strstr(m, found) &&
                 (strstr(m, ".safetensors") || strstr(m, ".h5")), "%s[%d]: shape mismatch message: %s", sub, s, m);
        rc = zb_store_read(st, "model.no_such.weight", buf, 1, wrong);
        zb_check(rc == ZB_ENOTFOUND && strstr(zb_errmsg(), "model.no_such.weight"), "%s[%d]: absent: %s", sub, s,
                 zb_errmsg());
        zb_check(!zb_store_has(st, "model.no_such.weight") && zb_store_has(st, "model.norm.weight"), "%s[%d]: has", sub, s);
        /* row slice == the same rows of the full tensor */
        int64_t sh[2] = {c->vocab, c->d_model};
        float *full = malloc((size_t)c->vocab * c->d_model * sizeof *full);
        zb_store_read(st, "model.embed_tokens.weight", full, 2, sh);
        rc = zb_store_read_rows(st, "model.embed_tokens.weight", buf, 5, 7);
        zb_check(rc == 0 && !memcmp(buf, full + 5 * c->d_model, (size_t)7 * c->d_model * sizeof *buf),
                 "%s[%d]: rows 5..11 match", sub, s);
        zb_check(zb_store_read_rows(st, "model.embed_tokens.weight", buf, c->vocab - 2, 3) == ZB_ESHAPE,
                 "%s[%d]: rows past the end refused: %s", sub, s, zb_errmsg());
        free(full);
        free(buf);
    }
    zb_store_close(a);
    zb_store_close(b);
}

static void write_file(const char *p, const void *d, size_t n) {
    FILE *f = fopen(p, "wb");
    if (!f) return;
    fwrite(d, 1, n, f);
    fclose(f);
}

static void test_bad_h5(void) {
    char p[512], good[512];
    zb_store *s = NULL;
    snprintf(p, sizeof p, "%s/fake.h5", tmpdir);
    write_file(p, "this is not hdf5 at all, just text\n", 35);
    int rc = zb_store_open(&s, p);
    zb_check(rc != 0 && !s && strstr(zb_errmsg(), "fake.h5") && strstr(zb_errmsg(), "not an HDF5 file"),
             "non-HDF5 .h5: %s", zb_errmsg());
    /* a truncated checkpoint */
    snprintf(good, sizeof good, "%s/hf-llama-tiny.h5", tmpdir);
    char *buf = NULL;
    size_t len = 0;
    if (zb_read_file(good, &buf, &len) == 0) {
        size_t cuts[3] = {len / 2, 4096, 600};
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s/trunc%d.h5", tmpdir, i);
            write_file(p, buf, cuts[i] < len ? cuts[i] : len);
            s = NULL;
            rc = zb_store_open(&s, p);
            int ok_read = 0;
            if (rc == 0) {   /* metadata may survive a cut; a data read must then fail cleanly */
                float *g = malloc(sizeof(float) * 65536);
                for (int k = 0; k < zb_store_count(s); k++) {
                    int nd;
                    int64_t shp[ZB_MAX_DIMS];
                    zb_dtype dt;
                    zb_store_info_at(s, k, &nd, shp, &dt);
                    if (zb_store_read_rows(s, zb_store_name_at(s, k), g, 0, nd ? shp[0] : 1)) ok_read = 1;
                }
                free(g);
                zb_store_close(s);
            }
            zb_check((rc != 0 && strstr(zb_errmsg(), p) != NULL) || ok_read,
                     "truncated h5 (%zu of %zu bytes) fails with its name: %s", cuts[i], len, zb_errmsg());
        }
        free(buf);
    }
    rc = zb_store_open(&s, "/nonexistent/model.h5");
    zb_check(rc == ZB_EIO && strstr(zb_errmsg(), "/nonexistent/model.h5"), "missing h5: %s", zb_errmsg());
    /* an HDF5 file that is not a zebra checkpoint */
    snprintf(p, sizeof p, "%s/noconfig.h5", tmpdir);
    zb_ckpt_writer *w = NULL;
    if (zb_ckpt_writer_open(&w, p, MPI_COMM_SELF) == 0) {
        float x[3] = {1, 2, 3};
        int64_t sh[1] = {3};
        zb_ckpt_write_tensor(w, "x", ZB_DT_F32, 1, sh, x);
        zb_check(zb_ckpt_write_tensor(w, "a/b", ZB_DT_F32, 1, sh, x) == ZB_EARG, "name with '/' refused");
        zb_check(zb_ckpt_close(w) == 0, "close");
        rc = zb_store_open(&s, p);
        zb_check(rc != 0 && strstr(zb_errmsg(), "config_json"), "h5 without config: %s", zb_errmsg());
    }
    /* abort leaves nothing behind */
    snprintf(p, sizeof p, "%s/aborted.h5", tmpdir);
    if (zb_ckpt_writer_open(&w, p, MPI_COMM_SELF) == 0) {
        zb_ckpt_abort(w);
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
        zb_check(access(p, F_OK) != 0 && access(tmp, F_OK) != 0, "abort leaves no file");
    }
    rc = zb_ckpt_writer_open(&w, "/nonexistent-dir/x.h5", MPI_COMM_SELF);
    zb_check(rc != 0 && strstr(zb_errmsg(), "/nonexistent-dir/x.h5"), "unwritable h5: %s", zb_errmsg());
}

/* Several ranks each write their rows of one tensor collectively; all read it back. */
static void test_collective(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/coll.h5", tmpdir);
    MPI_Bcast(p, sizeof p, MPI_CHAR, 0, MPI_COMM_WORLD);
    const int rows = 10, cols = 3;
    int64_t sh[2] = {rows, cols};
    int r0 = rows * rank / nranks, r1 = rows * (rank + 1) / nranks;
    uint16_t *mine = malloc(sizeof(uint16_t) * (size_t)((r1 - r0) * cols + 1));
    for (int r = r0; r < r1; r++)
        for (int k = 0; k < cols; k++) mine[(r - r0) * cols + k] = zb_f32_to_bf16((float)(r * cols + k));
    zb_ckpt_writer *w = NULL;
    int rc = zb_ckpt_writer_open(&w, p, MPI_COMM_WORLD);
    if (!zb_check(rc == 0, "collective open: %s", zb_errmsg())) { free(mine); return; }
    char *json = NULL;
    {
        zb_config c;
        const char *j = "{\"model_type\": \"llama\", \"hidden_size\": 4, \"num_hidden_layers\": 1, \"vocab_size\": 8,"
                        " \"intermediate_size\": 4, \"num_attention_heads\": 2}";
        zb_config_parse(j, "x", &c);
        json = zb_config_to_json(&c);
    }
    rc = zb_ckpt_set_config(w, json);
    if (!rc) rc = zb_ckpt_write_rows(w, "w", ZB_DT_BF16, 2, sh, r0, r1 - r0, mine);
    zb_check(rc == 0, "collective write_rows: %s", rc ? zb_errmsg() : "ok");
    zb_check(zb_ckpt_close(w) == 0, "collective close: %s", zb_errmsg());
    free(json);
    free(mine);
    MPI_Barrier(MPI_COMM_WORLD);
    zb_ckpt_reader *r = NULL;
    if (!zb_check(zb_ckpt_reader_open(&r, p) == 0, "reopen: %s", zb_errmsg())) return;
    int i = zb_ckpt_find(r, "w");
    float all[30];
    zb_check(i >= 0 && zb_ckpt_entry_at(r, i)->dtype == ZB_DT_BF16, "dtype BF16 kept");
    int ok = i >= 0 && zb_ckpt_read_f32(r, i, 0, rows, all) == 0;
    for (int k = 0; ok && k < rows * cols; k++) ok = all[k] == (float)k;
    zb_check(ok, "every rank's rows landed (%d ranks)", nranks);
    zb_ckpt_reader_close(r);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    const char *fx = argc > 1 ? argv[1] : "../shared/fixtures";
    snprintf(tmpdir, sizeof tmpdir, "/tmp/zb_io_XXXXXX");
    if (rank == 0 && !mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    MPI_Bcast(tmpdir, sizeof tmpdir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (nranks == 1) {
        test_store(fx, "hf-llama-tiny", 1 + 3 * 9 + 1);    /* tied: no lm_head */
        test_store(fx, "hf-mla-tiny", 1 + 2 * 10 + 1 + 1); /* MLA: q, kv_a, kv_a_norm, kv_b, o + 5; untied */
        test_bad_h5();
    }
    test_collective();
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return zb_test_finish();
}
