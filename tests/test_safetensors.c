/* test_safetensors.c — the reader on the sharded bf16 fixture, the writer round trip, and
 * every kind of broken file (made here in a temp dir): each must fail with a one-line
 * message naming the file. Usage: test_safetensors FIXTURES_DIR */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "zb_common.h"
#include "zb_test.h"

static char tmpdir[256];

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}

/* A safetensors file from header text (length field = hl_override if non-zero) + ndata zero bytes. */
static void write_st(const char *path, const char *hdr, uint64_t hl_override, size_t ndata) {
    size_t hl = strlen(hdr), n = 8 + hl + ndata;
    uint8_t *b = calloc(1, n);
    uint64_t v = hl_override ? hl_override : hl;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    memcpy(b + 8, hdr, hl);
    write_bytes(path, b, n);
    free(b);
}

/* Open must fail, and the message must name `file` and contain `what`. */
static void expect_fail(const char *what_case, const char *path, const char *file, const char *what) {
    zb_safetensors *st = NULL;
    int rc = zb_st_open(&st, path);
    const char *m = zb_errmsg();
    zb_check(rc != 0 && st == NULL, "%s: open fails (rc=%d)", what_case, rc);
    zb_check(strstr(m, file) != NULL, "%s: message names the file '%s': %s", what_case, file, m);
    zb_check(strstr(m, what) != NULL, "%s: message mentions '%s': %s", what_case, what, m);
    zb_check(strchr(m, '\n') == NULL, "%s: one line", what_case);
    if (getenv("ZB_TEST_VERBOSE")) printf("  %s -> %s\n", what_case, m);
    zb_st_close(st);
}

