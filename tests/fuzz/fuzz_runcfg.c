/* fuzz_runcfg.c — the run.json reader of `zebra train` (core/runcfg.c: zb_run_cfg_parse) on
 * run.json text. A run config that reads has every value in the range core/runcfg.h gives,
 * every pattern and group a string, and frees without a leak either way. */
#include <math.h>

#include "fuzz_common.h"
#include "runcfg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    static zb_run_cfg r;
    int rc = zb_run_cfg_parse(&r, text, "run.json");
    free(text);
    if (rc) {
        fz_check_msg(rc, "run.json");
    } else {
        FZ_ASSERT(r.seq_len >= 2 && r.micro_batch >= 1 && r.grad_accum >= 1 && r.steps >= 1 && r.log_every >= 1,
                  "sizes out of range: seq_len %d micro_batch %d grad_accum %d steps %d log_every %d", r.seq_len,
                  r.micro_batch, r.grad_accum, r.steps, r.log_every);
        FZ_ASSERT(r.eval_every >= 0 && r.eval_batches >= 0 && r.save_every >= 0 && r.keep_last >= 0,
                  "eval_every %d eval_batches %d save_every %d keep_last %d", r.eval_every, r.eval_batches,
                  r.save_every, r.keep_last);
        const zb_optim_cfg *c = &r.opt;
        FZ_ASSERT(c->lr > 0 && isfinite(c->lr) && c->min_lr >= 0 && isfinite(c->min_lr), "lr %g min_lr %g", c->lr,
                  c->min_lr);
        FZ_ASSERT(c->weight_decay >= 0 && isfinite(c->weight_decay) && c->beta1 >= 0 && c->beta1 < 1 &&
                  c->beta2 >= 0 && c->beta2 < 1 && c->eps > 0 && isfinite(c->eps) && c->clip >= 0 &&
                  isfinite(c->clip), "optimizer settings out of range");
        FZ_ASSERT(r.init_std > 0 && isfinite(r.init_std) && r.warmup >= 0 && isfinite(r.warmup) &&
                  r.bucket_mb > 0 && isfinite(r.bucket_mb), "init_std %g warmup %g bucket_mb %g", r.init_std,
                  r.warmup, r.bucket_mb);
        FZ_ASSERT(r.loss.temperature > 0 && isfinite(r.loss.temperature) && r.loss.kl_weight >= 0 &&
                  r.loss.ce_weight >= 0 && r.loss.beta > 0, "loss settings out of range");
        FZ_ASSERT(r.data[0], "no data directory");
        for (int i = 0; i < r.n_train; i++) FZ_ASSERT(r.train[i], "train pattern %d is null", i);
        for (int i = 0; i < r.n_freeze; i++) FZ_ASSERT(r.freeze[i], "freeze pattern %d is null", i);
        for (int i = 0; i < r.n_groups; i++) FZ_ASSERT(r.groups[i].match, "group %d has no match", i);
    }
    zb_run_cfg_free(&r);
    return 0;
}
