/* data.c — reading shard sets (see data.h for the format) and the deterministic loader.
 *
 * Files are mmap'd read-only, so opening a multi-GB split costs nothing and every rank of a
 * node shares the page cache. The loader walks an infinite stream of global rows
 * (epoch * rows + row); rank r of R takes rows c + b*R + r of each batch, so ranks are
 * disjoint and their union, in order, is the one-rank stream. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "data.h"
#include "zb_common.h"

uint64_t zb_fnv64(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

/* ---- mapped files ---- */

typedef struct { void *p; size_t n; } zb_map;

static int map_file(zb_map *m, const char *path) {
    m->p = NULL; m->n = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    int krc = zb_fd_is_file(fd, path, 1);
    if (krc) { close(fd); return krc; }
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return zb_fail(ZB_EIO, "%s: cannot stat", path); }
    m->n = (size_t)st.st_size;
    if (m->n > 0) {
        m->p = mmap(NULL, m->n, PROT_READ, MAP_SHARED, fd, 0);
        if (m->p == MAP_FAILED) { m->p = NULL; close(fd); return zb_fail(ZB_EIO, "%s: mmap failed", path); }
    }
    close(fd);
    return ZB_OK;
}

static void unmap_file(zb_map *m) {
    if (m->p) munmap(m->p, m->n);
    m->p = NULL; m->n = 0;
}

static int host_is_le(void) { const uint16_t x = 1; return *(const unsigned char *)&x == 1; }

/* ---- manifest ---- */

static int read_manifest(const char *dir, cJSON **out) {
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    char *txt = NULL;
    size_t n = 0;
    if (zb_read_file(path, &txt, &n) != ZB_OK)
        return zb_fail(ZB_EIO, "%s: not a shard set (no manifest.json; make one with `zebra data`)", dir);
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j || !cJSON_IsObject(j)) { cJSON_Delete(j); return zb_fail(ZB_EFORMAT, "%s: malformed JSON", path); }
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "format");
    if (!cJSON_IsString(f) || strcmp(f->valuestring, "zebra-shards") != 0) {
        cJSON_Delete(j);
        return zb_fail(ZB_EFORMAT, "%s: not a zebra shard manifest", path);
    }
    *out = j;
    return ZB_OK;
}

static const char *manifest_kind(const cJSON *m) {
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(m, "kind");
    return cJSON_IsString(k) ? k->valuestring : "text";
}

/* Map dir/name and check its size against the manifest (a cheap guard against truncation;
 * zb_shards_verify does the full hash). */
static int map_checked(zb_map *m, const cJSON *man, const char *dir, const char *name, size_t elem) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ZB_TRY(map_file(m, path));
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(man, "files"), name);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(f, "bytes");
    if (!cJSON_IsNumber(b) || (double)m->n != b->valuedouble) {
        unmap_file(m);
        return zb_fail(ZB_EFORMAT, "%s: size does not match manifest.json (truncated or replaced?)", path);
    }
    if (m->n % elem) { unmap_file(m); return zb_fail(ZB_EFORMAT, "%s: size not a multiple of %zu", path, elem); }
    return ZB_OK;
}

/* The manifest's vocab_size (the tokenizer's id count): every id of the set must be below it.
 * Absent (sets written before it was recorded): no limit from the manifest. */
static int manifest_vocab(const cJSON *man, const char *dir, uint64_t *vocab) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(man, "vocab_size");
    *vocab = UINT64_MAX;
    if (!v) return ZB_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 4294967296.0 || v->valuedouble != (double)(uint64_t)v->valuedouble)
        return zb_fail(ZB_EFORMAT, "%s/manifest.json: vocab_size must be a positive integer", dir);
    *vocab = (uint64_t)v->valuedouble;
    return ZB_OK;
}

/* The id limit of a set: the manifest's vocab_size, lowered by the model that reads it. */
typedef struct {
    uint64_t limit;
    char what[64];         /* whose vocabulary the limit is, for the message */
    char path[4200];       /* the token file, for the message */
} zb_idlimit;

