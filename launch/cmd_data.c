/* cmd_data.c — `zebra data --tokenizer F --input PATH... -o shards/ [--val-fraction 0.01]
 *                [--format auto|text|jsonl|chat|pref] [--seed S] [--eos ID|TOKEN] [--no-shuffle]`
 *
 * Tokenizes text files, directories (recursively, in sorted order, dot-files and binary
 * files skipped) or JSONL into a shard set (format: core/data.h).
 *   text   a file is a document; files over 32 KiB are cut at blank lines into ~32 KiB
 *          documents so that the train/val split and the shuffle have something to work with.
 *   jsonl  one {"text": ...} per line.   (auto: *.jsonl / *.json -> jsonl, else text)
 *   chat   one {"messages": [{"role", "content"}, ...]} per line -> Llama-3 chat template,
 *          loss mask on the assistant contents and their <|eot_id|>.
 *   pref   one {"prompt", "chosen", "rejected"} per line (prompt: a string = one user turn,
 *          or a messages array; chosen/rejected: strings or message arrays whose last
 *          content is used) -> preference pairs for DPO.
 * Text/chat documents are stored as BOS, tokens, EOS (EOS: <|end_of_text|> unless --eos).
 * Each document goes to val when a hash of its bytes and the seed falls under --val-fraction
 * (so duplicates land in the same split); the train order is shuffled by the seed.
 * Rank 0 does the work (other ranks wait); everything is written to a temporary directory
 * renamed into place at the end, so `-o` never holds a half-written set. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "chat.h"
#include "commands.h"
#include "data.h"
#include "tokenizer.h"
#include "zb_common.h"

enum { FMT_AUTO, FMT_TEXT, FMT_JSONL, FMT_CHAT, FMT_PREF };
#define ZB_TEXT_CHUNK (32u << 10)

/* ---- small growable arrays ---- */

typedef struct { char **v; size_t n, cap; } strvec;

static int strvec_push(strvec *s, const char *x) {
    if (s->n == s->cap) {
        size_t c = s->cap ? 2 * s->cap : 16;
        char **p = realloc(s->v, c * sizeof *p);
        if (!p) return zb_fail(ZB_ENOMEM, "out of memory (file list)");
        s->v = p; s->cap = c;
    }
    if (!(s->v[s->n] = strdup(x))) return zb_fail(ZB_ENOMEM, "out of memory (file list)");
    s->n++;
    return ZB_OK;
}

