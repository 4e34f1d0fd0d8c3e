/* zebra plan MODEL_OR_CONFIG_OR_RUN.json --ranks N [--tp T] [--pp P] [--per-node K]
 *            [--micro-batch B --seq T] [--teacher T] [--json]
 *
 * The dry run of a parallel job: which rank holds what, printed without starting it (one
 * process, no GPU, no MPI job): the DP x PP x TP grid of parallel/grid.h (TP fastest, then PP,
 * then DP; world rank = (dp * P + pp) * T + tp), per rank its node and local rank (K ranks per
 * node, mpirun's and srun's block placement; the local rank picks the GPU under --device
 * cuda), its pipeline stage's layers (the cut `zebra train --pp P` makes with the cost model,
 * parallel/pp.h; the teacher of a run.json cut with it when of the same depth), its heads of
 * each mixer kind, FFN columns and vocabulary rows (Megatron's splits, core/shard.h), and the
 * parameters it holds (float32 bytes, gradients and AdamW moments x4 for training). The checks
 * a real run makes first (--tp divides the heads and vocabulary, tp x pp divides the ranks,
 * P <= layers) fail here the same way. A run.json gives its model (and teacher) and its
 * micro-batch and sequence length. cluster/launch.sh --dry-run calls this. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "pp.h"
#include "runcfg.h"
#include "shard.h"
#include "store.h"
#include "tensor_names.h"

static int config_of(const char *path, zb_config *c) {
    size_t len = strlen(path);
    if (len > 5 && !strcmp(path + len - 5, ".json")) ZB_TRY(zb_config_load(path, c));
    else {
        zb_store *st = NULL;
        ZB_TRY(zb_store_open(&st, path));
        *c = *zb_store_config(st);
        zb_store_close(st);
    }
    return zb_config_validate(c, path);
}

/* Floats of the tensors of layers [l0, l1) (+ embedding on the first stage, final norm and
 * head on the last) that one TP rank holds: split tensors / tp, the norms and MLA latent
 * projections replicated (shard.h). */
static double stage_floats(const zb_config *c, int l0, int l1, int first, int last, int tp) {
    zb_tensor_spec *spec = NULL;
    int n = 0;
    if (zb_expected_tensors(c, &spec, &n)) return 0;
    double s = 0;
    for (int i = 0; i < n; i++) {
        int in = spec[i].layer >= 0 ? spec[i].layer >= l0 && spec[i].layer < l1
                                    : (strstr(spec[i].name, "embed_tokens") ? first : last);
        if (!in) continue;
        double e = 1;
        for (int k = 0; k < spec[i].ndim; k++) e *= (double)spec[i].shape[k];
        int rep = spec[i].ndim == 1 && strstr(spec[i].name, "norm") && !strstr(spec[i].name, "mamba");
        rep |= strstr(spec[i].name, "q_a_") || strstr(spec[i].name, "kv_a_");
        s += rep ? e : e / tp;
    }
    free(spec);
    return s;
}

/* "attn 0-15/32 kv 0-3/8" style ranges of the heads this TP rank holds */
static void heads(char *b, size_t cap, const zb_config *full, const zb_config *loc, int r, const int *kinds_in) {
    size_t o = 0;
    b[0] = 0;
#define RANGE(label, lv, fv) if ((fv) > 0) o += (size_t)snprintf(b + o, cap - o, "%s%s %d-%d/%d", o ? ", " : "", label, \
                                                              r * (lv), r * (lv) + (lv) - 1, fv)
    if (kinds_in[ZB_LAYER_ATTN]) { RANGE("attn heads", loc->n_heads, full->n_heads); RANGE("kv", loc->n_kv_heads, full->n_kv_heads); }
    if (kinds_in[ZB_LAYER_MLA] && o < cap) { RANGE("mla heads", loc->mla.n_heads, full->mla.n_heads); }
    if (kinds_in[ZB_LAYER_MAMBA2] && o < cap) RANGE("ssm heads", loc->mamba.nheads, full->mamba.nheads);
    if (o < cap) RANGE("ffn", loc->ffn, full->ffn);
#undef RANGE
}