static void idlimit_init(zb_idlimit *l, uint64_t manifest_vocab, const char *dir, const char *file) {
    l->limit = manifest_vocab;
    snprintf(l->what, sizeof l->what, "vocab_size %llu in manifest.json", (unsigned long long)manifest_vocab);
    snprintf(l->path, sizeof l->path, "%s/%s", dir, file);
}

static void idlimit_lower(zb_idlimit *l, int vocab, const char *who) {
    if (vocab > 0 && (uint64_t)vocab < l->limit) {
        l->limit = (uint64_t)vocab;
        snprintf(l->what, sizeof l->what, "%s, %d ids", who ? who : "the model's vocabulary", vocab);
    }
}

/* ids [n] of the file at token offset pos: each below the limit (a uint32 of 2^31 or more is a
 * negative id as int32: outside too) */
static int idlimit_check(const zb_idlimit *l, const uint32_t *ids, size_t n, uint64_t pos) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= l->limit || ids[i] > INT32_MAX)
            return zb_fail(ZB_EFORMAT, "%s: token id %lld at token %llu is outside the vocabulary (%s)", l->path,
                           ids[i] > INT32_MAX ? (long long)(int32_t)ids[i] : (long long)ids[i],
                           (unsigned long long)(pos + i), l->what);
    return ZB_OK;
}

static int check_split(const char *split) {
    if (!split || (strcmp(split, "train") && strcmp(split, "val")))
        return zb_fail(ZB_EARG, "split must be \"train\" or \"val\", not \"%s\"", split ? split : "(null)");
    return ZB_OK;
}

/* Offsets must start at 0, never decrease and end at the token count. */
static int check_offsets(const uint64_t *o, uint64_t n, uint64_t total, const char *dir, const char *name) {
    if (n == 0 || o[0] != 0 || o[n - 1] != total)
        return zb_fail(ZB_EFORMAT, "%s/%s: offsets do not cover the tokens", dir, name);
    for (uint64_t i = 1; i < n; i++)
        if (o[i] < o[i - 1]) return zb_fail(ZB_EFORMAT, "%s/%s: offsets decrease at %llu", dir, name, (unsigned long long)i);
    return ZB_OK;
}

/* ---- one split ---- */

struct zb_shard {
    zb_map bin, idx, mask;
    uint64_t ntok, ndocs;
    zb_idlimit ids;
};

void zb_shard_close(zb_shard *s) {
    if (!s) return;
    unmap_file(&s->bin); unmap_file(&s->idx); unmap_file(&s->mask);
    free(s);
}

int zb_shard_open(zb_shard **out, const char *dir, const char *split) {
    *out = NULL;
    ZB_TRY(check_split(split));
    if (!host_is_le()) return zb_fail(ZB_EFORMAT, "shards are little-endian; this host is not");
    cJSON *man = NULL;
    ZB_TRY(read_manifest(dir, &man));
    int rc = ZB_OK;
    if (!strcmp(manifest_kind(man), "pref"))
        rc = zb_fail(ZB_EFORMAT, "%s: a preference-pair set (open it with zb_pref_open / the dpo stage)", dir);
    zb_shard *s = rc ? NULL : zb_calloc(1, sizeof *s, "shard");
    if (!rc && !s) rc = ZB_ENOMEM;
    char name[64];
    uint64_t mv = 0;
    if (!rc) rc = manifest_vocab(man, dir, &mv);
    if (!rc) { snprintf(name, sizeof name, "%s.bin", split); rc = map_checked(&s->bin, man, dir, name, 4); }
    if (!rc) idlimit_init(&s->ids, mv, dir, name);
    if (!rc) { snprintf(name, sizeof name, "%s.idx", split); rc = map_checked(&s->idx, man, dir, name, 8); }
    if (!rc) {
        s->ntok = s->bin.n / 4;
        s->ndocs = s->idx.n / 8 ? s->idx.n / 8 - 1 : 0;
        rc = check_offsets(s->idx.p, s->idx.n / 8, s->ntok, dir, name);
    }
    if (!rc && !strcmp(manifest_kind(man), "chat")) {
        snprintf(name, sizeof name, "%s.mask", split);
        rc = map_checked(&s->mask, man, dir, name, 1);
        if (!rc && s->mask.n != s->ntok) rc = zb_fail(ZB_EFORMAT, "%s/%s: one byte per token expected", dir, name);
    }
    cJSON_Delete(man);
    if (rc) { zb_shard_close(s); return rc; }
    *out = s;
    return ZB_OK;
}