static void strvec_free(strvec *s) {
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Token ids + loss mask of the document being built. */
typedef struct { uint32_t *id; uint8_t *m; size_t n, cap; } seq;

static int seq_reserve(seq *s, size_t more) {
    if (s->n + more <= s->cap) return ZB_OK;
    size_t c = s->cap ? s->cap : 256;
    while (c < s->n + more) c *= 2;
    uint32_t *a = realloc(s->id, c * sizeof *a);
    if (a) s->id = a;
    uint8_t *b = a ? realloc(s->m, c) : NULL;
    if (b) s->m = b;
    if (!a || !b) return zb_fail(ZB_ENOMEM, "out of memory (document of %zu tokens)", s->n + more);
    s->cap = c;
    return ZB_OK;
}

static int seq_put(seq *s, int32_t id, int mask) {
    ZB_TRY(seq_reserve(s, 1));
    s->id[s->n] = (uint32_t)id; s->m[s->n] = (uint8_t)mask; s->n++;
    return ZB_OK;
}

static int seq_text(seq *s, const zb_tokenizer *tok, const char *text, size_t len, int mask) {
    if (len == 0) return ZB_OK;
    int32_t *ids = NULL;
    size_t n = 0;
    ZB_TRY(zb_tokenizer_encode(tok, text, len, &ids, &n));
    int rc = seq_reserve(s, n);
    for (size_t i = 0; !rc && i < n; i++) { s->id[s->n] = (uint32_t)ids[i]; s->m[s->n] = (uint8_t)mask; s->n++; }
    free(ids);
    return rc;
}

/* ---- the sink: every document goes to one raw temp file, in input order ---- */

typedef struct {
    uint64_t off, n;     /* in tokens, in the raw file */
    uint64_t np, nc;     /* pref: prompt and chosen lengths */
    uint64_t h;          /* split hash */
    int val;
} doc;

typedef struct {
    const zb_tokenizer *tok;
    int fmt;
    int32_t bos, eos;
    double val_frac;
    uint64_t seed;
    FILE *raw, *rawm;
    const char *tmpdir;   /* for the messages */
    uint64_t ntok;
    doc *d;
    size_t nd, cap;
    /* progress */
    double t0, last;
    uint64_t bytes_done, bytes_total;
    int progress;
    size_t skipped;      /* binary files left out */
} sink;

static int sink_add(sink *k, const seq *s, uint64_t np, uint64_t nc, const void *key, size_t keylen) {
    if (s->n == 0) return ZB_OK;
    if (k->nd == k->cap) {
        size_t c = k->cap ? 2 * k->cap : 1024;
        doc *p = realloc(k->d, c * sizeof *p);
        if (!p) return zb_fail(ZB_ENOMEM, "out of memory (document list)");
        k->d = p; k->cap = c;
    }
    doc *d = &k->d[k->nd++];
    d->off = k->ntok; d->n = s->n; d->np = np; d->nc = nc;
    d->h = zb_fnv64(key, keylen, zb_fnv64(&k->seed, sizeof k->seed, ZB_FNV64_INIT));
    d->val = (double)(d->h >> 11) * 0x1p-53 < k->val_frac;
    if (fwrite(s->id, 4, s->n, k->raw) != s->n || fwrite(s->m, 1, s->n, k->rawm) != s->n)
        return zb_fail(ZB_EIO, "%s: write error in the temporary shard directory (%s)", k->tmpdir ? k->tmpdir : "data",
                       strerror(errno));
    k->ntok += s->n;
    return ZB_OK;
}

static void progress(sink *k, uint64_t done_in_file) {
    if (!k->progress) return;
    double now = zb_now();
    if (now - k->last < 2.0) return;
    k->last = now;
    double mb = (double)(k->bytes_done + done_in_file) / 1e6;
    fprintf(stderr, "data: %.1f / %.1f MB, %.2f MB/s, %zu docs, %llu tokens\n", mb,
            (double)k->bytes_total / 1e6, mb / (now - k->t0), k->nd, (unsigned long long)k->ntok);
}

/* ---- documents of each format ---- */

static int text_doc(sink *k, seq *s, const char *text, size_t len) {
    s->n = 0;
    if (len == 0) return ZB_OK;   /* empty documents carry nothing */
    ZB_TRY(seq_put(s, k->bos, 1));
    ZB_TRY(seq_text(s, k->tok, text, len, 1));
    ZB_TRY(seq_put(s, k->eos, 1));
    return sink_add(k, s, 0, 0, text, len);
}

static int do_text_file(sink *k, seq *s, const char *path, const char *buf, size_t len) {
    (void)path;
    size_t pos = 0;
    while (pos < len) {
        size_t end = len;
        if (len - pos > ZB_TEXT_CHUNK) {
            const char *cut = memmem(buf + pos + ZB_TEXT_CHUNK, len - pos - ZB_TEXT_CHUNK, "\n\n", 2);
            if (cut) end = (size_t)(cut - buf) + 2;
        }
        ZB_TRY(text_doc(k, s, buf + pos, end - pos));
        progress(k, end);
        pos = end;
    }
    return ZB_OK;
}

/* ids (and their mask) of the chat template appended to s */
static int seq_chat(seq *s, const zb_chat_ids *c) {
    ZB_TRY(seq_reserve(s, c->n));
    for (size_t i = 0; i < c->n; i++) { s->id[s->n] = (uint32_t)c->ids[i]; s->m[s->n] = c->mask[i]; s->n++; }
    return ZB_OK;
}

/* A messages array through the Llama-3 chat template (core/chat.h), appended to s: the turns
 * (reply_header 0, masks on the assistant contents) or a prompt (reply_header 1); *why set
 * when malformed. */
static int chat_msgs(sink *k, seq *s, const cJSON *msgs, int reply_header, const char **why) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        *why = "\"messages\" must be a non-empty array";
        return ZB_OK;
    }
    int n = cJSON_GetArraySize(msgs), i = 0;
    zb_chat_msg *m = zb_calloc((size_t)n, sizeof *m, "messages");
    if (!m) return ZB_ENOMEM;
    const cJSON *x;
    cJSON_ArrayForEach(x, msgs) {
        m[i].role = zb_json_str(x, "role");
        m[i].content = zb_json_str(x, "content");
        if (!m[i].role || !m[i].content) { *why = "each message needs \"role\" and \"content\" strings"; break; }
        i++;
    }
    zb_chat_ids c = {0};
    int rc = *why ? ZB_OK : zb_chat_encode(k->tok, m, n, reply_header, &c);
    if (!rc && !*why) rc = seq_chat(s, &c);
    zb_chat_ids_free(&c);
    free(m);
    return rc;
}