static void test_fixture(const char *fx) {
    char dir[1024], idx[1100], shard[1100];
    snprintf(dir, sizeof dir, "%s/hf-llama-tiny", fx);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    zb_safetensors *st = NULL;
    int rc = zb_st_open(&st, dir);
    if (!zb_check(rc == 0, "open sharded dir: %s", zb_errmsg())) return;

    char *txt = NULL;
    zb_read_file(idx, &txt, NULL);
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
    zb_check(zb_st_count(st) == cJSON_GetArraySize(wm), "count %d == index entries %d", zb_st_count(st),
             cJSON_GetArraySize(wm));
    int all_in_shard = 1, all_bf16 = 1;
    for (const cJSON *e = wm->child; e; e = e->next) {
        const zb_st_tensor *t = zb_st_get(st, e->string);
        if (!t) { all_in_shard = 0; continue; }
        const char *f = zb_st_file_of(st, t);
        size_t lf = strlen(f), le = strlen(e->valuestring);
        if (lf < le || strcmp(f + lf - le, e->valuestring)) all_in_shard = 0;
        if (t->dtype != ZB_DT_BF16) all_bf16 = 0;
    }
    zb_check(all_in_shard, "every index entry found in its shard");
    zb_check(all_bf16, "fixture weights are BF16");
    cJSON_Delete(j);
    zb_check(zb_st_get(st, "no.such.tensor") == NULL, "absent tensor gives NULL");

    const zb_st_tensor *emb = zb_st_get(st, "model.embed_tokens.weight");
    if (zb_check(emb != NULL, "embed present")) {
        zb_check(emb->ndim == 2 && emb->shape[0] == 256 && emb->shape[1] == 64 && emb->numel == 256 * 64,
                 "embed shape [256, 64]");
        float *f = malloc((size_t)emb->numel * sizeof *f);
        zb_check(zb_st_to_f32(emb, f) == 0, "embed to f32");
        int finite = 1, exact = 1;
        double ss = 0;
        const uint8_t *raw = emb->data;
        for (int64_t i = 0; i < emb->numel; i++) {
            if (!isfinite(f[i])) finite = 0;
            ss += (double)f[i] * f[i];
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            uint32_t u;
            memcpy(&u, &f[i], 4);
            if (u != (uint32_t)h << 16) exact = 0;   /* bf16 -> f32 is exact: the high half */
        }
        zb_check(finite && ss > 0, "embed values finite and non-zero");
        zb_check(exact, "bf16 -> f32 conversion is bit-exact");
        int32_t *iv = malloc((size_t)emb->numel * sizeof *iv);
        zb_check(zb_st_to_i32(emb, iv) != 0 && strstr(zb_errmsg(), "embed_tokens"), "to_i32 on BF16 refused: %s",
                 zb_errmsg());
        free(iv);
        free(f);
    }
    zb_st_close(st);

    /* the index file itself, and one shard alone */
    rc = zb_st_open(&st, idx);
    zb_check(rc == 0 && zb_st_count(st) == 29, "open via index.json path");
    zb_st_close(st);
    snprintf(shard, sizeof shard, "%s/model-00003-of-00003.safetensors", dir);
    rc = zb_st_open(&st, shard);
    zb_check(rc == 0 && zb_st_get(st, "model.norm.weight") && !zb_st_get(st, "model.embed_tokens.weight"),
             "open a single shard");
    zb_st_close(st);
    /* directory with a single model.safetensors */
    snprintf(dir, sizeof dir, "%s/hf-mla-tiny", fx);
    rc = zb_st_open(&st, dir);
    zb_check(rc == 0 && zb_st_count(st) == 23, "open single-file dir (hf-mla-tiny): %s", rc ? zb_errmsg() : "ok");
    if (!rc) {
        const zb_st_tensor *t = zb_st_get(st, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
        zb_check(t && t->dtype == ZB_DT_F32 && t->shape[0] == 40 && t->shape[1] == 64, "mla kv_a shape [40, 64]");
    }
    zb_st_close(st);
}

static void test_writer(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
    float f32[6] = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
    uint16_t bf[4] = {zb_f32_to_bf16(1.0f), zb_f32_to_bf16(-3.5f), zb_f32_to_bf16(0.1f), zb_f32_to_bf16(65504.f)};
    uint16_t hf[3] = {zb_f32_to_f16(0.5f), zb_f32_to_f16(-1.25f), zb_f32_to_f16(2048.f)};
    int32_t i32[5] = {1, -2, 3, 2147483647, -2147483647};
    int64_t i64[2] = {7, -9};
    uint8_t u8[3] = {0, 128, 255};
    double f64[2] = {0.25, -1e10};
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s3[1] = {3}, s5[1] = {5}, s2[1] = {2}, s0[1] = {0};
    zb_st_writer *w = zb_st_writer_new();
    int rc = 0;
    rc |= zb_st_writer_add(w, "a.f32", ZB_DT_F32, 2, s23, f32);
    rc |= zb_st_writer_add(w, "b.bf16", ZB_DT_BF16, 1, s4, bf);
    rc |= zb_st_writer_add(w, "c.f16", ZB_DT_F16, 1, s3, hf);
    rc |= zb_st_writer_add(w, "d.i32", ZB_DT_I32, 1, s5, i32);
    rc |= zb_st_writer_add(w, "e.i64", ZB_DT_I64, 1, s2, i64);
    rc |= zb_st_writer_add(w, "f.u8", ZB_DT_U8, 1, s3, u8);
    rc |= zb_st_writer_add(w, "g.f64", ZB_DT_F64, 1, s2, f64);
    rc |= zb_st_writer_add(w, "h.scalar", ZB_DT_F32, 0, NULL, f32);
    rc |= zb_st_writer_add(w, "i.empty", ZB_DT_F32, 1, s0, NULL);
    rc |= zb_st_writer_add(w, "j \"quoted\\name", ZB_DT_F32, 1, s2, f32);
    zb_check(rc == 0, "writer add");
    zb_check(zb_st_writer_add(w, "a.f32", ZB_DT_F32, 1, s2, f32) != 0, "duplicate name refused");
    zb_check(zb_st_writer_save(w, path) == 0, "writer save: %s", zb_errmsg());
    zb_st_writer_free(w);

    /* no temp file left, header padded to 8 */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    zb_check(access(tmp, F_OK) != 0, "no temp file left behind");
    char *buf = NULL;
    size_t len = 0;
    zb_read_file(path, &buf, &len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)buf[i];
    zb_check((8 + hl) % 8 == 0, "data starts 8-byte aligned (header %llu)", (unsigned long long)hl);
    free(buf);

    zb_safetensors *st = NULL;
    if (!zb_check(zb_st_open(&st, path) == 0, "reopen written file: %s", zb_errmsg())) return;
    zb_check(zb_st_count(st) == 10, "10 tensors back");
    const zb_st_tensor *t = zb_st_get(st, "a.f32");
    float o[6];
    int32_t oi[5];
    zb_check(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && zb_st_to_f32(t, o) == 0 &&
             !memcmp(o, f32, sizeof f32), "f32 round trip");
    t = zb_st_get(st, "b.bf16");
    zb_check(t && zb_st_to_f32(t, o) == 0 && o[0] == 1.0f && o[1] == -3.5f && o[2] == zb_bf16_to_f32(bf[2]),
             "bf16 round trip");
    t = zb_st_get(st, "c.f16");
    zb_check(t && zb_st_to_f32(t, o) == 0 && o[0] == 0.5f && o[1] == -1.25f && o[2] == 2048.f, "f16 round trip");
    t = zb_st_get(st, "d.i32");
    zb_check(t && zb_st_to_i32(t, oi) == 0 && !memcmp(oi, i32, sizeof i32), "i32 round trip");
    zb_check(t && zb_st_to_f32(t, o) != 0, "to_f32 on I32 refused");
    t = zb_st_get(st, "e.i64");
    zb_check(t && zb_st_to_i32(t, oi) == 0 && oi[0] == 7 && oi[1] == -9, "i64 -> i32");
    t = zb_st_get(st, "f.u8");
    zb_check(t && zb_st_to_i32(t, oi) == 0 && oi[1] == 128 && oi[2] == 255, "u8 -> i32");
    t = zb_st_get(st, "g.f64");
    zb_check(t && zb_st_to_f32(t, o) == 0 && o[0] == 0.25f && o[1] == -1e10f, "f64 -> f32");
    t = zb_st_get(st, "h.scalar");
    zb_check(t && t->ndim == 0 && t->numel == 1 && zb_st_to_f32(t, o) == 0 && o[0] == 1.5f, "0-d tensor");
    t = zb_st_get(st, "i.empty");
    zb_check(t && t->numel == 0 && t->nbytes == 0, "empty tensor");
    zb_check(zb_st_get(st, "j \"quoted\\name") != NULL, "name with quotes escaped");
    zb_st_close(st);

    /* i64 that does not fit */
    int64_t big[1] = {(int64_t)1 << 40};
    w = zb_st_writer_new();
    int64_t s1[1] = {1};
    zb_st_writer_add(w, "big", ZB_DT_I64, 1, s1, big);
    snprintf(path, sizeof path, "%s/big.safetensors", tmpdir);
    zb_st_writer_save(w, path);
    zb_st_writer_free(w);
    if (zb_st_open(&st, path) == 0) {
        zb_check(zb_st_to_i32(zb_st_get(st, "big"), oi) != 0 && strstr(zb_errmsg(), "big"), "i64 overflow refused: %s",
                 zb_errmsg());
        zb_st_close(st);
    }
    /* unwritable destination */
    w = zb_st_writer_new();
    zb_st_writer_add(w, "x", ZB_DT_F32, 1, s2, f32);
    zb_check(zb_st_writer_save(w, "/nonexistent-dir/x.safetensors") != 0 && strstr(zb_errmsg(), "nonexistent-dir"),
             "save to a missing dir fails: %s", zb_errmsg());
    zb_st_writer_free(w);
}

static void test_bad(void) {
    char p[512], q[1024];
    const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";

    snprintf(p, sizeof p, "%s/tiny.safetensors", tmpdir);
    write_bytes(p, "\x05\0\0", 3);
    expect_fail("file shorter than 8 bytes", p, "tiny.safetensors", "truncated");

    snprintf(p, sizeof p, "%s/trunc.safetensors", tmpdir);
    write_st(p, good, 0, 8);   /* data cut in half */
    expect_fail("truncated data", p, "trunc.safetensors", "exceed the data size");

    snprintf(p, sizeof p, "%s/hlen.safetensors", tmpdir);
    write_st(p, good, 1u << 30, 16);
    expect_fail("header length beyond file", p, "hlen.safetensors", "exceeds the file size");

    snprintf(p, sizeof p, "%s/overlap.safetensors", tmpdir);
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, 16);
    expect_fail("overlapping ranges", p, "overlap.safetensors", "overlap");

    snprintf(p, sizeof p, "%s/beyond.safetensors", tmpdir);
    write_st(p, "{\"__metadata__\":{\"format\":\"pt\"},"
                "\"model.layers.1.mlp.up_proj.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
             0, 16);
    expect_fail("range beyond data", p, "beyond.safetensors", "'model.layers.1.mlp.up_proj.weight': data_offsets [8, 24] exceed the data size 16");

    snprintf(p, sizeof p, "%s/shape.safetensors", tmpdir);
    write_st(p, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 0, 16);
    expect_fail("shape x dtype mismatch", p, "shape.safetensors", "does not match");

    snprintf(p, sizeof p, "%s/dtype.safetensors", tmpdir);
    write_st(p, "{\"w\":{\"dtype\":\"F8_E4M3X\",\"shape\":[2],\"data_offsets\":[0,2]}}", 0, 2);
    expect_fail("unknown dtype", p, "dtype.safetensors", "unknown dtype 'F8_E4M3X'");

    snprintf(p, sizeof p, "%s/json.safetensors", tmpdir);
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 0, 8);
    expect_fail("malformed JSON", p, "json.safetensors", "malformed header JSON");

    snprintf(p, sizeof p, "%s/neg.safetensors", tmpdir);
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8);
    expect_fail("negative dim", p, "neg.safetensors", "shape[0]");

    snprintf(p, sizeof p, "%s/dup.safetensors", tmpdir);
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8);
    expect_fail("duplicate name", p, "dup.safetensors", "twice");

    snprintf(p, sizeof p, "%s/nofile.safetensors", tmpdir);
    expect_fail("missing file", p, "nofile.safetensors", "cannot open");

    /* sharded: a missing shard, and an index naming a tensor its shard lacks */
    char sub[300];
    snprintf(sub, sizeof sub, "%s/sharded", tmpdir);
    snprintf(q, sizeof q, "mkdir -p %s", sub);
    if (system(q) != 0) return;
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sub);
    write_st(p, good, 0, 16);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", sub);
    const char *idx1 = "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                       "\"b\":\"model-00002-of-00002.safetensors\"}}";
    write_bytes(p, idx1, strlen(idx1));
    expect_fail("missing shard", sub, "model-00002-of-00002.safetensors", "missing");
    const char *idx2 = "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                       "\"zzz.weight\":\"model-00001-of-00002.safetensors\"}}";
    write_bytes(p, idx2, strlen(idx2));
    expect_fail("index names a tensor the shard lacks", p, "model-00001-of-00002.safetensors", "'zzz.weight'");
    const char *idx3 = "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\"";
    write_bytes(p, idx3, strlen(idx3));
    expect_fail("malformed index", sub, "model.safetensors.index.json", "malformed JSON");
    snprintf(p, sizeof p, "%s/empty_dir", tmpdir);
    snprintf(q, sizeof q, "mkdir -p %s", p);
    if (system(q) != 0) return;
    expect_fail("dir without weights", p, "empty_dir", "no model.safetensors");
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    const char *fx = argc > 1 ? argv[1] : "../shared/fixtures";
    snprintf(tmpdir, sizeof tmpdir, "/tmp/zb_st_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_fixture(fx);
    test_writer();
    test_bad();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return zb_test_finish();
}