const uint32_t *zb_shard_tokens(const zb_shard *s, uint64_t *n_tokens) {
    if (n_tokens) *n_tokens = s->ntok;
    return s->bin.p;
}
const uint8_t *zb_shard_mask(const zb_shard *s) { return s->mask.p; }

uint64_t zb_shard_docs(const zb_shard *s) { return s->ndocs; }

int zb_shard_doc(const zb_shard *s, uint64_t i, uint64_t *start, uint64_t *end) {
    if (i >= s->ndocs) return zb_fail(ZB_EARG, "document %llu of %llu", (unsigned long long)i, (unsigned long long)s->ndocs);
    const uint64_t *o = s->idx.p;
    *start = o[i]; *end = o[i + 1];
    return ZB_OK;
}

int zb_shards_verify(const char *dir) {
    cJSON *man = NULL;
    ZB_TRY(read_manifest(dir, &man));
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(man, "files"), *f;
    int rc = cJSON_IsObject(files) ? ZB_OK : zb_fail(ZB_EFORMAT, "%s/manifest.json: no \"files\"", dir);
    cJSON_ArrayForEach(f, files) {
        if (rc) break;
        zb_map m;
        rc = map_checked(&m, man, dir, f->string, 1);
        if (rc) break;
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)zb_fnv64(m.p, m.n, ZB_FNV64_INIT));
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(f, "fnv64");
        if (!cJSON_IsString(h) || strcmp(h->valuestring, hex))
            rc = zb_fail(ZB_EFORMAT, "%s/%s: hash %s does not match manifest.json", dir, f->string, hex);
        unmap_file(&m);
    }
    cJSON_Delete(man);
    return rc;
}

/* ---- loader ---- */

struct zb_loader {
    zb_shard *s;
    int B, T, rank, size;
    uint64_t rows;   /* rows of T+1 tokens per epoch: row k = tokens [k*T, k*T + T] */
    uint64_t next;   /* global position in the endless stream: epoch * rows + row */
};

