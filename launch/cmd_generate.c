/* zebra generate — a batch of prompts: each prompt is prefilled alone into its own slot of
 * the per-layer caches (attention K/V, MLA latents, Mamba2 states), then the active sequences
 * decode together, one token each per step, each at its own position; a finished sequence
 * (stop token, --max-new, or a full context) frees its slot for the next prompt.
 *
 * Prompts, in command-line order: --prompt-ids LIST (repeatable), --prompt TEXT (repeatable),
 * --prompts FILE|- (one prompt per line; a line starting with '{' is JSON: {"prompt": text},
 * {"messages": [{"role", "content"}...]} (always chat-templated) or {"prompt_ids": [ids]}).
 * --chat wraps text prompts in the Llama-3 chat template.
 * Output: one prompt streams its tokens as they come (text with a tokenizer, else ids);
 * several prompts print each completion when it finishes as one block "[i] ..." (i = prompt
 * index from 0). The last line on stderr has prefill / decode tokens/s and cache bytes.
 * Sampling: sequence i draws from its own RNG stream seeded by (--seed, i), so its tokens do
 * not depend on --batch, on the other prompts or on the TP / PP layout. Under --tp N every
 * rank runs the same schedule; TP rank 0 samples from the gathered logits and broadcasts.
 * Under --pp M (parallel/pp.h; with --tp N: N*M ranks) each stage holds its layers and their
 * caches; every step (prefill chunk or decode) runs stage after stage, the residual sent
 * point-to-point to the next, the last stage's TP rank 0 samples and the tokens are broadcast
 * to its TP group, then from the last stage to every stage over the pipeline.
 * --weights bf16 holds the weight matrices in bf16 (half the memory and bytes per decode step,
 * f32 accumulation; model.h); the final line then also has every rank's peak resident
 * memory (VmHWM) and the bf16 kernel and threads used. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "commands.h"
#include "grid.h"
#include "model.h"
#include "store.h"
#include "tokenizer.h"
#include "tp.h"

/* ---- growable int lists (input handling only; generation allocates up front) ---------- */
typedef struct { int *v; size_t n, cap; } zb_ivec;

static int iv_push(zb_ivec *a, int x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        int *nv = realloc(a->v, sizeof(int) * cap);
        if (!nv) return zb_fail(ZB_ENOMEM, "out of memory (prompts)");
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return ZB_OK;
}

/* All prompts: prompt i is ids.v[off.v[i] .. off.v[i+1]). */
typedef struct { zb_ivec ids, off; } zb_prompts;

static int n_prompts(const zb_prompts *p) { return p->off.n ? (int)p->off.n - 1 : 0; }
static int prompt_len(const zb_prompts *p, int i) { return p->off.v[i + 1] - p->off.v[i]; }
static const int *prompt_ids(const zb_prompts *p, int i) { return p->ids.v + p->off.v[i]; }
static int prompt_end(zb_prompts *p) { return iv_push(&p->off, (int)p->ids.n); }

/* "1,2,3" or "1 2 3" -> ids appended */
static int parse_ids(const char *s, zb_ivec *out, const char *what) {
    size_t n0 = out->n;
    while (*s) {
        while (*s == ',' || isspace((unsigned char)*s)) s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || (*end && *end != ',' && !isspace((unsigned char)*end)))
            return zb_fail(ZB_EARG, "%s: '%s' is not a list of integers", what, s);
        if (errno == ERANGE || x < INT_MIN || x > INT_MAX)   /* no wrap-around into a valid id */
            return zb_fail(ZB_EARG, "%s: token id %.*s is outside the vocabulary", what, (int)(end - s), s);
        ZB_TRY(iv_push(out, (int)x));
        s = end;
    }
    if (out->n == n0) return zb_fail(ZB_EARG, "%s: empty prompt", what);
    return ZB_OK;
}

static int encode_into(const zb_tokenizer *tok, const char *text, size_t len, zb_ivec *out) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = zb_tokenizer_encode(tok, text, len, &ids, &n);
    for (size_t i = 0; !rc && i < n; i++) rc = iv_push(out, ids[i]);
    free(ids);
    return rc;
}

static int special_id(const zb_tokenizer *tok, const char *name, int *id) {
    *id = zb_tokenizer_token_id(tok, name);
    if (*id < 0) return zb_fail(ZB_EARG, "generate: the chat template needs the Llama-3 token %s, absent from the tokenizer", name);
    return ZB_OK;
}