int zb_cmd_plan(int argc, char **argv) {
    static const char *const vals[] = {"--ranks", "--tp", "--pp", "--per-node", "--micro-batch", "--seq", "--teacher", NULL};
    static const char *const flags[] = {"--json", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 1));
    const char *path = zb_arg_pos(argc, argv, vals, 0);
    int W, T, P, K, rows, seq, json = zb_arg_flag(argc, argv, "--json");
    ZB_TRY(zb_arg_int(argc, argv, "--ranks", 0, 0, 1 << 24, &W));
    ZB_TRY(zb_arg_int(argc, argv, "--tp", 1, 1, 1 << 12, &T));
    ZB_TRY(zb_arg_int(argc, argv, "--pp", 1, 1, 1 << 12, &P));
    ZB_TRY(zb_arg_int(argc, argv, "--per-node", 0, 0, 1 << 24, &K));
    ZB_TRY(zb_arg_int(argc, argv, "--micro-batch", 1, 1, 1 << 16, &rows));
    ZB_TRY(zb_arg_int(argc, argv, "--seq", 2048, 1, 1 << 24, &seq));
    const char *tpath = zb_arg_str(argc, argv, "--teacher", NULL);
    if (!path || W < 1)
        return zb_fail(ZB_EARG, "plan: needs MODEL_OR_CONFIG_OR_RUN.json --ranks N [--tp T] [--pp P] [--per-node K]");
    if (T < 1 || P < 1) return zb_fail(ZB_EARG, "plan: --tp and --pp must be >= 1 (got %d, %d)", T, P);
    if (W % (T * P)) return zb_fail(ZB_EARG, "plan: world size %d is not divisible by tp %d x pp %d", W, T, P);
    if (K < 1) K = W;
    /* a run.json: its model, teacher, micro-batch and sequence */
    zb_run_cfg r;
    memset(&r, 0, sizeof r);
    int is_run = 0;
    size_t len = strlen(path);
    if (len > 5 && !strcmp(path + len - 5, ".json") && zb_run_cfg_load(&r, path) == ZB_OK && r.model[0]) {
        is_run = 1;
        path = r.model;
        if (!tpath && r.teacher[0]) tpath = r.teacher;
        rows = r.micro_batch;
        seq = r.seq_len;
    }
    zb_config c, tc, loc;
    int rc = config_of(path, &c);
    if (!rc && tpath) rc = config_of(tpath, &tc);
    if (!rc) rc = zb_tp_check(&c, T);
    if (!rc && P > c.n_layers) rc = zb_fail(ZB_EARG, "plan: --pp %d exceeds the model's %d layers", P, c.n_layers);
    int cut[ZB_MAX_LAYERS + 1];
    int same_depth = tpath && tc.n_layers == c.n_layers;
    if (!rc) rc = zb_pp_choose_cut(&c, same_depth ? &tc : NULL, P, T, 0, rows, seq, NULL, cut, NULL);
    if (is_run) zb_run_cfg_free(&r);
    ZB_TRY(rc);
    zb_tp_local_config(&c, T, &loc);
    int D = W / (T * P);
    int64_t Vl = c.vocab / T;
    if (!json) {
        printf("plan: %s; world %d = dp %d x pp %d x tp %d; %d rank%s per node (%d node%s); pipeline cut by the "
               "cost model at micro-batch %d x %d\n", path, W, D, P, T, K, K == 1 ? "" : "s", (W + K - 1) / K,
               (W + K - 1) / K == 1 ? "" : "s", rows, seq);
        printf("%5s %5s %5s  %-14s %-12s %-28s %-22s %s\n", "rank", "node", "local", "(dp, pp, tp)", "layers",
               "kinds", "vocabulary rows", "heads / ffn columns; GB (weights, training x4)");
    } else printf("{\"world\": %d, \"dp\": %d, \"pp\": %d, \"tp\": %d, \"per_node\": %d, \"ranks\": [", W, D, P, T, K);
    for (int w = 0; w < W; w++) {
        int t = w % T, p = (w / T) % P, d = w / (T * P);
        int l0 = cut[p], l1 = cut[p + 1], first = p == 0, last = p == P - 1;
        int kin[3] = {0, 0, 0};
        char kinds[ZB_MAX_LAYERS + 8] = "";
        size_t o = 0;
        for (int l = l0; l < l1; l++) {
            kin[c.kinds[l]] = 1;
            if (o < sizeof kinds - 4)
                o += (size_t)snprintf(kinds + o, sizeof kinds - o, "%c", "AMS"[c.kinds[l]]);   /* attention, MLA, SSM */
        }
        char hd[256];
        heads(hd, sizeof hd, &c, &loc, t, kin);
        double gb = stage_floats(&c, l0, l1, first, last, T) * 4 / 1e9;
        char vocab[96] = "-";
        if (first || last || c.tie_embeddings)
            snprintf(vocab, sizeof vocab, "%lld-%lld/%d%s", (long long)(t * Vl), (long long)(t * Vl + Vl - 1), c.vocab,
                     first && last ? "" : first ? " (embed)" : last ? " (head)" : "");
        if (!first && !last) snprintf(vocab, sizeof vocab, "-");
        char coord[64], lay[64];
        snprintf(coord, sizeof coord, "(%d, %d, %d)", d, p, t);
        snprintf(lay, sizeof lay, "[%d,%d)", l0, l1);
        if (!json)
            printf("%5d %5d %5d  %-14s %-12s %-28s %-22s %s; %.2f GB (%.2f)\n", w, w / K, w % K, coord, lay, kinds, vocab,
                   hd, gb, 4 * gb);
        else
            printf("%s{\"rank\": %d, \"node\": %d, \"local_rank\": %d, \"dp\": %d, \"pp\": %d, \"tp\": %d, \"layers\": [%d, %d], "
                   "\"kinds\": \"%s\", \"vocab_rows\": [%lld, %lld], \"weights_gb\": %.4f}", w ? ", " : "", w, w / K, w % K,
                   d, p, t, l0, l1, kinds, (long long)(first || last ? t * Vl : -1), (long long)(first || last ? t * Vl + Vl : -1), gb);
    }
    if (json) printf("]}\n");
    else printf("kinds: A attention, M MLA, S Mamba2 (SSM). TP groups: consecutive ranks (keep them on one node); "
                "--device cuda: local rank = GPU index.\n");
    return ZB_OK;
}