/* chosen / rejected: a string, or messages whose last content is the completion. */
static const char *completion(const cJSON *j) {
    if (cJSON_IsString(j)) return j->valuestring;
    if (cJSON_IsArray(j) && cJSON_GetArraySize(j) > 0)
        return zb_json_str(cJSON_GetArrayItem(j, cJSON_GetArraySize(j) - 1), "content");
    return NULL;
}

static int json_line(sink *k, seq *s, const char *path, size_t lineno, const char *line, size_t len) {
    cJSON *j = cJSON_ParseWithLength(line, len);
    if (!j) return zb_fail(ZB_EFORMAT, "%s:%zu: malformed JSON", path, lineno);
    const char *why = NULL;
    int rc = ZB_OK;
    s->n = 0;
    if (!cJSON_IsObject(j)) why = "not a JSON object";
    else if (k->fmt == FMT_JSONL) {
        const char *t = zb_json_str(j, "text");
        if (!t) why = "no \"text\" string";
        else rc = text_doc(k, s, t, strlen(t));
    } else if (k->fmt == FMT_CHAT) {
        rc = chat_msgs(k, s, cJSON_GetObjectItemCaseSensitive(j, "messages"), 0, &why);
        if (!rc && !why) rc = seq_put(s, k->eos, 0);
        if (!rc && !why) rc = sink_add(k, s, 0, 0, line, len);
    } else {   /* pref */
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        const char *ch = completion(cJSON_GetObjectItemCaseSensitive(j, "chosen"));
        const char *rj = completion(cJSON_GetObjectItemCaseSensitive(j, "rejected"));
        if (!p || !ch || !rj) why = "needs \"prompt\", \"chosen\" and \"rejected\"";
        if (!why) {   /* the prompt with the reply header, then each completion and its <|eot_id|> */
            cJSON *one = NULL;
            if (cJSON_IsString(p)) {
                one = cJSON_CreateArray();
                cJSON *msg = cJSON_CreateObject();
                if (!one || !msg || !cJSON_AddStringToObject(msg, "role", "user") ||
                    !cJSON_AddStringToObject(msg, "content", p->valuestring)) rc = zb_fail(ZB_ENOMEM, "out of memory");
                cJSON_AddItemToArray(one, msg);
            }
            if (!rc) rc = chat_msgs(k, s, one ? one : p, 1, &why);
            cJSON_Delete(one);
        }
        uint64_t np = 0, nc = 0;
        for (int c = 0; c < 2 && !rc && !why; c++) {
            if (c == 0) np = s->n; else nc = s->n - np;
            zb_chat_ids ci = {0};
            rc = zb_chat_encode_content(k->tok, c ? rj : ch, 1, &ci);
            if (!rc) rc = seq_chat(s, &ci);
            zb_chat_ids_free(&ci);
        }
        if (!rc && !why) rc = sink_add(k, s, np, nc, line, len);
    }
    cJSON_Delete(j);
    if (!rc && why) rc = zb_fail(ZB_EFORMAT, "%s:%zu: %s", path, lineno, why);
    return rc;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static int do_jsonl_file(sink *k, seq *s, const char *path, const char *buf, size_t len) {
    size_t pos = 0, lineno = 0;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len, e = end;
        lineno++;
        while (e > pos && is_ws(buf[e - 1])) e--;
        size_t b = pos;
        while (b < e && is_ws(buf[b])) b++;
        if (b < e) ZB_TRY(json_line(k, s, path, lineno, buf + b, e - b));
        pos = end + 1;
        if ((lineno & 1023) == 0) progress(k, pos);
    }
    return ZB_OK;
}

