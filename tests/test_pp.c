/* test_pp — the pipeline cost model and partition (parallel/pp.h): stages are contiguous, cover
 * every layer, hold at least one each, and the partition's worst stage equals a brute force
 * over every cut; the cost model tells layer kinds apart (attention and MLA grow with T, Mamba2
 * has no T-proportional term). args: CONFIGS_DIR TESTS_DIR */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "pp.h"
#include "zb_common.h"
#include "zb_test.h"

static double brute(const zb_config *c, const zb_pp_cost_cfg *k, int S, int s, int from, double cur) {
    int L = c->n_layers;
    if (s == S) return from == L ? cur : DBL_MAX;
    double best = DBL_MAX;
    for (int to = from + 1; to <= L - (S - s - 1); to++) {
        double st = (s == 0 ? zb_pp_embed_cost(c, k) : 0) + (s == S - 1 ? zb_pp_head_cost(c, k) : 0);
        if (s == S - 1 && to != L) continue;
        for (int l = from; l < to; l++) st += zb_pp_layer_cost(c, l, k);
        double v = brute(c, k, S, s + 1, to, cur > st ? cur : st);
        if (v < best) best = v;
    }
    return best;
}

static void check_cfg(const char *path, int T) {
    zb_config c;
    if (!zb_check(zb_config_load(path, &c) == ZB_OK, "load %s: %s", path, zb_errmsg())) return;
    zb_pp_cost_cfg k = zb_pp_cost_defaults(1, T);
    for (int S = 1; S <= c.n_layers && S <= 4; S++) {
        int first[8];
        double cost[8];
        if (!zb_check(zb_pp_partition(&c, S, &k, first, cost) == ZB_OK, "partition into %d stages", S)) return;
        int ok = first[0] == 0 && first[S] == c.n_layers;
        double mx = 0;
        for (int s = 0; s < S; s++) { ok &= first[s + 1] > first[s]; if (cost[s] > mx) mx = cost[s]; }
        double b = brute(&c, &k, S, 0, 0, 0);
        /* the same per-layer costs summed in double in another order: within 2 gamma_L (2^-53) */
        double tol = 2 * c.n_layers * 0x1p-53 * b;
        zb_check(ok && fabs(mx - b) <= tol,
                 "%s T=%d, %d stages: contiguous, optimal (max %.4g us/token, brute force %.4g); first layers %d %d %d %d",
                 path, T, S, mx * 1e6, b * 1e6, first[0], S > 1 ? first[1] : -1, S > 2 ? first[2] : -1,
                 S > 3 ? first[3] : -1);
    }
    int first[2];
    zb_check(zb_pp_partition(&c, c.n_layers + 1, &k, first, NULL) == ZB_EARG, "more stages than layers refused");
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    char p[1024];
    snprintf(p, sizeof p, "%s/zebra-1b.json", argv[1]);
    check_cfg(p, 512);
    check_cfg(p, 4096);
    snprintf(p, sizeof p, "%s/tp-hybrid.json", argv[2]);
    check_cfg(p, 64);
    /* kinds differ: the hybrid has MLA, Mamba2 and attention layers */
    zb_config c;
    ZB_TEST_OK(zb_config_load(p, &c));
    double fm = zb_pp_layer_flops(&c, 0, 4096), fs = zb_pp_layer_flops(&c, 1, 4096), fa = zb_pp_layer_flops(&c, 2, 4096);
    double gm = zb_pp_layer_flops(&c, 0, 8192), ga = zb_pp_layer_flops(&c, 2, 8192);
    zb_check(fa != fm && fm != fs && fa != fs && gm > fm && ga > fa,
             "flops/token at T=4096 differ by kind (attention %.3g, MLA %.3g, Mamba2 %.3g); attention and MLA "
             "grow with T", fa, fm, fs);
    double s1 = zb_pp_layer_flops(&c, 1, 64), s2 = zb_pp_layer_flops(&c, 1, 1 << 20);
    zb_check(s1 <= s2 && s2 < 2 * s1 + 1e9, "Mamba2 cost per token bounded in T (%.3g at 64, %.3g at 1M)", s1, s2);
    return zb_test_finish();
}