int zb_loader_open(zb_loader **out, const char *dir, const char *split, int B, int T,
                   int dp_rank, int dp_size) {
    *out = NULL;
    if (B < 1 || T < 1 || dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
        return zb_fail(ZB_EARG, "loader: bad B=%d T=%d rank %d of %d", B, T, dp_rank, dp_size);
    zb_shard *s = NULL;
    ZB_TRY(zb_shard_open(&s, dir, split));
    if (s->ntok < (uint64_t)T + 1) {
        uint64_t n = s->ntok;
        zb_shard_close(s);
        return zb_fail(ZB_EARG, "%s: %s split has %llu tokens, fewer than one row of T+1 = %d",
                       dir, split, (unsigned long long)n, T + 1);
    }
    zb_loader *l = zb_calloc(1, sizeof *l, "loader");
    if (!l) { zb_shard_close(s); return ZB_ENOMEM; }
    l->s = s; l->B = B; l->T = T; l->rank = dp_rank; l->size = dp_size;
    l->rows = (s->ntok - 1) / (uint64_t)T;   /* rows overlap by one token: targets of row k */
    *out = l;
    return ZB_OK;
}

void zb_loader_close(zb_loader *l) {
    if (!l) return;
    zb_shard_close(l->s);
    free(l);
}

void zb_loader_limit_vocab(zb_loader *l, int vocab, const char *who) { idlimit_lower(&l->s->ids, vocab, who); }

int zb_loader_next(zb_loader *l, int *ids, int *targets) {
    const uint32_t *tok = l->s->bin.p;
    const uint8_t *mask = l->s->mask.p;
    const int T = l->T;
    for (int b = 0; b < l->B; b++) {
        uint64_t g = l->next + (uint64_t)b * (uint64_t)l->size + (uint64_t)l->rank;
        const uint64_t start = (g % l->rows) * (uint64_t)T;
        /* every id of the row (inputs and targets) inside the vocabulary: never an unchecked
         * index into the embedding, never a silently skipped target */
        ZB_TRY(idlimit_check(&l->s->ids, tok + start, (size_t)T + 1, start));
        int *x = ids + (size_t)b * T, *y = targets + (size_t)b * T;
        for (int t = 0; t < T; t++) {
            x[t] = (int)tok[start + t];
            y[t] = mask && !mask[start + t + 1] ? -1 : (int)tok[start + t + 1];
        }
    }
    l->next += (uint64_t)l->B * (uint64_t)l->size;
    return ZB_OK;
}

zb_loader_pos zb_loader_tell(const zb_loader *l) {
    zb_loader_pos p = {l->next % l->rows, l->next / l->rows};
    return p;
}

int zb_loader_seek(zb_loader *l, zb_loader_pos p) {
    if (p.row >= l->rows)
        return zb_fail(ZB_EARG, "loader: seek to row %llu of %llu (was the shard set replaced?)",
                       (unsigned long long)p.row, (unsigned long long)l->rows);
    l->next = p.epoch * l->rows + p.row;
    return ZB_OK;
}

uint64_t zb_loader_rows(const zb_loader *l) { return l->rows; }
uint64_t zb_loader_tokens(const zb_loader *l) { return l->s->ntok; }

/* ---- preference pairs ---- */

struct zb_prefs {
    zb_map bin, idx;
    uint64_t npairs;
    zb_idlimit ids;
};

void zb_pref_close(zb_prefs *p) {
    if (!p) return;
    unmap_file(&p->bin); unmap_file(&p->idx);
    free(p);
}

int zb_pref_open(zb_prefs **out, const char *dir, const char *split) {
    *out = NULL;
    ZB_TRY(check_split(split));
    if (!host_is_le()) return zb_fail(ZB_EFORMAT, "shards are little-endian; this host is not");
    cJSON *man = NULL;
    ZB_TRY(read_manifest(dir, &man));
    int rc = ZB_OK;
    if (strcmp(manifest_kind(man), "pref"))
        rc = zb_fail(ZB_EFORMAT, "%s: not a preference-pair set (made with `zebra data --format pref`)", dir);
    zb_prefs *p = rc ? NULL : zb_calloc(1, sizeof *p, "prefs");
    if (!rc && !p) rc = ZB_ENOMEM;
    char name[64];
    uint64_t mv = 0;
    if (!rc) rc = manifest_vocab(man, dir, &mv);
    if (!rc) { snprintf(name, sizeof name, "%s.prefs.bin", split); rc = map_checked(&p->bin, man, dir, name, 4); }
    if (!rc) idlimit_init(&p->ids, mv, dir, name);
    if (!rc) { snprintf(name, sizeof name, "%s.prefs.idx", split); rc = map_checked(&p->idx, man, dir, name, 8); }
    if (!rc && (p->idx.n / 8) % 3 != 1) rc = zb_fail(ZB_EFORMAT, "%s/%s: not 3*pairs+1 offsets", dir, name);
    if (!rc) {
        p->npairs = (p->idx.n / 8) / 3;
        rc = check_offsets(p->idx.p, p->idx.n / 8, p->bin.n / 4, dir, name);
    }
    cJSON_Delete(man);
    if (rc) { zb_pref_close(p); return rc; }
    *out = p;
    return ZB_OK;
}

uint64_t zb_pref_count(const zb_prefs *p) { return p->npairs; }
void zb_pref_limit_vocab(zb_prefs *p, int vocab, const char *who) { idlimit_lower(&p->ids, vocab, who); }

int zb_pref_get(const zb_prefs *p, uint64_t i, zb_pref_pair *out) {
    if (i >= p->npairs) return zb_fail(ZB_EARG, "preference pair %llu of %llu", (unsigned long long)i, (unsigned long long)p->npairs);
    const uint64_t *o = (const uint64_t *)p->idx.p + 3 * i;
    const uint32_t *t = p->bin.p;
    out->prompt = t + o[0]; out->n_prompt = (size_t)(o[1] - o[0]);
    out->chosen = t + o[1]; out->n_chosen = (size_t)(o[2] - o[1]);
    out->rejected = t + o[2]; out->n_rejected = (size_t)(o[3] - o[2]);
    return idlimit_check(&p->ids, t + o[0], (size_t)(o[3] - o[0]), o[0]);
}

/* ---- batches of a training stage ------------------------------------------------------------ */

void zb_pref_row(const uint32_t *pr, size_t np, const uint32_t *c, size_t nc, int T, int *ids, int *tg) {
    size_t keep_p = np, over = np + nc > (size_t)T ? np + nc - (size_t)T : 0;
    size_t cut = over < (np > 0 ? np - 1 : 0) ? over : (np > 0 ? np - 1 : 0);
    keep_p = np - cut;
    const uint32_t *p0 = pr + cut;
    size_t n = keep_p + nc > (size_t)T ? (size_t)T : keep_p + nc;
    for (int t = 0; t < T; t++) {
        size_t i = (size_t)t;
        ids[t] = i < n ? (int)(i < keep_p ? p0[i] : c[i - keep_p]) : 0;
        size_t j = i + 1;   /* the token predicted at t */
        tg[t] = (j < n && j >= keep_p) ? (int)c[j - keep_p] : -1;
    }
}

struct zb_batches {
    zb_loader *ld;
    zb_prefs *pf;
    uint64_t next, npairs;   /* pairs: next global pair index (across epochs) */
    int B, T, rank, size;
};

int zb_batches_open(zb_batches **out, const char *dir, const char *split, int pairs, int B, int T, int dp_rank,
                    int dp_size) {
    zb_batches *s = zb_calloc(1, sizeof *s, "batches");
    if (!s) return ZB_ENOMEM;
    s->B = B; s->T = T; s->rank = dp_rank; s->size = dp_size;
    int rc = pairs ? zb_pref_open(&s->pf, dir, split) : zb_loader_open(&s->ld, dir, split, B, T, dp_rank, dp_size);
    if (!rc && pairs) {
        s->npairs = zb_pref_count(s->pf);
        if (s->npairs == 0) rc = zb_fail(ZB_EFORMAT, "%s: no preference pairs in split %s", dir, split);
    }
    if (rc) { zb_batches_close(s); *out = NULL; return rc; }
    *out = s;
    return ZB_OK;
}

void zb_batches_limit_vocab(zb_batches *s, int vocab, const char *who) {
    if (s->ld) zb_loader_limit_vocab(s->ld, vocab, who);
    if (s->pf) zb_pref_limit_vocab(s->pf, vocab, who);
}

void zb_batches_close(zb_batches *s) {
    if (!s) return;
    if (s->ld) zb_loader_close(s->ld);
    if (s->pf) zb_pref_close(s->pf);
    free(s);
}

int zb_batches_next(zb_batches *s, int *ids, int *tg) {
    if (s->ld) return zb_loader_next(s->ld, ids, tg);
    for (int b = 0; b < s->B; b++) {
        uint64_t i = (s->next + (uint64_t)b * s->size + s->rank) % s->npairs;
        zb_pref_pair pp;
        ZB_TRY(zb_pref_get(s->pf, i, &pp));
        zb_pref_row(pp.prompt, pp.n_prompt, pp.chosen, pp.n_chosen, s->T, ids + (size_t)b * s->T,
                    tg + (size_t)b * s->T);
        zb_pref_row(pp.prompt, pp.n_prompt, pp.rejected, pp.n_rejected, s->T, ids + (size_t)(s->B + b) * s->T,
                    tg + (size_t)(s->B + b) * s->T);
    }
    s->next += (uint64_t)s->B * s->size;
    return ZB_OK;
}

zb_loader_pos zb_batches_tell(const zb_batches *s) {
    if (s->ld) return zb_loader_tell(s->ld);
    zb_loader_pos p = {s->next % s->npairs, s->next / s->npairs};
    return p;
}

int zb_batches_seek(zb_batches *s, zb_loader_pos p) {
    if (s->ld) return zb_loader_seek(s->ld, p);
    s->next = p.epoch * s->npairs + p.row;
    return ZB_OK;
}