/* Llama-3 chat turns: <|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>,
 * after <|begin_of_text|>, and the assistant header to complete (as HF's chat_template with
 * add_generation_prompt). Specials are added by id, so text cannot inject them. */
typedef struct { const char *role, *content; } zb_turn;

static int chat_ids(const zb_tokenizer *tok, const zb_turn *turns, int n, zb_ivec *out) {
    int bos, sh, eh, eot;
    ZB_TRY(special_id(tok, "<|begin_of_text|>", &bos));
    ZB_TRY(special_id(tok, "<|start_header_id|>", &sh));
    ZB_TRY(special_id(tok, "<|end_header_id|>", &eh));
    ZB_TRY(special_id(tok, "<|eot_id|>", &eot));
    ZB_TRY(iv_push(out, bos));
    for (int i = 0; i <= n; i++) {
        const char *role = i < n ? turns[i].role : "assistant";
        ZB_TRY(iv_push(out, sh));
        ZB_TRY(encode_into(tok, role, strlen(role), out));
        ZB_TRY(iv_push(out, eh));
        ZB_TRY(encode_into(tok, "\n\n", 2, out));
        if (i == n) break;
        const char *c = turns[i].content;
        size_t len = strlen(c);
        while (len && isspace((unsigned char)*c)) { c++; len--; }
        while (len && isspace((unsigned char)c[len - 1])) len--;
        ZB_TRY(encode_into(tok, c, len, out));
        ZB_TRY(iv_push(out, eot));
    }
    return ZB_OK;
}

typedef struct {
    const zb_tokenizer *tok;
    int chat, bos;   /* bos: id to put before a plain text prompt, -1 for none */
} zb_prompt_opts;

static int add_text(zb_prompts *p, const zb_prompt_opts *o, const char *text, size_t len, const char *where) {
    if (!o->tok) return zb_fail(ZB_EARG, "%s: a text prompt needs --tokenizer (or tokenizer.json in the model folder)", where);
    if (o->chat) {
        char *t = zb_malloc(len + 1, "prompt");
        if (!t) return ZB_ENOMEM;
        memcpy(t, text, len);
        t[len] = 0;
        zb_turn turn = {"user", t};
        int rc = chat_ids(o->tok, &turn, 1, &p->ids);
        free(t);
        ZB_TRY(rc);
    } else {
        if (o->bos >= 0) ZB_TRY(iv_push(&p->ids, o->bos));
        ZB_TRY(encode_into(o->tok, text, len, &p->ids));
    }
    return prompt_end(p);
}

static int add_json(zb_prompts *p, const zb_prompt_opts *o, const char *line, const char *where) {
    cJSON *j = cJSON_Parse(line);
    if (!j || !cJSON_IsObject(j)) { cJSON_Delete(j); return zb_fail(ZB_EFORMAT, "%s: not a JSON object", where); }
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "messages");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "prompt_ids");
    int rc = ZB_OK;
    if (cJSON_IsString(pr)) {
        rc = add_text(p, o, pr->valuestring, strlen(pr->valuestring), where);
    } else if (cJSON_IsArray(ms)) {
        int n = cJSON_GetArraySize(ms);
        zb_turn *t = n ? zb_calloc((size_t)n, sizeof *t, "messages") : NULL;
        if (n && !t) rc = ZB_ENOMEM;
        for (int i = 0; !rc && i < n; i++) {
            const cJSON *m = cJSON_GetArrayItem(ms, i);
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(r) || !cJSON_IsString(c))
                rc = zb_fail(ZB_EFORMAT, "%s: message %d needs string \"role\" and \"content\"", where, i);
            else { t[i].role = r->valuestring; t[i].content = c->valuestring; }
        }
        if (!rc && n == 0) rc = zb_fail(ZB_EFORMAT, "%s: empty \"messages\"", where);
        if (!rc && !o->tok) rc = zb_fail(ZB_EARG, "%s: \"messages\" need --tokenizer (or tokenizer.json in the model folder)", where);
        if (!rc) rc = chat_ids(o->tok, t, n, &p->ids);
        if (!rc) rc = prompt_end(p);
        free(t);
    } else if (cJSON_IsArray(ids)) {
        int n = cJSON_GetArraySize(ids);
        for (int i = 0; !rc && i < n; i++) {
            const cJSON *v = cJSON_GetArrayItem(ids, i);
            long x;
            if (!zb_json_int(v, INT_MIN, INT_MAX, &x)) rc = zb_fail(ZB_EFORMAT, "%s: \"prompt_ids\" must hold integers", where);
            else rc = iv_push(&p->ids, (int)x);
        }
        if (!rc && n == 0) rc = zb_fail(ZB_EFORMAT, "%s: empty \"prompt_ids\"", where);
        if (!rc) rc = prompt_end(p);
    } else {
        rc = zb_fail(ZB_EFORMAT, "%s: expected \"prompt\" (string), \"messages\" (array) or \"prompt_ids\" (array)", where);
    }
    cJSON_Delete(j);
    return rc;
}

