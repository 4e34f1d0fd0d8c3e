/* fuzz_hdf5.c — the native checkpoint reader (parallel/checkpoint.c: zb_ckpt_reader_open and
 * the row reads) and the store on top of it (core/store.c: config parsed and validated) on an
 * .h5 file that is the input. Every tensor of a checkpoint that opens is read whole, in rows
 * and as f32 / bf16 where its dtype allows (up to 1M elements each). */
#include "checkpoint.h"
#include "fuzz_common.h"
#include "store.h"

#define FZ_MAX_NUMEL (1 << 20)

static void read_ckpt(const char *path) {
    zb_ckpt_reader *r = NULL;
    int rc = zb_ckpt_reader_open(&r, path);
    if (rc) { fz_check_msg(rc, path); return; }
    const char *cj = zb_ckpt_config_json(r);
    FZ_ASSERT(cj, "no config text");
    fz_touch(cj, strlen(cj));
    int n = zb_ckpt_count(r);
    for (int i = 0; i < n; i++) {
        const zb_ckpt_entry *e = zb_ckpt_entry_at(r, i);
        FZ_ASSERT(e && e->ndim >= 0 && e->ndim <= ZB_MAX_DIMS, "entry %d: bad ndim", i);
        FZ_ASSERT(zb_ckpt_find(r, e->name) >= 0, "entry '%s' not found by name", e->name);
        if (e->numel < 0 || e->numel > FZ_MAX_NUMEL) continue;
        size_t es = zb_dtype_size(e->dtype);
        FZ_ASSERT(es > 0, "entry '%s': dtype %d", e->name, (int)e->dtype);
        int64_t lead = e->ndim ? e->shape[0] : 1;
        uint8_t *buf = malloc((size_t)(e->numel ? e->numel : 1) * (es > 4 ? es : 4));
        if (!buf) continue;
        rc = zb_ckpt_read_raw(r, i, 0, lead, buf);
        if (rc) fz_check_msg(rc, path);
        if (lead > 1) {
            rc = zb_ckpt_read_raw(r, i, lead / 2, lead - lead / 2, buf);
            if (rc) fz_check_msg(rc, path);
        }
        rc = zb_ckpt_read_f32(r, i, 0, lead, (float *)buf);
        if (rc) fz_check_msg(rc, path);
        rc = zb_ckpt_read_raw(r, i, lead, 1, buf);   /* past the end: refused */
        FZ_ASSERT(rc, "entry '%s': a read past its rows succeeded", e->name);
        free(buf);
    }
    zb_ckpt_reader_close(r);
}

static void read_store(const char *path) {
    zb_store *s = NULL;
    int rc = zb_store_open(&s, path);
    if (rc) { fz_check_msg(rc, path); return; }
    int n = zb_store_count(s);
    for (int i = 0; i < n; i++) {
        int nd;
        int64_t sh[ZB_MAX_DIMS], numel = 1;
        zb_dtype dt;
        rc = zb_store_info_at(s, i, &nd, sh, &dt);
        FZ_ASSERT(!rc, "info of tensor %d: %s", i, zb_errmsg());
        const char *name = zb_store_name_at(s, i);
        int over = 0;
        for (int k = 0; k < nd; k++) {
            if (sh[k] < 0 || (sh[k] && numel > FZ_MAX_NUMEL / sh[k])) over = 1;
            else numel *= sh[k];
        }
        if (over) continue;
        float *f = malloc(sizeof(float) * (size_t)(numel ? numel : 1));
        uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(numel ? numel : 1));
        if (f && h) {
            rc = zb_store_read(s, name, f, nd, sh);
            if (rc) fz_check_msg(rc, path);
            rc = zb_store_read_bf16(s, name, h, nd, sh);
            if (rc) fz_check_msg(rc, path);
        }
        free(f);
        free(h);
    }
    zb_store_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char p[512];
    const char *path = fz_write(p, sizeof p, "model.h5", data, size);
    read_ckpt(path);
    read_store(path);
    return 0;
}
