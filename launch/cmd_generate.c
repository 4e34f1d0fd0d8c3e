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
 * memory (VmHWM) and the bf16 kernel and threads used.
 * --device cuda [--precision bf16|f32]: the model on this rank's GPU (one rank per GPU, the
 * node-local rank picks it); under --tp / --pp the residual sums, the logits gather and the
 * stage-to-stage residual go GPU to GPU through NCCL (parallel/comm_nccl.h); --cache bf16 holds the
 * GPU's caches in bf16 (float32 by default).
 * --model C.json (a config, no weights): synthetic weights drawn on each rank for its shard
 * (the slice of one model: the same tokens under any layout), for decode speed (e.g. the 8B
 * under --tp 2 where its weights are not at hand).
 * A decode step under --tp on GPUs (bf16 weights, no --pp) is recorded once with its NCCL
 * all-reduces and the logits gather as one CUDA graph and replayed (core/gen.c gen_chunk).
 * Greedy decode on a GPU is pipelined (decode_async; ZB_GEN_ASYNC=0: step by step). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "chat.h"
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

/* The Llama-3 chat template's ids (core/chat.h) with the reply header, appended. */
static int chat_ids(const zb_tokenizer *tok, const zb_chat_msg *turns, int n, zb_ivec *out) {
    zb_chat_ids c = {0};
    int rc = zb_chat_encode(tok, turns, n, 1, &c);
    for (size_t i = 0; !rc && i < c.n; i++) rc = iv_push(out, c.ids[i]);
    zb_chat_ids_free(&c);
    return rc;
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
        zb_chat_msg turn = {"user", t};
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
        zb_chat_msg *t = n ? zb_calloc((size_t)n, sizeof *t, "messages") : NULL;
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
            if (!zb_json_value_int(v, INT_MIN, INT_MAX, &x)) rc = zb_fail(ZB_EFORMAT, "%s: \"prompt_ids\" must hold integers", where);
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
    int ahead;          /* the pipelined decode: the tokens handled now are one step behind pos[] */
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
    int full = !st && r->n_out[i] < r->max_new && r->g->pos[b] - r->ahead >= r->g->max_T;
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

typedef struct {
    int argc;
    char **argv;
    const char *model_path, *tok_path;
    int max_new, max_batch, ctx, quiet, print_ids, tp, pp;
    zb_device_args dev; /* --device, --precision, --cache (the GPU's caches float32 by default) */
    zb_sampler sp;
    uint64_t seed;
    zb_wdtype wt;
} gen_args;

/* Everything one run holds (freed by gen_free). */
typedef struct {
    gen_args a;
    int rank, world, grid_on;
    zb_grid grid;
    zb_tokenizer *tok;
    zb_prompts pr;
    zb_ivec stops;
    int max_T;          /* the cache length: the longest prompt + max_new, within the context */
    zb_backend be;      /* the run's backend and decode switches */
    zb_model m;
    zb_gen g;
    int *slot_prompt, *n_out, *last, *act, *act_tok, *outbuf;
    zb_rng *rngs;
    FILE *top2;         /* ZB_GEN_TOP2=FILE: each new token's two largest logits per row (the sampler rank) */
    int async;          /* the pipelined greedy decode (decode_async) */
    /* statistics */
    double t_prefill, t_decode;
    long n_prefill, n_decode, n_steps;
    size_t peak;
} gen_state;

static int parse_args(int argc, char **argv, gen_args *a) {
    static const char *const vals[] = {"--model", "--prompt-ids", "--prompt", "--prompts", "--tokenizer",
                                       "--max-new", "--temperature", "--top-k", "--top-p",
                                       "--seed", "--stop", "--tp", "--pp", "--batch", "--ctx", "--weights", "--device",
                                       "--precision", "--cache", NULL};
    static const char *const flags[] = {"--ignore-eos", "--quiet", "--chat", "--no-bos", "--print-ids", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    memset(a, 0, sizeof *a);
    a->argc = argc;
    a->argv = argv;
    a->model_path = zb_arg_str(argc, argv, "--model", NULL);
    a->tok_path = zb_arg_str(argc, argv, "--tokenizer", NULL);
    double temp, top_p;
    ZB_TRY(zb_arg_int(argc, argv, "--max-new", 32, 0, INT_MAX, &a->max_new));
    ZB_TRY(zb_arg_int(argc, argv, "--batch", 8, 1, 1 << 16, &a->max_batch));
    ZB_TRY(zb_arg_int(argc, argv, "--ctx", 0, 0, INT_MAX, &a->ctx));
    ZB_TRY(zb_arg_double(argc, argv, "--temperature", 0.0, 0.0, 1e6, &temp));
    ZB_TRY(zb_arg_int(argc, argv, "--top-k", 0, 0, INT_MAX, &a->sp.top_k));
    ZB_TRY(zb_arg_double(argc, argv, "--top-p", 1.0, 0.0, 1.0, &top_p));
    ZB_TRY(zb_arg_u64(argc, argv, "--seed", 1234, &a->seed));
    a->sp.temperature = (float)temp;
    a->sp.top_p = (float)top_p;
    a->quiet = zb_arg_flag(argc, argv, "--quiet");
    a->print_ids = zb_arg_flag(argc, argv, "--print-ids");
    ZB_TRY(zb_wdtype_parse(zb_arg_str(argc, argv, "--weights", "f32"), &a->wt, "generate: --weights"));
    int n_sources = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--prompt-ids") || !strcmp(argv[i], "--prompt") || !strcmp(argv[i], "--prompts")) n_sources++;
    if (!a->model_path && !a->print_ids) return zb_fail(ZB_EARG, "generate: --model is required");
    if (!n_sources) return zb_fail(ZB_EARG, "generate: give a prompt: --prompt TEXT, --prompts FILE or --prompt-ids LIST");
    if (a->max_new < 0) return zb_fail(ZB_EARG, "generate: --max-new must be >= 0");
    if (a->max_batch < 1) return zb_fail(ZB_EARG, "generate: --batch must be >= 1");
    if (a->ctx < 0) return zb_fail(ZB_EARG, "generate: --ctx must be >= 1");
    const zb_sampler *sp = &a->sp;
    if (sp->temperature < 0 || sp->top_k < 0 || !(sp->top_p > 0.0f && sp->top_p <= 1.0f))
        return zb_fail(ZB_EARG, "generate: need --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1");
    /* --tp N: the model is split over TP groups of N ranks (parallel/tp.h); TP rank 0 samples
     * from the gathered logits and broadcasts the tokens to its group */
    ZB_TRY(zb_arg_int(argc, argv, "--tp", 1, 1, 1 << 12, &a->tp));
    ZB_TRY(zb_arg_int(argc, argv, "--pp", 1, 1, 1 << 12, &a->pp));
    if (a->print_ids) a->tp = a->pp = 1;
    if (a->tp < 1 || a->pp < 1) return zb_fail(ZB_EARG, "generate: --tp and --pp must be >= 1");
    /* --device cuda: one rank per GPU (the node-local rank picks it); under --tp / --pp the
     * grid's collectives go through NCCL (parallel/comm_nccl.h) */
    ZB_TRY(zb_device_args_parse(argc, argv, "generate", 0, &a->dev));   /* caches float32 unless --cache bf16 */
    return ZB_OK;
}

/* The run's backend: the CPU's decode switches, or the CUDA table. */
static int gen_backend(const gen_args *a, zb_backend *be) { return zb_device_backend(&a->dev, a->wt, "generate", be); }

/* The prompts of the command line, in its order. */
static int read_prompts(gen_state *S) {
    const gen_args *a = &S->a;
    zb_prompt_opts po = {S->tok, zb_arg_flag(a->argc, a->argv, "--chat"), -1};
    if (S->tok && !zb_arg_flag(a->argc, a->argv, "--no-bos")) po.bos = zb_tokenizer_token_id(S->tok, "<|begin_of_text|>");
    ZB_TRY(iv_push(&S->pr.off, 0));
    for (int i = 1; i + 1 < a->argc; i++) {
        const char *f = a->argv[i], *v = a->argv[i + 1];
        if (!strcmp(f, "--prompt-ids")) {
            ZB_TRY(parse_ids(v, &S->pr.ids, "--prompt-ids"));
            ZB_TRY(prompt_end(&S->pr));
        } else if (!strcmp(f, "--prompt")) {
            if (!*v) return zb_fail(ZB_EARG, "generate: --prompt: empty prompt");
            ZB_TRY(add_text(&S->pr, &po, v, strlen(v), "--prompt"));
        } else if (!strcmp(f, "--prompts")) {
            ZB_TRY(add_file(&S->pr, &po, v));
        } else continue;
        i++;
    }
    for (int i = 0; i < n_prompts(&S->pr); i++)
        if (prompt_len(&S->pr, i) == 0) return zb_fail(ZB_EARG, "generate: prompt %d is empty", i);
    return ZB_OK;
}

/* --model C.json: a config, the weights synthetic (zb_model_init_synthetic: drawn on each rank
 * for its own shard, no file, the same model under any --tp / --pp): for decode speed on shapes
 * whose weights are not at hand (the 8B on a machine they cannot be carried to), and to compare
 * layouts; the tokens mean nothing. */
static int is_config(const char *path) {
    size_t len = strlen(path);
    return len > 5 && !strcmp(path + len - 5, ".json");
}

/* Against the model's config (read without the weights): every prompt id in the vocabulary and
 * within the context; the cache length; the stop tokens (the config's eos, the tokenizer's
 * <|eot_id|> ..., --stop). */
static int plan_run(gen_state *S) {
    const gen_args *a = &S->a;
    zb_store *st = NULL;
    zb_config cj;
    if (is_config(a->model_path)) ZB_TRY(zb_config_load(a->model_path, &cj));
    else ZB_TRY(zb_store_open(&st, a->model_path));
    const zb_config *c = st ? zb_store_config(st) : &cj;
    int ctx = a->ctx > 0 ? a->ctx : c->max_pos > 0 ? c->max_pos : 0, longest = 0, rc = ZB_OK;
    for (int i = 0; !rc && i < n_prompts(&S->pr); i++) {
        int len = prompt_len(&S->pr, i);
        const int *ids = prompt_ids(&S->pr, i);
        for (int k = 0; !rc && k < len; k++)
            if (ids[k] < 0 || ids[k] >= c->vocab)
                rc = zb_fail(ZB_EARG, "generate: prompt %d: token %d is outside the vocabulary [0, %d)", i, ids[k], c->vocab);
        if (!rc && ctx > 0 && len > ctx)
            rc = zb_fail(ZB_EARG, "generate: prompt %d has %d tokens, more than the context of %d%s", i, len, ctx,
                         a->ctx > 0 ? " (--ctx)" : " (max_position_embeddings; --ctx to change)");
        if (len > longest) longest = len;
    }
    /* the cache holds the prompt and every fed token: the last sampled one is not fed */
    long need = (long)longest + (a->max_new > 0 ? a->max_new : 1);
    if (ctx > 0 && need > ctx) need = ctx;
    S->max_T = (int)need;
    int ignore_eos = zb_arg_flag(a->argc, a->argv, "--ignore-eos");
    for (int i = 0; !rc && !ignore_eos && i < c->n_eos; i++) rc = iv_push(&S->stops, c->eos_ids[i]);
    if (!rc && !ignore_eos && S->tok) {
        const int32_t *e;
        int ne = zb_tokenizer_eos_ids(S->tok, &e);
        for (int i = 0; !rc && i < ne; i++) rc = iv_push(&S->stops, e[i]);
    }
    for (int i = 1; !rc && i + 1 < a->argc; i++) {
        if (strcmp(a->argv[i], "--stop")) continue;
        const char *v = a->argv[++i];   /* ids ("2" or "2,3"), else a token's string */
        int numeric = v[strspn(v, "0123456789, ")] == 0;
        int id = !numeric && S->tok ? zb_tokenizer_token_id(S->tok, v) : -1;
        if (id >= 0) rc = iv_push(&S->stops, id);
        else rc = parse_ids(v, &S->stops, "--stop (a token id, a list of ids, or a token of the tokenizer)");
    }
    zb_store_close(st);
    return rc;
}

/* Rank 0 alone reads the prompts (stdin reaches rank 0 only under mpirun); *printed: the
 * --print-ids run is over. */
static int rank0_prompts(gen_state *S, int *printed) {
    const gen_args *a = &S->a;
    char tp_buf[4096 + 32];
    const char *tok_path = a->tok_path;
    if (!tok_path && a->model_path) {   /* the model folder's tokenizer, when it has one */
        snprintf(tp_buf, sizeof tp_buf, "%s/tokenizer.json", a->model_path);
        if (file_exists(tp_buf)) tok_path = tp_buf;
    }
    if (tok_path) ZB_TRY(zb_tokenizer_load(&S->tok, tok_path));
    ZB_TRY(read_prompts(S));
    if (a->print_ids) {   /* the token ids of each prompt, one line each */
        for (int i = 0; i < n_prompts(&S->pr); i++) {
            for (int k = 0; k < prompt_len(&S->pr, i); k++) printf(k ? " %d" : "%d", prompt_ids(&S->pr, i)[k]);
            printf("\n");
        }
        *printed = 1;
        return ZB_OK;
    }
    return plan_run(S);
}

/* Rank 0's prompts, stops and cache length to every rank. */
static int share_prompts(gen_state *S) {
    int hdr[4] = {n_prompts(&S->pr), (int)S->pr.ids.n, (int)S->stops.n, S->max_T};
    if (S->world == 1) return ZB_OK;
    if (MPI_Bcast(hdr, 4, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS) return zb_fail(ZB_EMPI, "generate: MPI_Bcast failed");
    if (S->rank != 0) {
        S->pr.ids.v = zb_malloc(sizeof(int) * (size_t)(hdr[1] + 1), "prompts");
        S->pr.off.v = zb_malloc(sizeof(int) * (size_t)(hdr[0] + 1), "prompts");
        S->stops.v = zb_malloc(sizeof(int) * (size_t)(hdr[2] + 1), "stops");
        if (!S->pr.ids.v || !S->pr.off.v || !S->stops.v) return ZB_ENOMEM;
        S->pr.ids.n = (size_t)hdr[1]; S->pr.off.n = (size_t)hdr[0] + 1; S->stops.n = (size_t)hdr[2];
        S->max_T = hdr[3];
    }
    if (MPI_Bcast(S->pr.off.v, hdr[0] + 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS ||
        MPI_Bcast(S->pr.ids.v, hdr[1], MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS ||
        (hdr[2] && MPI_Bcast(S->stops.v, hdr[2], MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS))
        return zb_fail(ZB_EMPI, "generate: MPI_Bcast of the prompts failed");
    return ZB_OK;
}

/* The model (this rank's shard / stage), its caches for B slots, the schedule's buffers. */
static int setup_model(gen_state *S, int B) {
    const gen_args *a = &S->a;
    int P = n_prompts(&S->pr), out_cap = a->max_new > 0 ? a->max_new : 1;
    if (is_config(a->model_path)) {   /* synthetic weights (is_config) */
        zb_config c;
        ZB_TRY(zb_config_load(a->model_path, &c));
        ZB_TRY(S->grid_on ? zb_model_init_tp_ex(&S->m, &c, &S->grid, a->wt, NULL) : zb_model_init_ex(&S->m, &c, a->wt));
        zb_model_init_synthetic(&S->m, 7, 0.02f);   /* each rank its slice of one model */
    } else
        ZB_TRY(S->grid_on ? zb_model_load_tp_ex(&S->m, a->model_path, &S->grid, a->wt, NULL)
                          : zb_model_load_ex(&S->m, a->model_path, a->wt));
    ZB_TRY(zb_model_set_backend(&S->m, &S->be));
    ZB_TRY(zb_gen_init(&S->g, &S->m, B, S->max_T));
    S->g.greedy = a->sp.temperature <= 0.0f;   /* the argmax where the logits are: B ids come back, not B x V */
    /* greedy without ZB_GEN_TOP2: the picks only (TP on GPUs gathers a (value, index) pair per
     * rank and row, not the logits; ZB_TP_ARGMAX=0: the logits, as before); the TP group agrees */
    const char *t2 = getenv("ZB_GEN_TOP2"), *am = getenv("ZB_TP_ARGMAX"), *ea = getenv("ZB_GEN_ASYNC");
    int picks = S->g.greedy && !(t2 && *t2) && !(am && !strcmp(am, "0"));
    S->g.picks_only = S->m.tp ? zb_tp_all(S->m.tp, picks) : picks;
    /* the pipelined greedy decode: on a GPU unless ZB_GEN_ASYNC=0, on the CPU with ZB_GEN_ASYNC=1
     * (tests); not with ZB_GEN_TOP2 (it reads each step's logits); the TP group agrees */
    int async = (ea && *ea ? strcmp(ea, "0") != 0 : a->dev.gpu) && !(t2 && *t2) && a->pp == 1 &&
                zb_gen_async_ok(&S->m, &S->g);
    S->async = S->m.tp ? zb_tp_all(S->m.tp, async) : async;
    ZB_ALLOC(S->slot_prompt, B, "generation");
    ZB_ALLOC(S->act, B, "generation");
    ZB_ALLOC(S->act_tok, B, "generation");
    ZB_ALLOC(S->n_out, P, "generation");
    ZB_ALLOC(S->last, P, "generation");
    ZB_ALLOC(S->rngs, P, "generation");
    ZB_ALLOC(S->outbuf, (size_t)P * out_cap, "generation output");
    for (int i = 0; i < P; i++) zb_rng_seed(&S->rngs[i], stream_seed(a->seed, i));
    for (int b = 0; b < B; b++) S->slot_prompt[b] = -1;
    return ZB_OK;
}

/* ZB_GEN_TOP2=FILE (a check of greedy runs that part: cluster/gpu2-check.sh): one line per new
 * token and row, "prompt token id1 logit1 id2 logit2 mdiff" (zb_gen_top2), the sampler rank only;
 * rows[k] is the slot of row k of the last step. Costs a copy of the logits per step. */
static int write_top2(gen_state *S, const zb_run *run, const int *rows, int nb) {
    int *id = zb_malloc(sizeof(int) * 2 * (size_t)nb, "top-2 logits");
    float *v = zb_malloc(sizeof(float) * 3 * (size_t)nb, "top-2 logits");
    int rc = id && v ? zb_gen_top2(&S->m, &S->g, nb, id, v, v + 2 * nb) : ZB_ENOMEM;
    for (int k = 0; !rc && k < nb; k++) {
        int i = S->slot_prompt[rows[k]];
        fprintf(S->top2, "%d %d %d %.9g %d %.9g %.9g\n", i, run->n_out[i], id[2 * k], v[2 * k], id[2 * k + 1],
                v[2 * k + 1], v[2 * nb + k]);
    }
    free(id);
    free(v);
    return rc;
}

/* The pipelined greedy decode of the na active sequences S->act (last tokens in S->act_tok)
 * until one ends: step k+1 is queued (fed step k's picks on the backend) before the host reads
 * and handles step k's tokens, unless a sequence ends at step k by its length (--max-new, a full
 * context). A stop token ends one unforeseen: step k+1 ran for it too, its token is dropped (the
 * cache row it wrote lies past the sequence; a refill resets the slot). Under TP every rank
 * gets the same picks from the same gathered logits: no broadcast. */
static int decode_async(gen_state *S, zb_run *run, int na) {
    zb_gen *g = &S->g;
    double t0 = zb_now();
    g->time_steps = 1;
    int rc = zb_gen_decode_launch(&S->m, g, S->act, na, S->act_tok);
    for (int ended = 0; !rc;) {
        int ahead = 1;   /* the next step may be queued: no sequence ends by length at this token */
        for (int k = 0; k < na; k++) {
            int b = S->act[k];
            if (run->n_out[S->slot_prompt[b]] + 1 >= S->a.max_new || g->pos[b] >= g->max_T) ahead = 0;
        }
        if (ahead && (rc = zb_gen_decode_launch(&S->m, g, NULL, 0, NULL))) break;
        if ((rc = zb_gen_decode_wait(&S->m, g, S->act_tok))) break;
        S->n_steps++;
        run->ahead = ahead;
        for (int k = 0; k < na; k++) {
            int b = S->act[k];
            if (S->slot_prompt[b] < 0) continue;   /* ended at the step before: a dropped token */
            on_token(run, b, S->act_tok[k]);
            S->n_decode++;
            if (S->slot_prompt[b] < 0) ended = 1;
        }
        run->ahead = 0;
        if (!ahead) break;
        if (ended) {   /* the step in flight: its tokens of the sequences still going */
            if ((rc = zb_gen_decode_wait(&S->m, g, S->act_tok))) break;
            S->n_steps++;
            for (int k = 0; k < na; k++)
                if (S->slot_prompt[S->act[k]] >= 0) { on_token(run, S->act[k], S->act_tok[k]); S->n_decode++; }
            break;
        }
    }
    g->time_steps = 0;
    S->t_decode += zb_now() - t0;
    return rc;
}

/* Prefill prompts into the free slots (each alone) and sample their first tokens, then decode
 * the active sequences together, until every prompt is done. */
static int serve(gen_state *S, zb_run *run, int B, size_t bpt, size_t bps) {
    const gen_args *a = &S->a;
    const zb_config *c = zb_model_full_config(&S->m);   /* full vocabulary under TP */
    zb_gen *g = &S->g;
    int P = n_prompts(&S->pr), next_prompt = 0, tp = a->tp, pp = a->pp;
    int sampler_rank = (tp == 1 || S->grid.tp_rank == 0) && (pp == 1 || S->grid.pp_rank == pp - 1);
    const char *t2 = getenv("ZB_GEN_TOP2");   /* a failure here stops every rank (the driver's MPI_Abort) */
    if (t2 && *t2 && sampler_rank && !S->top2 && !(S->top2 = fopen(t2, "w")))
        return zb_fail(ZB_EIO, "generate: ZB_GEN_TOP2: cannot write %s", t2);
    for (;;) {
        /* 1. fill the free slots: prefill each new prompt alone into its slot and sample its
         *    first token (a prompt that finishes at once frees the slot for the next) */
        for (int b = 0; b < B; b++) {
            while (S->slot_prompt[b] < 0 && next_prompt < P) {
                int i = next_prompt++, tkn = 0;
                zb_gen_reset_seq(g, b);
                double t0 = zb_now();
                ZB_TRY(zb_gen_step_seqs(&S->m, g, &b, 1, prompt_ids(&S->pr, i), prompt_len(&S->pr, i)));
                S->n_prefill += prompt_len(&S->pr, i);
                S->slot_prompt[b] = i;
                if (a->max_new == 0) { finish(run, b); S->t_prefill += zb_now() - t0; continue; }
                if (sampler_rank && S->top2) ZB_TRY(write_top2(S, run, &b, 1));
                if (sampler_rank)
                    tkn = g->greedy ? g->next[0] : zb_sample(g->logits, c->vocab, &a->sp, &S->rngs[i], NULL);
                ZB_TRY(share_tokens(&S->grid, tp, pp, &tkn, 1));
                S->t_prefill += zb_now() - t0;
                on_token(run, b, tkn);
            }
        }
        int na = 0;
        for (int b = 0; b < B; b++)
            if (S->slot_prompt[b] >= 0) { S->act[na] = b; S->act_tok[na] = S->last[S->slot_prompt[b]]; na++; }
        if (!na) return ZB_OK;
        size_t use = 0;   /* cache in use: every active sequence's tokens and states */
        for (int k = 0; k < na; k++) use += ((size_t)g->pos[S->act[k]] + 1) * bpt + bps;
        if (use > S->peak) S->peak = use;
        /* 2. one decode step for all the active sequences, each at its own position (pipelined:
         *    steps until one of them ends) */
        if (S->async) {
            ZB_TRY(decode_async(S, run, na));
            continue;
        }
        double t0 = zb_now();
        g->time_steps = 1;
        int rc = zb_gen_step_seqs(&S->m, g, S->act, na, S->act_tok, 1);
        g->time_steps = 0;
        ZB_TRY(rc);
        S->n_steps++;
        if (sampler_rank && S->top2) ZB_TRY(write_top2(S, run, S->act, na));
        if (sampler_rank)
            for (int k = 0; k < na; k++)
                S->act_tok[k] = g->greedy ? g->next[k]
                                          : zb_sample(g->logits + (size_t)k * c->vocab, c->vocab, &a->sp,
                                                      &S->rngs[S->slot_prompt[S->act[k]]], NULL);
        ZB_TRY(share_tokens(&S->grid, tp, pp, S->act_tok, na));
        S->t_decode += zb_now() - t0;
        S->n_decode += na;
        for (int k = 0; k < na; k++) on_token(run, S->act[k], S->act_tok[k]);
    }
}

/* The closing line on stderr: speeds, cache sizes, weights, every rank's peak resident memory
 * (the 8B-on-24GB check; gathered to rank 0: TP only the ranks of TP group 0, PP every rank). */
static int report(gen_state *S, const zb_run *run, int B, size_t bpt, size_t bps, size_t alloc) {
    const gen_args *a = &S->a;
    double t_dev = zb_gen_device_time(&S->g);   /* every rank: it may wait for its device */
    int tp = a->tp, pp = a->pp, P = n_prompts(&S->pr), threads = zb_linear_threads();
    long hwm = zb_vm_hwm_kb(), *hwms = NULL;
    MPI_Comm hcomm = pp > 1 ? S->grid.world : S->grid.tp;
    int nr = pp > 1 ? S->grid.size : tp > 1 ? S->grid.tp_size : 1;
    if (S->grid_on) {
        hwms = S->rank == 0 ? zb_calloc((size_t)nr, sizeof(long), "stats") : NULL;
        if (MPI_Gather(&hwm, 1, MPI_LONG, hwms, 1, MPI_LONG, 0, hcomm) != MPI_SUCCESS) {
            free(hwms);
            return zb_fail(ZB_EMPI, "generate: MPI_Gather of the memory stats failed");
        }
    }
    if (run->out) {
        if (run->single) printf("\n");
        fflush(stdout);
        char mem[512];
        int k = snprintf(mem, sizeof mem, " | weights %s (%s, %d thread%s), %.2f GiB/rank | peak RSS (VmHWM)",
                         zb_wdtype_name(a->wt), a->wt == ZB_WEIGHTS_BF16 ? zb_bf16_impl_name(ZB_BF16_AUTO) : "sgemm",
                         threads, threads == 1 ? "" : "s", zb_model_param_bytes(&S->m) / 1073741824.0);
        for (int r = 0; r < nr && k > 0 && k < (int)sizeof mem - 32; r++)
            k += snprintf(mem + k, sizeof mem - (size_t)k, "%s %.2f GiB", r ? "," : "",
                          (hwms ? hwms[r] : hwm) / 1048576.0);
        if (S->g.graph && !S->g.graph_off)   /* before the last line (the speeds) */
            fprintf(stderr, "generate: decode steps replayed from a CUDA graph%s\n",
                    tp > 1 ? " (with the TP all-reduces and the logits gather)" : "");
        /* a decode step's time on the device (marks around it on its stream) and the host's rest */
        const char *gt = getenv("ZB_GEN_TIMING");
        if (S->n_steps && (!S->be.host_memory || (gt && *gt && strcmp(gt, "0")))) {
            double wall = S->t_decode / S->n_steps * 1e3, dev = t_dev / S->n_steps * 1e3;
            fprintf(stderr, "generate: decode %ld steps: %.3f ms/step wall, %.3f ms/step on the device, host gap %.3f ms/step "
                    "(%.1f%%; %s)\n", S->n_steps, wall, dev, wall - dev, wall > 0 ? 100 * (wall - dev) / wall : 0.0,
                    S->async ? "pipelined: the next step queued before the tokens are read" : "step by step");
        }
        if (run->n_full)
            fprintf(stderr, "generate: note: %d prompt%s stopped at the full context of %d tokens before --max-new %d "
                    "(prompt %d first; --ctx sets the context, up to max_position_embeddings %d)\n", run->n_full,
                    run->n_full == 1 ? "" : "s", S->g.max_T, a->max_new, run->first_full,
                    zb_model_full_config(&S->m)->max_pos);
        fprintf(stderr, "prefill %ld tokens %.1f tok/s | decode %ld tokens %.1f tok/s | %d prompt%s, batch %d | "
                "cache %zu bytes/token, state %zu bytes/seq | cache in use %zu bytes (peak), allocated %zu bytes%s%s\n",
                S->n_prefill, S->n_prefill / (S->t_prefill + 1e-12), S->n_decode, S->n_decode / (S->t_decode + 1e-12),
                P, P == 1 ? "" : "s", B, bpt, bps, S->peak, alloc,
                tp > 1 ? (pp > 1 ? " (per TP rank, summed over the stages)" : " (per rank)")
                       : pp > 1 ? " (summed over the stages)" : "", mem);
    }
    free(hwms);
    return ZB_OK;
}

/* Prompts shared, model loaded, the schedule run, the report. */
static int gen_run(gen_state *S) {
    const gen_args *a = &S->a;
    int P = n_prompts(&S->pr), B = P < a->max_batch ? P : a->max_batch;
    ZB_TRY(setup_model(S, B));
    zb_gen *g = &S->g;
    zb_run run = {&S->pr, g, S->tok, &S->stops, S->slot_prompt, S->n_out, S->last, S->outbuf,
                  a->max_new > 0 ? a->max_new : 1, a->max_new, P == 1, S->rank == 0, a->quiet, 0, -1, 0};
    if (run.single && run.out && !a->quiet && !S->tok) {   /* the 1-prompt layout of before: "ids | new ids" */
        for (int k = 0; k < prompt_len(&S->pr, 0); k++) printf("%d ", prompt_ids(&S->pr, 0)[k]);
        printf("| ");
    }
    size_t bpt = g->cache_bytes_per_token, bps = g->state_bytes_per_seq, alloc = 0;
    for (int l = 0; l < g->n_layers; l++) alloc += g->cache_floats[l] * sizeof(float);
    if (a->pp > 1) {   /* PP: each stage caches its own layers: the model's sizes are the sums */
        unsigned long long sz[3] = {bpt, bps, alloc};
        if (MPI_Allreduce(MPI_IN_PLACE, sz, 3, MPI_UNSIGNED_LONG_LONG, MPI_SUM, S->grid.pp) != MPI_SUCCESS)
            return zb_fail(ZB_EMPI, "generate: MPI_Allreduce of the cache sizes failed");
        bpt = (size_t)sz[0]; bps = (size_t)sz[1]; alloc = (size_t)sz[2];
    }
    ZB_TRY(serve(S, &run, B, bpt, bps));
    return report(S, &run, B, bpt, bps, alloc);
}

static void gen_free(gen_state *S) {
    if (S->top2) fclose(S->top2);
    zb_gen_free(&S->g);
    zb_model_free(&S->m);
    zb_tokenizer_free(S->tok);
    free(S->pr.ids.v); free(S->pr.off.v); free(S->stops.v);
    free(S->slot_prompt); free(S->n_out); free(S->last); free(S->act); free(S->act_tok); free(S->outbuf);
    free(S->rngs);
    if (S->grid_on) zb_grid_free(&S->grid);
}

int zb_cmd_generate(int argc, char **argv) {
    gen_state S;
    memset(&S, 0, sizeof S);
    ZB_TRY(parse_args(argc, argv, &S.a));
    ZB_TRY(gen_backend(&S.a, &S.be));
    S.grid_on = S.a.tp > 1 || S.a.pp > 1;
    S.world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &S.world);
    if (S.a.print_ids) S.world = 1;   /* no collectives: each rank would print; run it on one */
    int rc = ZB_OK, printed = 0;
    if (S.grid_on) {
        rc = S.a.dev.gpu ? zb_grid_init_gpu(&S.grid, MPI_COMM_WORLD, S.a.tp, S.a.pp)
                     : zb_grid_init(&S.grid, MPI_COMM_WORLD, S.a.tp, S.a.pp);
        S.rank = S.grid.rank;
    } else if (S.world > 1) {
        MPI_Comm_rank(MPI_COMM_WORLD, &S.rank);
    }
    /* rank 0 only may fail here: the other ranks wait in share_prompts and are stopped by the
     * driver's MPI_Abort */
    if (!rc && S.rank == 0) rc = rank0_prompts(&S, &printed);
    if (!rc && !printed) rc = share_prompts(&S);
    if (!rc && !printed) rc = gen_run(&S);
    gen_free(&S);
    return rc;
}
