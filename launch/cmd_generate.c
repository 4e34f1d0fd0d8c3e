/* zebra generate — prefill a prompt, then decode with the per-layer caches (attention K/V,
 * MLA latents, Mamba2 states); tokens are printed as they come. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "grid.h"
#include "model.h"
#include "tokenizer.h"
#include "tp.h"

/* "1,2,3" or "1 2 3" -> ids */
static int parse_ids(const char *s, int **ids, int *n) {
    int cap = 16, k = 0;
    int *v = zb_malloc(sizeof(int) * cap, "prompt ids");
    if (!v) return ZB_ENOMEM;
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\n' || *s == '\t') s++;
        if (!*s) break;
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s) { free(v); return zb_fail(ZB_EARG, "--prompt-ids: '%s' is not a list of integers", s); }
        if (k == cap) {
            int *nv = realloc(v, sizeof(int) * (cap *= 2));
            if (!nv) { free(v); return zb_fail(ZB_ENOMEM, "out of memory (prompt ids)"); }
            v = nv;
        }
        v[k++] = (int)x;
        s = end;
    }
    if (k == 0) { free(v); return zb_fail(ZB_EARG, "--prompt-ids: empty prompt"); }
    *ids = v;
    *n = k;
    return ZB_OK;
}

static void emit(const zb_tokenizer *tok, int id) {
    if (tok) {
        char buf[256];
        int len = zb_tokenizer_token_bytes(tok, id, buf, sizeof buf);
        if (len > 0) fwrite(buf, 1, (size_t)len, stdout);
    } else {
        printf("%d ", id);
    }
    fflush(stdout);
}

int zb_cmd_generate(int argc, char **argv) {
    static const char *const vals[] = {"--model", "--prompt-ids", "--prompt", "--tokenizer",
                                       "--max-new", "--temperature", "--top-k", "--top-p",
                                       "--seed", "--stop", "--tp", NULL};
    static const char *const flags[] = {"--ignore-eos", "--quiet", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *model_path = zb_arg_str(argc, argv, "--model", NULL);
    const char *pids = zb_arg_str(argc, argv, "--prompt-ids", NULL);
    const char *text = zb_arg_str(argc, argv, "--prompt", NULL);
    const char *tok_path = zb_arg_str(argc, argv, "--tokenizer", NULL);
    int max_new = zb_arg_int(argc, argv, "--max-new", 32);
    zb_sampler sp = {(float)zb_arg_double(argc, argv, "--temperature", 0.0),
                     zb_arg_int(argc, argv, "--top-k", 0),
                     (float)zb_arg_double(argc, argv, "--top-p", 1.0)};
    uint64_t seed = (uint64_t)zb_arg_int(argc, argv, "--seed", 1234);
    int quiet = zb_arg_flag(argc, argv, "--quiet");
    if (!model_path) return zb_fail(ZB_EARG, "generate: --model is required");
    if (!pids == !text) return zb_fail(ZB_EARG, "generate: give exactly one of --prompt-ids or --prompt");
    if (text && !tok_path) return zb_fail(ZB_EARG, "generate: --prompt needs --tokenizer");
    if (max_new < 0) return zb_fail(ZB_EARG, "generate: --max-new must be >= 0");
    /* --tp N: the model is split over TP groups of N ranks (parallel/tp.h); world rank 0
     * samples from the gathered logits and broadcasts the token to its group */
    int tp = zb_arg_int(argc, argv, "--tp", 1), rank = 0;
    zb_grid grid;
    memset(&grid, 0, sizeof grid);
    if (tp > 1) { ZB_TRY(zb_grid_init(&grid, MPI_COMM_WORLD, tp, 1)); rank = grid.rank; }

    int rc = ZB_OK, *prompt = NULL, n_prompt = 0;
    zb_tokenizer *tok = NULL;
    if (tok_path) ZB_TRY(zb_tokenizer_load(&tok, tok_path));
    zb_model m;
    memset(&m, 0, sizeof m);
    if (pids) rc = parse_ids(pids, &prompt, &n_prompt);
    else {
        int32_t *ids32 = NULL;
        size_t n = 0;
        rc = zb_tokenizer_encode(tok, text, strlen(text), &ids32, &n);
        if (!rc) {
            /* a Llama-3 prompt starts with <|begin_of_text|> */
            prompt = malloc(sizeof(int) * (n + 1));
            if (!prompt) rc = zb_fail(ZB_ENOMEM, "out of memory (prompt)");
            else {
                int bos = zb_tokenizer_token_id(tok, "<|begin_of_text|>");
                if (bos >= 0) prompt[n_prompt++] = bos;
                for (size_t i = 0; i < n; i++) prompt[n_prompt++] = ids32[i];
            }
        }
        free(ids32);
    }
    if (!rc) rc = tp > 1 ? zb_model_load_tp(&m, model_path, &grid) : zb_model_load(&m, model_path);
    const zb_config *c = zb_model_full_config(&m);   /* full vocabulary and eos under TP */
    for (int i = 0; !rc && i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab)
            rc = zb_fail(ZB_EARG, "generate: prompt token %d is outside the vocabulary [0, %d)", prompt[i], c->vocab);
    int stop[ZB_MAX_EOS + 1], n_stop = 0;
    if (!rc && !zb_arg_flag(argc, argv, "--ignore-eos"))
        for (int i = 0; i < c->n_eos; i++) stop[n_stop++] = c->eos_ids[i];
    const char *stop_s = zb_arg_str(argc, argv, "--stop", NULL);
    if (stop_s && n_stop <= ZB_MAX_EOS) stop[n_stop++] = atoi(stop_s);

    zb_gen g;
    memset(&g, 0, sizeof g);
    if (!rc) rc = zb_gen_init(&g, &m, 1, n_prompt + max_new);
    if (!rc) {
        zb_rng rng;
        zb_rng_seed(&rng, seed);
        if (!quiet && !tok && rank == 0) { for (int i = 0; i < n_prompt; i++) printf("%d ", prompt[i]); printf("| "); }
        double t0 = zb_now();
        rc = zb_gen_step(&m, &g, prompt, n_prompt);
        double t1 = zb_now();
        int n_out = 0;
        for (; !rc && n_out < max_new; n_out++) {
            int next = zb_sample(g.logits, c->vocab, &sp, &rng, NULL);
            if (tp > 1 && MPI_Bcast(&next, 1, MPI_INT, 0, grid.tp) != MPI_SUCCESS) {
                rc = zb_fail(ZB_EMPI, "generate: MPI_Bcast of the sampled token failed");
                break;
            }
            if (rank == 0) emit(tok, next);
            int is_stop = 0;
            for (int i = 0; i < n_stop; i++) is_stop |= next == stop[i];
            if (is_stop) { n_out++; break; }
            if (n_out + 1 < max_new) rc = zb_gen_step(&m, &g, &next, 1);
        }
        double t2 = zb_now();
        if (rank == 0) printf("\n");
        if (rank == 0) fprintf(stderr, "prefill %d tokens %.1f tok/s | decode %d tokens %.1f tok/s | "
                "cache %zu bytes/token, state %zu bytes/seq\n", n_prompt,
                n_prompt / (t1 - t0 + 1e-12), n_out, n_out > 1 ? (n_out - 1) / (t2 - t1 + 1e-12) : 0.0,
                g.cache_bytes_per_token, g.state_bytes_per_seq);
    }
    zb_gen_free(&g);
    zb_model_free(&m);
    zb_tokenizer_free(tok);
    free(prompt);
    if (tp > 1) zb_grid_free(&grid);
    return rc;
}
