/* zebra smart --teacher T --mamba M --mla A --data D --mla-layers K -o plan.json [--svg plan.svg]
 *             [--to-last] [--tokens 65536] [--seq 512] [--batch 4] [--split val]
 *             [--tokenizer tokenizer.json]
 *
 * SMART as the paper runs it (SPEC.md §6, core/smart.h): M is the ILD'd all-Mamba2 model, A the
 * ILD'd all-MLA model (both `zebra train --stage ild` from the teacher). The score of layer l is
 *     KL(teacher || M) - KL(teacher || M with block l from A),
 * KL per token, mean over at least --tokens held-out tokens (rows of --seq, batches of --batch;
 * under mpirun the rows are split across the ranks and the sums reduced). Placement: K layers
 * holding 0 and L-2 (--to-last: L-1), every gap floor(g) or ceil(g), g = last / (K-1), the one
 * of highest total score found exactly (zb_smart_place). The plan JSON lists the KLs, the
 * scores, the chosen layers ("mla_layers": `zebra compose --plan` reads it) and the control
 * without scores ("even_layers": K layers evenly over [0, L-1]); the SVG shows both.
 *
 * Data D: a shard set of `zebra data` (the --split, default val: held out), a .safetensors with
 * input_ids [B,T] (its rows as they are), or a text file with --tokenizer. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "data.h"
#include "model.h"
#include "safetensors.h"
#include "smart.h"
#include "tokenizer.h"

/* ---- data: *R rows of *T ids ------------------------------------------------------------ */

/* Rows of seq tokens cut from a token stream, as many as cover `want` tokens (fewer if short). */
static int cut_rows(const char *src, const uint32_t *tok, size_t n, int seq, long want, int V, int **ids,
                    int *R) {
    if ((long)n < seq) return zb_fail(ZB_EARG, "%s: %zu tokens, fewer than one row of --seq %d", src, n, seq);
    long need = (want + seq - 1) / seq, have = (long)(n / (size_t)seq);
    *R = (int)(need < have ? need : have);
    *ids = zb_malloc(sizeof(int) * (size_t)*R * seq, "SMART ids");
    if (!*ids) return ZB_ENOMEM;
    for (size_t i = 0; i < (size_t)*R * seq; i++) {
        if (tok[i] >= (uint32_t)V) {
            free(*ids);
            *ids = NULL;
            return zb_fail(ZB_EARG, "%s: token id %u outside the teacher's vocabulary [0, %d)", src, tok[i], V);
        }
        (*ids)[i] = (int)tok[i];
    }
    return ZB_OK;
}

static int load_ids(const char *path, const char *split, const char *tok_path, int seq, long want, int V,
                    int **ids, int *R, int *T) {
    struct stat sb;
    size_t len = strlen(path);
    int rc = ZB_OK;
    *ids = NULL;
    *T = seq;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {   /* a shard set */
        zb_shard *sh = NULL;
        ZB_TRY(zb_shard_open(&sh, path, split));
        uint64_t n = 0;
        const uint32_t *tok = zb_shard_tokens(sh, &n);
        rc = cut_rows(path, tok, (size_t)n, seq, want, V, ids, R);
        zb_shard_close(sh);
        return rc;
    }
    if (len > 12 && !strcmp(path + len - 12, ".safetensors")) {
        zb_safetensors *st = NULL;
        ZB_TRY(zb_st_open(&st, path));
        const zb_st_tensor *t = zb_st_get(st, "input_ids");
        if (!t || t->ndim != 2) rc = zb_fail(ZB_EFORMAT, "%s: needs a tensor input_ids [B,T]", path);
        int32_t *all = NULL;
        if (!rc) {
            *R = (int)t->shape[0];
            *T = (int)t->shape[1];
            all = zb_malloc(sizeof(int32_t) * (size_t)t->numel, "input ids");
            *ids = zb_malloc(sizeof(int) * (size_t)t->numel, "input ids");
            rc = !all || !*ids ? ZB_ENOMEM : zb_st_to_i32(t, all);
        }
        for (size_t i = 0; !rc && i < (size_t)t->numel; i++) {
            if (all[i] < 0 || all[i] >= V)
                rc = zb_fail(ZB_EARG, "%s: token id %d outside the teacher's vocabulary [0, %d)", path, all[i], V);
            else (*ids)[i] = all[i];
        }
        free(all);
        zb_st_close(st);
        if (rc) { free(*ids); *ids = NULL; }
        return rc;
    }
    if (!tok_path) return zb_fail(ZB_EARG, "smart: %s is neither a shard set nor .safetensors; a text file needs --tokenizer", path);
    zb_tokenizer *tk = NULL;
    ZB_TRY(zb_tokenizer_load(&tk, tok_path));
    char *text = NULL;
    size_t n = 0, nt = 0;
    int32_t *tid = NULL;
    rc = zb_read_file(path, &text, &n);
    if (!rc) rc = zb_tokenizer_encode(tk, text, n, &tid, &nt);
    free(text);
    zb_tokenizer_free(tk);
    for (size_t i = 0; !rc && i < nt; i++)
        if (tid[i] < 0) rc = zb_fail(ZB_EARG, "%s: negative token id", path);
    if (!rc) rc = cut_rows(path, (const uint32_t *)tid, nt, seq, want, V, ids, R);
    free(tid);
    return rc;
}

