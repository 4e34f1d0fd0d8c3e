/* fuzz_plan.c — the plan reader of `zebra compose --plan` (launch/cmd_compose.c: zb_plan_read)
 * on a plan file that is the input, for a 32-layer config (the 8B's depth). A plan that reads
 * leaves every layer MLA or Mamba2. */
#include "commands.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char p[512];
    const char *path = fz_write(p, sizeof p, "plan.json", data, size);
    static zb_config c;
    memset(&c, 0, sizeof c);
    c.n_layers = 32;
    for (int l = 0; l < c.n_layers; l++) c.kinds[l] = ZB_LAYER_ATTN;
    int rc = zb_plan_read(path, &c);
    if (rc) { fz_check_msg(rc, path); return 0; }
    for (int l = 0; l < c.n_layers; l++)
        FZ_ASSERT(c.kinds[l] == ZB_LAYER_MLA || c.kinds[l] == ZB_LAYER_MAMBA2, "layer %d has kind %d", l, (int)c.kinds[l]);
    for (int l = c.n_layers; l < ZB_MAX_LAYERS; l++) FZ_ASSERT(c.kinds[l] == 0, "layer %d beyond the model was set", l);
    return 0;
}