/* ---- inputs ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int walk(strvec *out, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return zb_fail(ZB_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = ZB_OK;
    struct dirent *e;
    char path[PATH_MAX];
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue;   /* dangling link: nothing to read */
        if (S_ISDIR(st.st_mode)) rc = walk(out, path);
        else if (S_ISREG(st.st_mode)) rc = strvec_push(out, path);
    }
    closedir(d);
    return rc;
}

static int collect(strvec *files, const strvec *inputs) {
    for (size_t i = 0; i < inputs->n; i++) {
        struct stat st;
        if (stat(inputs->v[i], &st) != 0) return zb_fail(ZB_EIO, "%s: %s", inputs->v[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            size_t first = files->n;
            ZB_TRY(walk(files, inputs->v[i]));
            if (files->n == first) return zb_fail(ZB_EARG, "data: %s: a directory with no files to read", inputs->v[i]);
            qsort(files->v + first, files->n - first, sizeof *files->v, cmp_str);   /* readdir order is not stable */
        } else ZB_TRY(strvec_push(files, inputs->v[i]));
    }
    return ZB_OK;
}

static int process_file(sink *k, seq *s, const char *path, int fmt) {
    char *buf = NULL;
    size_t len = 0;
    ZB_TRY(zb_read_file(path, &buf, &len));
    int f = fmt;
    if (f == FMT_AUTO) f = zb_ends_with(path, ".jsonl") || zb_ends_with(path, ".json") ? FMT_JSONL : FMT_TEXT;
    int rc = ZB_OK;
    if (f == FMT_TEXT) {
        if (memchr(buf, 0, len < 4096 ? len : 4096)) k->skipped++;   /* NUL bytes: not text */
        else rc = do_text_file(k, s, path, buf, len);
    } else {
        int save = k->fmt;
        k->fmt = f;
        rc = do_jsonl_file(k, s, path, buf, len);
        k->fmt = save;
    }
    k->bytes_done += len;
    free(buf);
    return rc;
}

/* ---- output ---- */

typedef struct { FILE *f; uint64_t bytes, h; char name[64]; } outf;

static int out_open(outf *o, const char *dir, const char *name) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->bytes = 0; o->h = ZB_FNV64_INIT;
    o->f = fopen(path, "wb");
    return o->f ? ZB_OK : zb_fail(ZB_EIO, "%s: cannot create: %s", path, strerror(errno));
}

static int out_write(outf *o, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, o->f) != n) return zb_fail(ZB_EIO, "%s: write error (%s)", o->name, strerror(errno));
    o->h = zb_fnv64(p, n, o->h);
    o->bytes += n;
    return ZB_OK;
}

static int out_close(outf *o, cJSON *files) {
    /* on disk before the set is renamed into place */
    int bad = fflush(o->f) != 0 || fsync(fileno(o->f)) != 0, er = errno;
    if (fclose(o->f) != 0 && !bad) { bad = 1; er = errno; }
    o->f = NULL;
    if (bad) return zb_fail(ZB_EIO, "%s: write error (%s)", o->name, strerror(er));
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)o->h);
    cJSON *e = cJSON_AddObjectToObject(files, o->name);
    cJSON_AddNumberToObject(e, "bytes", (double)o->bytes);
    cJSON_AddStringToObject(e, "hash", "fnv1a64");
    cJSON_AddStringToObject(e, "fnv64", hex);
    return ZB_OK;
}

static int map_ro(const char *path, void **p, size_t *n) {
    *p = NULL; *n = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    struct stat st;
    int rc = zb_fd_is_file(fd, path, 1);
    if (!rc) rc = fstat(fd, &st) == 0 ? ZB_OK : zb_fail(ZB_EIO, "%s: cannot stat", path);
    if (!rc && st.st_size > 0) {
        *n = (size_t)st.st_size;
        *p = mmap(NULL, *n, PROT_READ, MAP_SHARED, fd, 0);
        if (*p == MAP_FAILED) { *p = NULL; rc = zb_fail(ZB_EIO, "%s: mmap failed", path); }
    }
    close(fd);
    return rc;
}