/* ---- outputs ---------------------------------------------------------------------------- */

static void put_ints(FILE *f, const char *key, const int *v, int n, const char *end) {
    fprintf(f, "  \"%s\": [", key);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", v[i]);
    fprintf(f, "]%s\n", end);
}
static void put_doubles(FILE *f, const char *key, const double *v, int n) {
    fprintf(f, "  \"%s\": [", key);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.9g", i ? ", " : "", v[i]);
    fprintf(f, "],\n");
}

typedef struct {
    const char *teacher, *mamba, *mla;
    int L, K, to_last;
    long tokens;
    double kl_m, *kl_swap, *score;
    int chosen[ZB_MAX_LAYERS], even[ZB_MAX_LAYERS];
    double total, even_total, count;
} smart_plan;

static int write_json(const char *path, const smart_plan *p) {
    FILE *f = fopen(path, "w");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot write", path);
    int last = zb_smart_last(p->L, p->to_last);
    fprintf(f, "{\n  \"method\": \"SMART (SPEC.md §6): score[l] = KL(teacher || M) - KL(teacher || M with block l "
               "from A), KL per token; K layers holding 0 and %d, gaps floor/ceil of %d/%d, highest total score\",\n",
            last, last, p->K - 1);
    fprintf(f, "  \"teacher\": \"%s\",\n  \"mamba\": \"%s\",\n  \"mla\": \"%s\",\n", p->teacher, p->mamba, p->mla);
    fprintf(f, "  \"layers\": %d,\n  \"tokens\": %ld,\n  \"last_layer\": %d,\n  \"placements\": %.0f,\n", p->L, p->tokens,
            last, p->count);
    fprintf(f, "  \"kl_mamba\": %.9g,\n", p->kl_m);
    put_doubles(f, "kl_swap", p->kl_swap, p->L);
    put_doubles(f, "scores", p->score, p->L);
    fprintf(f, "  \"total_score\": %.9g,\n  \"even_total_score\": %.9g,\n", p->total, p->even_total);
    put_ints(f, "even_layers", p->even, p->K, ",");
    put_ints(f, "mla_layers", p->chosen, p->K, "");
    fprintf(f, "}\n");
    return fclose(f) == 0 ? ZB_OK : zb_fail(ZB_EIO, "%s: write failed", path);
}

static int member(const int *v, int n, int x) {
    for (int i = 0; i < n; i++) if (v[i] == x) return 1;
    return 0;
}

