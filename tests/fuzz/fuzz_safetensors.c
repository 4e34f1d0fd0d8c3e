/* fuzz_safetensors.c — the safetensors reader (core/safetensors.c: zb_st_open and the
 * conversions) on a file that is the input. An input that starts with '{' is taken as a
 * model.safetensors.index.json instead, beside two small shards written once. */
#include "fuzz_common.h"
#include "safetensors.h"

/* Shards the index inputs may name (tests/fuzz/seeds/safetensors/index*.json do). */
static void write_shards(void) {
    static int done;
    if (done) return;
    done = 1;
    static const float w[6] = {1, 2, 3, 4, 5, 6};
    static const uint16_t h[4] = {0x3f80, 0x4000, 0xc040, 0x7fc0};
    int64_t s23[2] = {2, 3}, s4[1] = {4};
    char p[512];
    zb_st_writer *a = zb_st_writer_new(), *b = zb_st_writer_new();
    if (!a || !b || zb_st_writer_add(a, "model.embed_tokens.weight", ZB_DT_F32, 2, s23, w) ||
        zb_st_writer_add(a, "model.norm.weight", ZB_DT_BF16, 1, s4, h) ||
        zb_st_writer_add(b, "model.layers.0.input_layernorm.weight", ZB_DT_BF16, 1, s4, h) ||
        zb_st_writer_add(b, "lm_head.weight", ZB_DT_F32, 2, s23, w) ||
        zb_st_writer_save(a, fz_path(p, sizeof p, "model-00001-of-00002.safetensors")) ||
        zb_st_writer_save(b, fz_path(p, sizeof p, "model-00002-of-00002.safetensors"))) {
        fprintf(stderr, "fuzz: cannot write the shards: %s\n", zb_errmsg());
        abort();
    }
    zb_st_writer_free(a);
    zb_st_writer_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    write_shards();
    char p[512];
    int index = size > 0 && data[0] == '{';
    const char *path = fz_write(p, sizeof p, index ? "model.safetensors.index.json" : "model.safetensors", data, size);
    zb_safetensors *st = NULL;
    int rc = zb_st_open(&st, path);
    if (rc) {
        fz_check_msg(rc, index ? fz_dir() : path);   /* an index's message may name a shard */
        FZ_ASSERT(!st, "failed open returned a handle");
        return 0;
    }
    int n = zb_st_count(st);
    for (int i = 0; i < n; i++) {
        const zb_st_tensor *t = zb_st_at(st, i);
        FZ_ASSERT(t && t->name && zb_st_get(st, t->name) == t, "tensor %d not found by its name", i);
        FZ_ASSERT(t->ndim >= 0 && t->ndim <= ZB_MAX_DIMS, "ndim %d", t->ndim);
        int64_t numel = 1;
        for (int k = 0; k < t->ndim; k++) numel *= t->shape[k];
        FZ_ASSERT(numel == t->numel && (size_t)numel * zb_dtype_size(t->dtype) == t->nbytes,
                  "tensor '%s': numel / nbytes disagree with its shape", t->name);
        fz_touch(t->data, t->nbytes);
        if (t->numel > (1 << 20)) continue;
        float *f = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        int32_t *q = malloc(sizeof(int32_t) * (size_t)(t->numel ? t->numel : 1));
        if (f && q) {
            int r1 = zb_st_to_f32(t, f), r2 = zb_st_to_i32(t, q);
            FZ_ASSERT(!r1 || !r2 || t->dtype == ZB_DT_I64 || t->dtype == ZB_DT_U32, "tensor '%s' (%s) converts to neither f32 nor i32",
                      t->name, zb_dtype_name(t->dtype));
        }
        free(f);
        free(q);
    }
    zb_st_close(st);
    return 0;
}