/* Write one split from the raw stream in the order ord[0..n). */
static int write_split(const sink *k, const char *tmp, const char *split, const size_t *ord, size_t n,
                       const uint32_t *raw, const uint8_t *rawm, cJSON *files, cJSON *splits) {
    int pref = k->fmt == FMT_PREF, chat = k->fmt == FMT_CHAT;
    char name[64];
    outf bin = {0}, idx = {0}, msk = {0};
    snprintf(name, sizeof name, pref ? "%s.prefs.bin" : "%s.bin", split);
    ZB_TRY(out_open(&bin, tmp, name));
    snprintf(name, sizeof name, pref ? "%s.prefs.idx" : "%s.idx", split);
    int rc = out_open(&idx, tmp, name);
    snprintf(name, sizeof name, "%s.mask", split);
    if (!rc && chat) rc = out_open(&msk, tmp, name);
    uint64_t at = 0;
    if (!rc) rc = out_write(&idx, &at, 8);
    for (size_t i = 0; i < n && !rc; i++) {
        const doc *d = &k->d[ord[i]];
        rc = out_write(&bin, raw + d->off, d->n * 4);
        if (!rc && chat) rc = out_write(&msk, rawm + d->off, d->n);
        if (pref) {
            uint64_t a = at + d->np, b = a + d->nc;
            if (!rc) rc = out_write(&idx, &a, 8);
            if (!rc) rc = out_write(&idx, &b, 8);
        }
        at += d->n;
        if (!rc) rc = out_write(&idx, &at, 8);
    }
    if (bin.f) { int r = out_close(&bin, files); if (!rc) rc = r; }
    if (idx.f) { int r = out_close(&idx, files); if (!rc) rc = r; }
    if (msk.f) { int r = out_close(&msk, files); if (!rc) rc = r; }
    cJSON *e = cJSON_AddObjectToObject(splits, split);
    if (pref) cJSON_AddNumberToObject(e, "pairs", (double)n);
    cJSON_AddNumberToObject(e, "docs", (double)n);
    cJSON_AddNumberToObject(e, "tokens", (double)at);
    return rc;
}

static void rm_tree_flat(const char *dir) {   /* our shard dirs hold plain files only */
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[PATH_MAX];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Put tmp at out: a missing out is simply renamed onto; an existing shard set (or an empty
 * directory) is swapped out and removed; anything else is left alone. */
static int install(const char *tmp, const char *out) {
    struct stat st;
    if (stat(out, &st) != 0) {
        if (rename(tmp, out) != 0) return zb_fail(ZB_EIO, "%s: cannot create: %s", out, strerror(errno));
        zb_fsync_dir(out);
        return ZB_OK;
    }
    char man[PATH_MAX], old[PATH_MAX];
    snprintf(man, sizeof man, "%s/manifest.json", out);
    int empty = 0;
    if (S_ISDIR(st.st_mode) && access(man, F_OK) != 0) {
        DIR *d = opendir(out);
        struct dirent *e;
        empty = 1;
        while (d && (e = readdir(d))) if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
        if (d) closedir(d);
    }
    if (!S_ISDIR(st.st_mode) || (!empty && access(man, F_OK) != 0))
        return zb_fail(ZB_EARG, "%s: exists and is not a shard set; not replacing it", out);
    snprintf(old, sizeof old, "%s.old-%ld", out, (long)getpid());
    if (rename(out, old) != 0) return zb_fail(ZB_EIO, "%s: cannot replace: %s", out, strerror(errno));
    if (rename(tmp, out) != 0) {
        int e = errno;
        rename(old, out);
        return zb_fail(ZB_EIO, "%s: cannot replace: %s", out, strerror(e));
    }
    zb_fsync_dir(out);
    rm_tree_flat(old);
    return ZB_OK;
}

/* ---- the command ---- */

typedef struct {
    const char *tok_path, *out, *eos;
    strvec inputs;
    double val_frac;
    uint64_t seed;
    int fmt, shuffle;
} data_args;

static int parse_args(int argc, char **argv, data_args *a) {
    a->val_frac = 0.01; a->fmt = FMT_AUTO; a->shuffle = 1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(f, "--input")) {
            int any = 0;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) && strcmp(argv[i + 1], "-o")) {
                ZB_TRY(strvec_push(&a->inputs, argv[++i]));
                any = 1;
            }
            if (!any) return zb_fail(ZB_EARG, "data: --input needs at least one path");
        } else if (!strcmp(f, "--no-shuffle")) a->shuffle = 0;
        else if (!has) return zb_fail(ZB_EARG, "data: %s needs a value", f);
        else if (!strcmp(f, "--tokenizer")) a->tok_path = argv[++i];
        else if (!strcmp(f, "-o") || !strcmp(f, "--out")) a->out = argv[++i];
        else if (!strcmp(f, "--eos")) a->eos = argv[++i];
        else if (!strcmp(f, "--val-fraction")) {
            ZB_TRY(zb_parse_double(argv[++i], "data: --val-fraction", 0, 1, &a->val_frac));
            if (a->val_frac >= 1) return zb_fail(ZB_EARG, "data: --val-fraction must be in [0, 1), not '%s'", argv[i]);
        } else if (!strcmp(f, "--seed")) {
            ZB_TRY(zb_parse_u64(argv[++i], "data: --seed", &a->seed));
        } else if (!strcmp(f, "--format")) {
            const char *v = argv[++i];
            static const char *const names[] = {"auto", "text", "jsonl", "chat", "pref"};
            a->fmt = -1;
            for (int k = 0; k < 5; k++) if (!strcmp(v, names[k])) a->fmt = k;
            if (a->fmt < 0) return zb_fail(ZB_EARG, "data: --format must be auto, text, jsonl, chat or pref, not '%s'", v);
        } else return zb_fail(ZB_EARG, "data: unknown argument '%s'", f);
    }
    if (!a->tok_path || !a->inputs.n || !a->out)
        return zb_fail(ZB_EARG, "data: needs --tokenizer F --input PATH... -o DIR");
    return ZB_OK;
}