static int write_svg(const char *path, const smart_plan *p) {
    FILE *f = fopen(path, "w");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot write", path);
    int L = p->L, bw = L > 40 ? 16 : 28, left = 80, top = 64, H = 260, W = left + L * bw + 30, Ht = top + H + 84;
    double hi = 0, lo = 0;
    for (int l = 0; l < L; l++) { if (p->score[l] > hi) hi = p->score[l]; if (p->score[l] < lo) lo = p->score[l]; }
    if (hi - lo <= 0) hi = 1;
    int y0 = top + (int)(H * hi / (hi - lo));   /* the zero line */
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", W, Ht);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"20\" font-size=\"14\">SMART: KL(teacher||M) - KL(teacher||M with layer l from the MLA model)</text>\n", left);
    fprintf(f, "<text x=\"%d\" y=\"38\" fill=\"#555\">orange = chosen MLA (%d, total %.4g; rule: 0 and %d, gaps floor/ceil); "
               "triangles = evenly spaced control (total %.4g)</text>\n", left, p->K, p->total, zb_smart_last(L, p->to_last),
            p->even_total);
    fprintf(f, "<text x=\"%d\" y=\"54\" fill=\"#555\">KL(teacher||M) = %.5g per token on %ld tokens; %.0f placements allowed</text>\n",
            left, p->kl_m, p->tokens, p->count);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, y0, left + L * bw, y0);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, top, left, top + H);
    for (int i = 0; i <= 4; i++) {
        double v = lo + (hi - lo) * i / 4;
        int y = top + H - (int)(H * i / 4.0);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g</text>\n", left - 4, y + 4, v);
    }
    for (int l = 0; l < L; l++) {
        int sel = member(p->chosen, p->K, l), ev = member(p->even, p->K, l);
        int h = (int)(H * fabs(p->score[l]) / (hi - lo) + 0.5), y = p->score[l] >= 0 ? y0 - h : y0;
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>layer %d: score %.6g, "
                   "KL with A's layer %.6g%s</title></rect>\n",
                left + l * bw + 3, y, bw - 6, h, sel ? "#e07b00" : "#4a7ab5", l, p->score[l], p->kl_swap[l],
                sel ? " (MLA)" : "");
        int cx = left + l * bw + bw / 2, by = top + H;
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", cx, by + 14, l);
        if (sel) fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#e07b00\">MLA</text>\n", cx, by + 28);
        if (ev) fprintf(f, "<path d=\"M %d %d l 5 9 l -10 0 z\" fill=\"#333\"/>\n", cx, by + 34);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">layer</text>\n", left + L * bw / 2, top + H + 62);
    fprintf(f, "<text x=\"16\" y=\"%d\" transform=\"rotate(-90 16 %d)\" text-anchor=\"middle\">score (KL per token)</text>\n",
            top + H / 2, top + H / 2);
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? ZB_OK : zb_fail(ZB_EIO, "%s: write failed", path);
}

/* ---- the command -------------------------------------------------------------------------- */

