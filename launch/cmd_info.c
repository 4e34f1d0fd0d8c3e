/* zebra info [--json] MODEL_OR_CONFIG — parameter count, cache numbers/bytes per token, fixed
 * state per sequence and the KV-cache ratio against the teacher, counted as the paper does
 * (SPEC §7): teacher = layers x 2 x Hkv x hd numbers per token; hybrid = MLA layers x
 * (r_kv + rope) (+ 2 Hkv hd per remaining attention layer). Bytes are for float32 caches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "model.h"
#include "store.h"
#include "tensor_names.h"

int zb_cmd_info(int argc, char **argv) {
    static const char *const vals[] = {NULL};
    static const char *const flags[] = {"--json", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 1));
    const char *path = zb_arg_pos(argc, argv, vals, 0);
    if (!path) return zb_fail(ZB_EARG, "info: needs a model directory, .h5 checkpoint or config .json");
    zb_config c;
    size_t len = strlen(path);
    if (len > 5 && !strcmp(path + len - 5, ".json")) {
        ZB_TRY(zb_config_load(path, &c));
    } else {
        zb_store *st = NULL;
        ZB_TRY(zb_store_open(&st, path));
        c = *zb_store_config(st);
        zb_store_close(st);
    }
    ZB_TRY(zb_config_validate(&c, path));
    zb_tensor_spec *spec = NULL;
    int n = 0;
    ZB_TRY(zb_expected_tensors(&c, &spec, &n));
    long long params = 0;
    for (int i = 0; i < n; i++) {
        long long e = 1;
        for (int k = 0; k < spec[i].ndim; k++) e *= spec[i].shape[k];
        params += e;
    }
    free(spec);
    size_t kv = 0, st = 0;
    zb_cache_sizes(&c, &kv, &st);
    int tl = c.teacher_layers ? c.teacher_layers : c.n_layers;
    int tk = c.teacher_kv_heads ? c.teacher_kv_heads : c.n_kv_heads;
    int th = c.teacher_head_dim ? c.teacher_head_dim : c.head_dim;
    double teacher = 2.0 * tl * tk * th;
    double ratio = teacher > 0 ? kv / teacher : 0;
    int n_attn = 0, n_mla = 0, n_m2 = 0;
    for (int l = 0; l < c.n_layers; l++) {
        n_attn += c.kinds[l] == ZB_LAYER_ATTN;
        n_mla += c.kinds[l] == ZB_LAYER_MLA;
        n_m2 += c.kinds[l] == ZB_LAYER_MAMBA2;
    }
    if (zb_arg_flag(argc, argv, "--json")) {
        printf("{\"model_type\": \"%s\", \"params\": %lld, \"layers\": %d, \"attention_layers\": %d, "
               "\"mla_layers\": %d, \"mamba2_layers\": %d, \"kv_numbers_per_token\": %zu, "
               "\"kv_bytes_per_token\": %zu, \"state_bytes_per_seq\": %zu, "
               "\"teacher_kv_numbers_per_token\": %.0f, \"kv_cache_ratio\": %.6f}\n",
               c.model_type, params, c.n_layers, n_attn, n_mla, n_m2, kv, kv * sizeof(float),
               st * sizeof(float), teacher, ratio);
    } else {
        printf("model          %s (%s)\n", path, c.model_type);
        printf("parameters     %lld (%.3f B)\n", params, params / 1e9);
        printf("layers         %d: %d attention, %d MLA, %d Mamba2\n", c.n_layers, n_attn, n_mla, n_m2);
        printf("cache/token    %zu numbers, %zu bytes (float32)\n", kv, kv * sizeof(float));
        printf("state/seq      %zu bytes (Mamba2 conv + SSM states, float32)\n", st * sizeof(float));
        printf("KV vs teacher  %.2f%% of %.0f numbers/token\n", 100.0 * ratio, teacher);
    }
    return ZB_OK;
}