static int special(const zb_tokenizer *t, const char *s, int32_t *id) {
    *id = zb_tokenizer_token_id(t, s);
    return *id >= 0 ? ZB_OK : zb_fail(ZB_EFORMAT, "the tokenizer has no %s token (needed by the Llama-3 chat template)", s);
}

/* manifest.json's object, with the "splits" and "files" members that write_split fills. */
static cJSON *manifest_new(const data_args *a, const sink *k, const zb_tokenizer *tok, size_t n_files,
                           cJSON **files_j, cJSON **splits_j) {
    cJSON *man = cJSON_CreateObject();
    if (!man) return NULL;
    cJSON_AddStringToObject(man, "format", "zebra-shards");
    cJSON_AddNumberToObject(man, "version", 1);
    static const char *const kinds[] = {"text", "text", "text", "chat", "pref"};
    cJSON_AddStringToObject(man, "kind", kinds[a->fmt]);
    char *rp = realpath(a->tok_path, NULL);
    cJSON_AddStringToObject(man, "tokenizer", rp ? rp : a->tok_path);
    free(rp);
    cJSON_AddNumberToObject(man, "vocab_size", zb_tokenizer_vocab_size(tok));
    cJSON_AddNumberToObject(man, "bos_id", k->bos);
    cJSON_AddNumberToObject(man, "eos_id", k->eos);
    cJSON_AddNumberToObject(man, "val_fraction", a->val_frac);
    cJSON_AddNumberToObject(man, "seed", (double)a->seed);
    cJSON_AddBoolToObject(man, "shuffled", a->shuffle);
    cJSON *in = cJSON_AddArrayToObject(man, "inputs");
    for (size_t i = 0; i < a->inputs.n; i++) cJSON_AddItemToArray(in, cJSON_CreateString(a->inputs.v[i]));
    cJSON_AddNumberToObject(man, "input_files", (double)n_files);
    cJSON_AddNumberToObject(man, "input_bytes", (double)k->bytes_done);
    *splits_j = cJSON_AddObjectToObject(man, "splits");
    *files_j = cJSON_AddObjectToObject(man, "files");
    return man;
}

/* A non-zero fraction gets at least one val document, and train is never empty, so tiny
 * inputs still give both splits (picked by hash: deterministic). Returns the val count. */
static size_t pick_val(sink *k, double val_frac) {
    size_t nval = 0;
    for (size_t i = 0; i < k->nd; i++) nval += k->d[i].val;
    if (val_frac > 0 && nval == 0 && k->nd >= 2) {
        size_t lo = 0;
        for (size_t i = 1; i < k->nd; i++) if (k->d[i].h < k->d[lo].h) lo = i;
        k->d[lo].val = 1; nval = 1;
    }
    if (nval == k->nd) {
        size_t hi = 0;
        for (size_t i = 1; i < k->nd; i++) if (k->d[i].h > k->d[hi].h) hi = i;
        k->d[hi].val = 0; nval--;
    }
    return nval;
}