static int read_all(FILE *f, const char *path, char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = zb_malloc(cap + 1, "prompts file");
    if (!b) return ZB_ENOMEM;
    for (;;) {
        if (n == cap) {
            char *nb = realloc(b, 2 * cap + 1);
            if (!nb) { free(b); return zb_fail(ZB_ENOMEM, "out of memory (prompts file)"); }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) { free(b); return zb_fail(ZB_EIO, "%s: read error", path); }
    b[n] = 0;
    *out = b;
    *len = n;
    return ZB_OK;
}

/* One prompt per non-blank line; a line starting with '{' is JSON. */
static int add_file(zb_prompts *p, const zb_prompt_opts *o, const char *path) {
    char *buf = NULL;
    size_t len = 0;
    int is_stdin = !strcmp(path, "-");
    if (!is_stdin) ZB_TRY(zb_path_is_file(path, 0));   /* a pipe streams; a directory is refused */
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot open", path);
    int rc = read_all(f, is_stdin ? "stdin" : path, &buf, &len);
    if (!is_stdin) fclose(f);
    ZB_TRY(rc);
    int before = n_prompts(p), lineno = 0;
    char *s = buf, *end = buf + len;
    while (!rc && s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        char *e = nl ? nl : end;
        lineno++;
        char *q = e;
        if (q > s && q[-1] == '\r') q--;
        *q = 0;
        const char *t = s;
        while (*t && isspace((unsigned char)*t)) t++;
        if (*t) {
            char where[600];
            snprintf(where, sizeof where, "%s:%d", is_stdin ? "stdin" : path, lineno);
            rc = *t == '{' ? add_json(p, o, t, where) : add_text(p, o, s, (size_t)(q - s), where);
        }
        s = e + 1;
    }
    free(buf);
    if (!rc && n_prompts(p) == before) rc = zb_fail(ZB_EARG, "generate: %s has no prompts", is_stdin ? "stdin" : path);
    return rc;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ---- output ------------------------------------------------------------------------------ */
static void put_token(const zb_tokenizer *tok, int id, int is_stop) {
    if (tok) {
        if (is_stop && zb_tokenizer_is_special(tok, id)) return;   /* no "<|eot_id|>" in text */
        char buf[256];
        int len = zb_tokenizer_token_bytes(tok, id, buf, sizeof buf);
        if (len > 0) fwrite(buf, 1, (size_t)(len < (int)sizeof buf ? len : (int)sizeof buf), stdout);
    } else {
        printf("%d ", id);
    }
}

/* per-sequence RNG stream: (seed, prompt index); prompt 0 uses the seed itself */
static uint64_t stream_seed(uint64_t seed, int i) {
    uint64_t z = (uint64_t)i * 0xD1B54A32D192ED03ull;
    z ^= z >> 29;
    return seed ^ z;
}

/* The schedule's bookkeeping: which prompt each slot holds, the tokens produced so far. */
typedef struct {
    const zb_prompts *pr;
    const zb_gen *g;
    const zb_tokenizer *tok;
    const zb_ivec *stops;
    int *slot_prompt;   /* [B]: prompt in each slot, -1 when free */
    int *n_out, *last;  /* [P]: tokens produced, the last one */
    int *outbuf;        /* [P, out_cap] */
    int out_cap, max_new, single, out, quiet;
    int n_full, first_full;   /* sequences cut by a full context before --max-new, the first one */
} zb_run;

static int is_stop(const zb_run *r, int id) {
    for (size_t s = 0; s < r->stops->n; s++)
        if (id == r->stops->v[s]) return 1;
    return 0;
}

/* Sequence in slot b is done: print its block (several prompts) and free the slot. */
static void finish(zb_run *r, int b) {
    int i = r->slot_prompt[b];
    if (!r->single && r->out) {
        printf("[%d] ", i);
        if (!r->quiet && !r->tok) {
            for (int t = 0; t < prompt_len(r->pr, i); t++) printf("%d ", prompt_ids(r->pr, i)[t]);
            printf("| ");
        }
        for (int t = 0; t < r->n_out[i]; t++) {
            int id = r->outbuf[(size_t)i * r->out_cap + t];
            put_token(r->tok, id, is_stop(r, id));
        }
        printf("\n");
        fflush(stdout);
    }
    r->slot_prompt[b] = -1;
}

/* A new token of the sequence in slot b: record (stream it, for one prompt); finish the
 * sequence on a stop token, at --max-new, or when its cache has no room to feed it. */
static void on_token(zb_run *r, int b, int tkn) {
    int i = r->slot_prompt[b], st = is_stop(r, tkn);
    r->outbuf[(size_t)i * r->out_cap + r->n_out[i]++] = tkn;
    r->last[i] = tkn;
    if (r->single && r->out) { put_token(r->tok, tkn, st); fflush(stdout); }
    int full = !st && r->n_out[i] < r->max_new && r->g->pos[b] >= r->g->max_T;
    if (full && r->n_full++ == 0) r->first_full = i;   /* said at the end: never a silent cut */
    if (st || r->n_out[i] >= r->max_new || full) finish(r, b);
}

/* The sampled tokens, from the sampler (TP rank 0 of the last stage) to every rank: over the
 * last stage's TP group, then from the last stage to every stage over the pipeline (the ranks
 * of the other stages get it from the last-stage rank of their own TP coordinate). */
static int share_tokens(const zb_grid *grid, int tp, int pp, int *tok, int n) {
    if (tp > 1 && (pp == 1 || grid->pp_rank == pp - 1) && MPI_Bcast(tok, n, MPI_INT, 0, grid->tp) != MPI_SUCCESS)
        return zb_fail(ZB_EMPI, "generate: MPI_Bcast of the sampled tokens (TP) failed");
    if (pp > 1 && MPI_Bcast(tok, n, MPI_INT, pp - 1, grid->pp) != MPI_SUCCESS)
        return zb_fail(ZB_EMPI, "generate: MPI_Bcast of the sampled tokens (PP) failed");
    return ZB_OK;
}

/* ---- the command --------------------------------------------------------------------------- */
int zb_cmd_generate(int argc, char **argv) {
    static const char *const vals[] = {"--model", "--prompt-ids", "--prompt", "--prompts", "--tokenizer",
                                       "--max-new", "--temperature", "--top-k", "--top-p",
                                       "--seed", "--stop", "--tp", "--pp", "--batch", "--ctx", "--weights", NULL};
    static const char *const flags[] = {"--ignore-eos", "--quiet", "--chat", "--no-bos", "--print-ids", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *model_path = zb_arg_str(argc, argv, "--model", NULL);
    const char *tok_path = zb_arg_str(argc, argv, "--tokenizer", NULL);
    int max_new, max_batch, ctx_arg, top_k;
    double temp, top_p;
    uint64_t seed;
    ZB_TRY(zb_arg_int(argc, argv, "--max-new", 32, 0, INT_MAX, &max_new));
    ZB_TRY(zb_arg_int(argc, argv, "--batch", 8, 1, 1 << 16, &max_batch));
    ZB_TRY(zb_arg_int(argc, argv, "--ctx", 0, 0, INT_MAX, &ctx_arg));
    ZB_TRY(zb_arg_double(argc, argv, "--temperature", 0.0, 0.0, 1e6, &temp));
    ZB_TRY(zb_arg_int(argc, argv, "--top-k", 0, 0, INT_MAX, &top_k));
    ZB_TRY(zb_arg_double(argc, argv, "--top-p", 1.0, 0.0, 1.0, &top_p));
    ZB_TRY(zb_arg_u64(argc, argv, "--seed", 1234, &seed));
    zb_sampler sp = {(float)temp, top_k, (float)top_p};
    int quiet = zb_arg_flag(argc, argv, "--quiet"), print_ids = zb_arg_flag(argc, argv, "--print-ids");
    zb_wdtype wt;
    ZB_TRY(zb_wdtype_parse(zb_arg_str(argc, argv, "--weights", "f32"), &wt, "generate: --weights"));
    /* one thread pool per run (core/ops.c): the OpenMP kernels with bf16 weights, or always
     * when OpenBLAS itself runs on OpenMP */
    zb_attention_decode_use_omp(wt == ZB_WEIGHTS_BF16 || zb_blas_uses_openmp());
    int n_sources = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--prompt-ids") || !strcmp(argv[i], "--prompt") || !strcmp(argv[i], "--prompts")) n_sources++;
    if (!model_path && !print_ids) return zb_fail(ZB_EARG, "generate: --model is required");
    if (!n_sources) return zb_fail(ZB_EARG, "generate: give a prompt: --prompt TEXT, --prompts FILE or --prompt-ids LIST");
    if (max_new < 0) return zb_fail(ZB_EARG, "generate: --max-new must be >= 0");
    if (max_batch < 1) return zb_fail(ZB_EARG, "generate: --batch must be >= 1");
    if (ctx_arg < 0) return zb_fail(ZB_EARG, "generate: --ctx must be >= 1");
    if (sp.temperature < 0 || sp.top_k < 0 || !(sp.top_p > 0.0f && sp.top_p <= 1.0f))
        return zb_fail(ZB_EARG, "generate: need --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1");
    /* --tp N: the model is split over TP groups of N ranks (parallel/tp.h); TP rank 0 samples
     * from the gathered logits and broadcasts the tokens to its group */
    int tp, pp, rank = 0, world = 1;
    ZB_TRY(zb_arg_int(argc, argv, "--tp", 1, 1, 1 << 16, &tp));
    ZB_TRY(zb_arg_int(argc, argv, "--pp", 1, 1, 1 << 16, &pp));
    if (print_ids) tp = pp = 1;
    if (tp < 1 || pp < 1) return zb_fail(ZB_EARG, "generate: --tp and --pp must be >= 1");
    int grid_on = tp > 1 || pp > 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (print_ids) world = 1;   /* no collectives: each rank would print; run it on one */
    zb_grid grid;
    memset(&grid, 0, sizeof grid);
    if (grid_on) { ZB_TRY(zb_grid_init(&grid, MPI_COMM_WORLD, tp, pp)); rank = grid.rank; }
    else if (world > 1) MPI_Comm_rank(MPI_COMM_WORLD, &rank);

    int rc = ZB_OK;
    zb_tokenizer *tok = NULL;
    zb_prompts pr;
    memset(&pr, 0, sizeof pr);
    zb_ivec stops = {0};
    /* header broadcast from world rank 0: prompts, total ids, stops, cache length */
    int hdr[4] = {0, 0, 0, 0};
    zb_model m;
    memset(&m, 0, sizeof m);
    zb_gen g;
    memset(&g, 0, sizeof g);
    int *slot_prompt = NULL, *n_out = NULL, *last = NULL, *act = NULL, *act_tok = NULL, *outbuf = NULL;
    zb_rng *rngs = NULL;

    if (rank == 0) {
        /* rank 0 alone reads the prompts (stdin reaches rank 0 only under mpirun) */
        char tp_buf[4096 + 32];
        if (!tok_path && model_path) {   /* the model folder's tokenizer, when it has one */
            snprintf(tp_buf, sizeof tp_buf, "%s/tokenizer.json", model_path);
            if (file_exists(tp_buf)) tok_path = tp_buf;
        }
        if (tok_path) rc = zb_tokenizer_load(&tok, tok_path);
        zb_prompt_opts po = {tok, zb_arg_flag(argc, argv, "--chat"), -1};
        if (tok && !zb_arg_flag(argc, argv, "--no-bos")) po.bos = zb_tokenizer_token_id(tok, "<|begin_of_text|>");
        if (!rc) rc = iv_push(&pr.off, 0);
        for (int i = 1; !rc && i + 1 < argc; i++) {
            if (!strcmp(argv[i], "--prompt-ids")) {
                rc = parse_ids(argv[i + 1], &pr.ids, "--prompt-ids");
                if (!rc) rc = prompt_end(&pr);
            } else if (!strcmp(argv[i], "--prompt")) {
                if (!*argv[i + 1]) rc = zb_fail(ZB_EARG, "generate: --prompt: empty prompt");
                else rc = add_text(&pr, &po, argv[i + 1], strlen(argv[i + 1]), "--prompt");
            } else if (!strcmp(argv[i], "--prompts")) {
                rc = add_file(&pr, &po, argv[i + 1]);
            } else continue;
            i++;
        }
        for (int i = 0; !rc && i < n_prompts(&pr); i++)
            if (prompt_len(&pr, i) == 0) rc = zb_fail(ZB_EARG, "generate: prompt %d is empty", i);
        if (!rc && print_ids) {   /* --print-ids: the token ids of each prompt, one line each */
            for (int i = 0; i < n_prompts(&pr); i++) {
                for (int k = 0; k < prompt_len(&pr, i); k++) printf(k ? " %d" : "%d", prompt_ids(&pr, i)[k]);
                printf("\n");
            }
            zb_tokenizer_free(tok);
            free(pr.ids.v); free(pr.off.v);
            return ZB_OK;
        }
        /* the config (vocabulary, context, eos) without loading the weights */
        zb_store *st = NULL;
        if (!rc) rc = zb_store_open(&st, model_path);
        if (!rc) {
            const zb_config *c = zb_store_config(st);
            int ctx = ctx_arg > 0 ? ctx_arg : c->max_pos > 0 ? c->max_pos : 0, longest = 0;
            for (int i = 0; !rc && i < n_prompts(&pr); i++) {
                int len = prompt_len(&pr, i);
                const int *ids = prompt_ids(&pr, i);
                for (int k = 0; !rc && k < len; k++)
                    if (ids[k] < 0 || ids[k] >= c->vocab)
                        rc = zb_fail(ZB_EARG, "generate: prompt %d: token %d is outside the vocabulary [0, %d)", i, ids[k], c->vocab);
                if (!rc && ctx > 0 && len > ctx)
                    rc = zb_fail(ZB_EARG, "generate: prompt %d has %d tokens, more than the context of %d%s", i, len, ctx,
                                 ctx_arg > 0 ? " (--ctx)" : " (max_position_embeddings; --ctx to change)");
                if (len > longest) longest = len;
            }
            /* the cache holds the prompt and every fed token: the last sampled one is not fed */
            long need = (long)longest + (max_new > 0 ? max_new : 1);
            if (ctx > 0 && need > ctx) need = ctx;
            hdr[3] = (int)need;
            /* stop tokens: the config's eos, the tokenizer's (<|eot_id|> ...), and --stop */
            int ignore_eos = zb_arg_flag(argc, argv, "--ignore-eos");
            for (int i = 0; !rc && !ignore_eos && i < c->n_eos; i++) rc = iv_push(&stops, c->eos_ids[i]);
            if (!rc && !ignore_eos && tok) {
                const int32_t *e;
                int ne = zb_tokenizer_eos_ids(tok, &e);
                for (int i = 0; !rc && i < ne; i++) rc = iv_push(&stops, e[i]);
            }
            for (int i = 1; !rc && i + 1 < argc; i++) {
                if (strcmp(argv[i], "--stop")) continue;
                const char *v = argv[++i];   /* ids ("2" or "2,3"), else a token's string */
                int numeric = v[strspn(v, "0123456789, ")] == 0;
                int id = !numeric && tok ? zb_tokenizer_token_id(tok, v) : -1;
                if (id >= 0) rc = iv_push(&stops, id);
                else rc = parse_ids(v, &stops, "--stop (a token id, a list of ids, or a token of the tokenizer)");
            }
        }
        zb_store_close(st);
        hdr[0] = n_prompts(&pr);
        hdr[1] = (int)pr.ids.n;
        hdr[2] = (int)stops.n;
    }
    if (rc) goto done;   /* rank 0 only: the other ranks wait below and are stopped by MPI_Abort */
    if (world > 1) {
        if (MPI_Bcast(hdr, 4, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS) { rc = zb_fail(ZB_EMPI, "generate: MPI_Bcast failed"); goto done; }
        if (rank != 0) {
            pr.ids.v = zb_malloc(sizeof(int) * (size_t)(hdr[1] + 1), "prompts");
            pr.off.v = zb_malloc(sizeof(int) * (size_t)(hdr[0] + 1), "prompts");
            stops.v = zb_malloc(sizeof(int) * (size_t)(hdr[2] + 1), "stops");
            if (!pr.ids.v || !pr.off.v || !stops.v) { rc = ZB_ENOMEM; goto done; }
            pr.ids.n = (size_t)hdr[1]; pr.off.n = (size_t)hdr[0] + 1; stops.n = (size_t)hdr[2];
        }
        if (MPI_Bcast(pr.off.v, hdr[0] + 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS ||
            MPI_Bcast(pr.ids.v, hdr[1], MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS ||
            (hdr[2] && MPI_Bcast(stops.v, hdr[2], MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)) {
            rc = zb_fail(ZB_EMPI, "generate: MPI_Bcast of the prompts failed");
            goto done;
        }
    }
    int P = hdr[0], max_T = hdr[3], B = P < max_batch ? P : max_batch;
    int threads = zb_linear_threads();   /* set in main (zb_threads_auto) */
    rc = grid_on ? zb_model_load_tp_ex(&m, model_path, &grid, wt, NULL) : zb_model_load_ex(&m, model_path, wt);
    if (rc) goto done;
    const zb_config *c = zb_model_full_config(&m);   /* full vocabulary under TP */
    rc = zb_gen_init(&g, &m, B, max_T);
    int out_cap = max_new > 0 ? max_new : 1;
    if (!rc) {
        slot_prompt = zb_calloc((size_t)B, sizeof(int), "generation");
        act = zb_calloc((size_t)B, sizeof(int), "generation");
        act_tok = zb_calloc((size_t)B, sizeof(int), "generation");
        n_out = zb_calloc((size_t)P, sizeof(int), "generation");
        last = zb_calloc((size_t)P, sizeof(int), "generation");
        rngs = zb_calloc((size_t)P, sizeof(zb_rng), "generation");
        outbuf = zb_calloc((size_t)P * out_cap, sizeof(int), "generation output");
        if (!slot_prompt || !act || !act_tok || !n_out || !last || !rngs || !outbuf) rc = ZB_ENOMEM;
    }
    if (rc) goto done;
    for (int i = 0; i < P; i++) zb_rng_seed(&rngs[i], stream_seed(seed, i));
    for (int b = 0; b < B; b++) slot_prompt[b] = -1;

    zb_run run = {&pr, &g, tok, &stops, slot_prompt, n_out, last, outbuf, out_cap, max_new,
                  P == 1, rank == 0, quiet, 0, -1};
    if (run.single && run.out && !quiet && !tok) {   /* the 1-prompt layout of before: "ids | new ids" */
        for (int k = 0; k < prompt_len(&pr, 0); k++) printf("%d ", prompt_ids(&pr, 0)[k]);
        printf("| ");
    }
    int last_stage = pp == 1 || grid.pp_rank == pp - 1;
    int sampler_rank = (tp == 1 || grid.tp_rank == 0) && last_stage;
    double t_prefill = 0, t_decode = 0;
    long n_prefill = 0, n_decode = 0;
    size_t bpt = g.cache_bytes_per_token, bps = g.state_bytes_per_seq, peak = 0, alloc = 0;
    for (int l = 0; l < g.n_layers; l++) alloc += g.cache_floats[l] * sizeof(float);
    if (pp > 1) {   /* PP: each stage caches its own layers: the model's sizes are the sums */
        unsigned long long sz[3] = {bpt, bps, alloc};
        if (MPI_Allreduce(MPI_IN_PLACE, sz, 3, MPI_UNSIGNED_LONG_LONG, MPI_SUM, grid.pp) != MPI_SUCCESS)
            rc = zb_fail(ZB_EMPI, "generate: MPI_Allreduce of the cache sizes failed");
        bpt = (size_t)sz[0]; bps = (size_t)sz[1]; alloc = (size_t)sz[2];
    }
    int next_prompt = 0;
    while (!rc) {
        /* 1. fill the free slots: prefill each new prompt alone into its slot and sample its
         *    first token (a prompt that finishes at once frees the slot for the next) */
        for (int b = 0; b < B && !rc; b++) {
            while (!rc && slot_prompt[b] < 0 && next_prompt < P) {
                int i = next_prompt++, tkn = 0;
                zb_gen_reset_seq(&g, b);
                double t0 = zb_now();
                rc = zb_gen_step_seqs(&m, &g, &b, 1, prompt_ids(&pr, i), prompt_len(&pr, i));
                if (rc) break;
                n_prefill += prompt_len(&pr, i);
                slot_prompt[b] = i;
                if (max_new == 0) { finish(&run, b); t_prefill += zb_now() - t0; continue; }
                if (sampler_rank) tkn = zb_sample(g.logits, c->vocab, &sp, &rngs[i], NULL);
                rc = share_tokens(&grid, tp, pp, &tkn, 1);
                t_prefill += zb_now() - t0;
                if (!rc) on_token(&run, b, tkn);
            }
        }
        if (rc) break;
        int na = 0;
        for (int b = 0; b < B; b++)
            if (slot_prompt[b] >= 0) { act[na] = b; act_tok[na] = last[slot_prompt[b]]; na++; }
        if (!na) break;
        size_t use = 0;   /* cache in use: every active sequence's tokens and states */
        for (int k = 0; k < na; k++) use += ((size_t)g.pos[act[k]] + 1) * bpt + bps;
        if (use > peak) peak = use;
        /* 2. one decode step for all the active sequences, each at its own position */
        double t0 = zb_now();
        rc = zb_gen_step_seqs(&m, &g, act, na, act_tok, 1);
        if (rc) break;
        if (sampler_rank)
            for (int k = 0; k < na; k++)
                act_tok[k] = zb_sample(g.logits + (size_t)k * c->vocab, c->vocab, &sp, &rngs[slot_prompt[act[k]]], NULL);
        if ((rc = share_tokens(&grid, tp, pp, act_tok, na))) break;
        t_decode += zb_now() - t0;
        n_decode += na;
        for (int k = 0; k < na; k++) on_token(&run, act[k], act_tok[k]);
    }
    /* every rank's peak resident memory (the 8B-on-24GB check): gathered to rank 0 */
    long hwm = zb_vm_hwm_kb(), *hwms = NULL;
    /* TP only: the ranks of TP group 0; PP: every rank of the grid (world rank order) */
    MPI_Comm hcomm = pp > 1 ? grid.world : grid.tp;
    int nr = pp > 1 ? grid.size : tp > 1 ? grid.tp_size : 1;
    if (!rc && grid_on) {
        hwms = rank == 0 ? zb_calloc((size_t)nr, sizeof(long), "stats") : NULL;
        if (MPI_Gather(&hwm, 1, MPI_LONG, hwms, 1, MPI_LONG, 0, hcomm) != MPI_SUCCESS)
            rc = zb_fail(ZB_EMPI, "generate: MPI_Gather of the memory stats failed");
    }
    if (!rc && run.out) {
        if (run.single) printf("\n");
        fflush(stdout);
        char mem[512];
        int k = snprintf(mem, sizeof mem, " | weights %s (%s, %d thread%s), %.2f GiB/rank | peak RSS (VmHWM)",
                         zb_wdtype_name(wt), wt == ZB_WEIGHTS_BF16 ? zb_bf16_impl_name(ZB_BF16_AUTO) : "sgemm",
                         threads, threads == 1 ? "" : "s", zb_model_param_bytes(&m) / 1073741824.0);
        for (int r = 0; r < nr && k > 0 && k < (int)sizeof mem - 32; r++)
            k += snprintf(mem + k, sizeof mem - (size_t)k, "%s %.2f GiB", r ? "," : "",
                          (hwms ? hwms[r] : hwm) / 1048576.0);
        if (run.n_full)
            fprintf(stderr, "generate: note: %d prompt%s stopped at the full context of %d tokens before --max-new %d "
                    "(prompt %d first; --ctx sets the context, up to max_position_embeddings %d)\n", run.n_full,
                    run.n_full == 1 ? "" : "s", g.max_T, max_new, run.first_full, c->max_pos);
        fprintf(stderr, "prefill %ld tokens %.1f tok/s | decode %ld tokens %.1f tok/s | %d prompt%s, batch %d | "
                "cache %zu bytes/token, state %zu bytes/seq | cache in use %zu bytes (peak), allocated %zu bytes%s%s"
                " | %d stopped at the full context\n",
                n_prefill, n_prefill / (t_prefill + 1e-12), n_decode, n_decode / (t_decode + 1e-12),
                P, P == 1 ? "" : "s", B, bpt, bps, peak, alloc,
                tp > 1 ? (pp > 1 ? " (per TP rank, summed over the stages)" : " (per rank)")
                       : pp > 1 ? " (summed over the stages)" : "", mem, run.n_full);
    }
    free(hwms);
done:
    zb_gen_free(&g);
    zb_model_free(&m);
    zb_tokenizer_free(tok);
    free(pr.ids.v); free(pr.off.v); free(stops.v);
    free(slot_prompt); free(n_out); free(last); free(act); free(act_tok); free(outbuf); free(rngs);
    if (grid_on) zb_grid_free(&grid);
    return rc;
}