static int smart(int argc, char **argv) {
    const char *tpath = zb_arg_str(argc, argv, "--teacher", NULL), *mpath = zb_arg_str(argc, argv, "--mamba", NULL);
    const char *apath = zb_arg_str(argc, argv, "--mla", NULL), *data = zb_arg_str(argc, argv, "--data", NULL);
    const char *out = zb_arg_str(argc, argv, "-o", NULL), *svg = zb_arg_str(argc, argv, "--svg", NULL);
    const char *split = zb_arg_str(argc, argv, "--split", "val");
    int K, seq, batch, to_last = zb_arg_flag(argc, argv, "--to-last");
    double want;
    ZB_TRY(zb_arg_int(argc, argv, "--mla-layers", 0, 0, ZB_MAX_LAYERS, &K));
    ZB_TRY(zb_arg_int(argc, argv, "--seq", 512, 1, 1 << 24, &seq));
    ZB_TRY(zb_arg_int(argc, argv, "--batch", 4, 1, 1 << 16, &batch));
    ZB_TRY(zb_arg_double(argc, argv, "--tokens", 65536, 1, 1e15, &want));
    if (!tpath || !mpath || !apath || !data || !out || K <= 0)
        return zb_fail(ZB_EARG, "smart: needs --teacher T --mamba M --mla A --data D --mla-layers K -o plan.json");
    if (seq <= 0 || batch <= 0 || !(want >= 1))
        return zb_fail(ZB_EARG, "smart: --seq, --batch and --tokens must be positive");
    int rank = 0, P = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);

    zb_model t, M, A;
    memset(&M, 0, sizeof M);
    memset(&A, 0, sizeof A);
    ZB_TRY(zb_model_load(&t, tpath));
    int L = t.cfg.n_layers, rc = ZB_OK, *ids = NULL, R = 0, T = 0;
    smart_plan p;
    memset(&p, 0, sizeof p);
    if (!zb_smart_count(L, K, to_last))   /* before the expensive part */
        rc = zb_smart_place(NULL, L, K, to_last, p.chosen, NULL);
    if (!rc) rc = zb_model_load(&M, mpath);
    if (!rc) rc = zb_model_load(&A, apath);
    if (!rc) rc = load_ids(data, split, zb_arg_str(argc, argv, "--tokenizer", NULL), seq, (long)want, t.cfg.vocab,
                           &ids, &R, &T);
    if (!rc && R < 1) rc = zb_fail(ZB_EARG, "%s: no complete row of tokens", data);
    zb_smart s;
    memset(&s, 0, sizeof s);
    int Bb = batch < R ? batch : R;
    if (!rc) rc = zb_smart_init(&s, &t, &M, &A, Bb, T);
    double *kl = calloc((size_t)L + 2, sizeof(double));
    p.kl_swap = calloc((size_t)L, sizeof(double));
    p.score = calloc((size_t)L, sizeof(double));
    if (!rc && (!kl || !p.kl_swap || !p.score)) rc = zb_fail(ZB_ENOMEM, "smart: out of memory");
    if (!rc && rank == 0 && (long)R * T < (long)want)
        printf("smart: %s holds %d rows of %d = %ld tokens, fewer than --tokens %.0f: using them all\n", data, R, T,
               (long)R * T, want);
    /* this rank's rows: r, r + P, ... in batches of Bb */
    int mine = R > rank ? (R - rank + P - 1) / P : 0, done = 0;
    int *bid = rc ? NULL : malloc(sizeof(int) * (size_t)Bb * T);
    if (!rc && !bid) rc = zb_fail(ZB_ENOMEM, "smart: out of memory");
    double t0 = zb_now();
    while (!rc && done < mine) {
        int nb = mine - done < Bb ? mine - done : Bb;
        for (int b = 0; b < nb; b++)
            memcpy(bid + (size_t)b * T, ids + (size_t)(rank + (done + b) * P) * T, sizeof(int) * T);
        zb_smart_batch(&s, bid, nb, kl);
        kl[L + 1] += (double)nb * T;
        done += nb;
        if (rank == 0)
            printf("smart: rank 0 %d/%d rows, %.1f s\n", done, mine, zb_now() - t0), fflush(stdout);
    }
    if (!rc && MPI_Allreduce(MPI_IN_PLACE, kl, L + 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        rc = zb_fail(ZB_EMPI, "smart: MPI_Allreduce of the KL sums failed");
    if (!rc) {
        double n = kl[L + 1];
        p.teacher = tpath; p.mamba = mpath; p.mla = apath;
        p.L = L; p.K = K; p.to_last = to_last; p.tokens = (long)n;
        p.kl_m = kl[L] / n;
        for (int l = 0; l < L; l++) { p.kl_swap[l] = kl[l] / n; p.score[l] = p.kl_m - p.kl_swap[l]; }
        p.count = zb_smart_count(L, K, to_last);
        rc = zb_smart_place(p.score, L, K, to_last, p.chosen, &p.total);
        zb_smart_even(L, K, p.even);
        for (int k = 0; k < K; k++) p.even_total += p.score[p.even[k]];
    }
    if (!rc && rank == 0) {
        printf("SMART on %ld tokens (%d rows of %d, %d rank%s), %.1f s; KL(teacher || all-Mamba2) = %.6g per token\n",
               p.tokens, R, T, P, P > 1 ? "s" : "", zb_now() - t0, p.kl_m);
        printf("layer  KL with the MLA layer  score\n");
        for (int l = 0; l < L; l++)
            printf("%5d  %21.6g  %.6g%s%s\n", l, p.kl_swap[l], p.score[l], member(p.chosen, K, l) ? "  MLA" : "",
                   member(p.even, K, l) ? "  (even)" : "");
        printf("mla_layers:");
        for (int k = 0; k < K; k++) printf(" %d", p.chosen[k]);
        printf("  (total score %.6g, best of %.0f placements holding 0 and %d)\neven_layers:", p.total, p.count,
               zb_smart_last(L, to_last));
        for (int k = 0; k < K; k++) printf(" %d", p.even[k]);
        printf("  (total score %.6g)\n", p.even_total);
        rc = write_json(out, &p);
        if (!rc && svg) rc = write_svg(svg, &p);
    }
    free(bid); free(kl); free(p.kl_swap); free(p.score); free(ids);
    zb_smart_free(&s);
    if (A.data) zb_model_free(&A);
    if (M.data) zb_model_free(&M);
    zb_model_free(&t);
    return rc;
}

int zb_cmd_smart(int argc, char **argv) {
    static const char *const vals[] = {"--teacher", "--mamba", "--mla", "--data", "--mla-layers", "-o", "--svg",
                                       "--tokens", "--seq", "--batch", "--split", "--tokenizer", NULL};
    static const char *const flags[] = {"--to-last", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    return smart(argc, argv);
}