/* The sink's tokens: BOS, EOS (--eos, else <|end_of_text|> or the tokenizer's first), and for
 * chat / pref the chat template's, checked before any input is read. */
static int sink_tokens(sink *k, const data_args *a, const zb_tokenizer *tok) {
    k->tok = tok; k->fmt = a->fmt; k->val_frac = a->val_frac; k->seed = a->seed;
    k->bos = zb_tokenizer_bos_id(tok);
    if (k->bos < 0) return zb_fail(ZB_EFORMAT, "%s: no BOS token", a->tok_path);
    if (a->eos) {
        /* a token id (digits) or a token's text */
        long v = -1;
        int digits = *a->eos != 0;
        for (const char *c = a->eos; *c; c++) digits &= *c >= '0' && *c <= '9';
        if (digits && zb_parse_long(a->eos, "data: --eos", 0, INT32_MAX, &v)) v = -1;
        k->eos = digits ? (int32_t)v : zb_tokenizer_token_id(tok, a->eos);
        if (k->eos < 0 || k->eos >= zb_tokenizer_vocab_size(tok))
            return zb_fail(ZB_EARG, "data: --eos '%s' is not a token of %s", a->eos, a->tok_path);
    } else {
        const int32_t *e = NULL;
        k->eos = zb_tokenizer_token_id(tok, "<|end_of_text|>");
        if (k->eos < 0 && zb_tokenizer_eos_ids(tok, &e) > 0) k->eos = e[0];
        if (k->eos < 0) return zb_fail(ZB_EFORMAT, "%s: no EOS token (give --eos)", a->tok_path);
    }
    if (a->fmt == FMT_CHAT || a->fmt == FMT_PREF) {
        static const char *const sp[] = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
        int32_t id;   /* the chat template's tokens, checked before any input is read */
        for (int i = 0; i < 3; i++) ZB_TRY(special(tok, sp[i], &id));
    }
    return ZB_OK;
}

static int run(const data_args *a) {
    double t0 = zb_now();
    sink k = {0};
    seq s = {0};
    strvec files = {0};
    zb_tokenizer *tok = NULL;
    char tmp[PATH_MAX], path[PATH_MAX + 64];
    int made_tmp = 0;
    void *raw = NULL, *rawm = NULL;
    size_t nraw = 0, nrawm = 0;
    size_t *ord = NULL;
    cJSON *man = NULL;

    int rc = collect(&files, &a->inputs);
    if (!rc) rc = zb_tokenizer_load(&tok, a->tok_path);
    if (!rc) rc = sink_tokens(&k, a, tok);
    /* temp dir next to -o so the final rename stays on one file system */
    if (!rc) {
        size_t L = strlen(a->out);
        while (L > 1 && a->out[L - 1] == '/') L--;
        snprintf(tmp, sizeof tmp, "%.*s.tmp-%ld", (int)L, a->out, (long)getpid());
        if (mkdir(tmp, 0755) != 0) rc = zb_fail(ZB_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        else made_tmp = 1;
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/raw.tmp", tmp);
        k.tmpdir = tmp;
        k.raw = fopen(path, "w+b");
        snprintf(path, sizeof path, "%s/rawmask.tmp", tmp);
        k.rawm = fopen(path, "w+b");
        if (!k.raw || !k.rawm) rc = zb_fail(ZB_EIO, "%s: cannot create temporary files", tmp);
    }
    if (!rc) {
        for (size_t i = 0; i < files.n; i++) {
            struct stat st;
            if (stat(files.v[i], &st) == 0) k.bytes_total += (uint64_t)st.st_size;
        }
        k.t0 = k.last = zb_now();
        k.progress = k.bytes_total > (8u << 20);
    }
    for (size_t i = 0; !rc && i < files.n; i++) rc = process_file(&k, &s, files.v[i], a->fmt);
    if (!rc && k.nd == 0) rc = zb_fail(ZB_EARG, "data: the inputs hold no documents");
    if (!rc && (fflush(k.raw) || fflush(k.rawm))) rc = zb_fail(ZB_EIO, "%s: write error (disk full?)", tmp);

    size_t nval = rc ? 0 : pick_val(&k, a->val_frac);
    if (!rc) {
        snprintf(path, sizeof path, "%s/raw.tmp", tmp);
        rc = map_ro(path, &raw, &nraw);
        snprintf(path, sizeof path, "%s/rawmask.tmp", tmp);
        if (!rc) rc = map_ro(path, &rawm, &nrawm);
    }
    if (!rc && !(ord = malloc((k.nd + 1) * sizeof *ord))) rc = zb_fail(ZB_ENOMEM, "out of memory (order)");
    cJSON *files_j = NULL, *splits_j = NULL;
    if (!rc && !(man = manifest_new(a, &k, tok, files.n, &files_j, &splits_j)))
        rc = zb_fail(ZB_ENOMEM, "out of memory (manifest)");
    for (int sp = 0; sp < 2 && !rc; sp++) {
        size_t n = 0;
        for (size_t i = 0; i < k.nd; i++) if (k.d[i].val == sp) ord[n++] = i;
        if (sp == 0 && a->shuffle && a->fmt != FMT_PREF) {   /* pairs stay in input order */   /* Fisher-Yates: the training order mixes the inputs */
            zb_rng r;
            zb_rng_seed(&r, a->seed * 0x9e3779b97f4a7c15ull + 1);
            for (size_t i = n; i > 1; i--) {
                size_t j = (size_t)(zb_rng_u64(&r) % i), t = ord[i - 1];
                ord[i - 1] = ord[j]; ord[j] = t;
            }
        }
        rc = write_split(&k, tmp, sp ? "val" : "train", ord, n, raw, rawm, files_j, splits_j);
    }
    if (raw) munmap(raw, nraw);
    if (rawm) munmap(rawm, nrawm);
    if (k.raw) fclose(k.raw);
    if (k.rawm) fclose(k.rawm);
    if (made_tmp) {
        snprintf(path, sizeof path, "%s/raw.tmp", tmp); unlink(path);
        snprintf(path, sizeof path, "%s/rawmask.tmp", tmp); unlink(path);
    }
    if (!rc) {
        char *txt = cJSON_Print(man);
        snprintf(path, sizeof path, "%s/manifest.json", tmp);
        FILE *f = txt ? fopen(path, "w") : NULL;
        if (!f || fputs(txt, f) < 0 || fputc('\n', f) == EOF) rc = zb_fail(ZB_EIO, "%s: cannot write", path);
        if (f && fclose(f) != 0 && !rc) rc = zb_fail(ZB_EIO, "%s: cannot write", path);
        free(txt);
    }
    if (!rc) rc = install(tmp, a->out);
    if (rc && made_tmp) rm_tree_flat(tmp);
    if (!rc) {
        double dt = zb_now() - t0;
        const cJSON *sp = splits_j;
        double tt = cJSON_GetObjectItem(cJSON_GetObjectItem(sp, "train"), "tokens")->valuedouble;
        double vt = cJSON_GetObjectItem(cJSON_GetObjectItem(sp, "val"), "tokens")->valuedouble;
        if (k.skipped) printf("data: skipped %zu binary files\n", k.skipped);
        printf("data: %zu files, %zu %s (%zu val), %.0f train + %.0f val tokens in %.1f s (%.2f MB/s) -> %s\n",
               files.n, k.nd, a->fmt == FMT_PREF ? "pairs" : "docs", nval, tt, vt, dt,
               (double)k.bytes_done / 1e6 / (dt > 1e-9 ? dt : 1e-9), a->out);
        fflush(stdout);
    }
    cJSON_Delete(man);
    free(ord);
    free(k.d);
    free(s.id); free(s.m);
    strvec_free(&files);
    zb_tokenizer_free(tok);
    return rc;
}

int zb_cmd_data(int argc, char **argv) {
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rc = ZB_OK;
    if (rank == 0) {
        data_args a = {0};
        rc = parse_args(argc, argv, &a);
        if (!rc) rc = run(&a);
        strvec_free(&a.inputs);
        if (rc) return rc;   /* the driver aborts every rank; the others wait below */
    }
    /* Other ranks wait until the set is in place (rank 0 only returns success here). */
    if (size > 1) ZB_MPI(MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD));
    return rc;
}
