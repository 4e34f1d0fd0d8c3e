/* fuzz_common.h — what the libFuzzer harnesses share (one harness per input format).
 *
 * Each harness defines LLVMFuzzerTestOneInput and calls the project's own parsing entry points
 * on the input. Readers that take a path get the input written into a scratch directory of
 * this process (made once, removed at exit). The same sources are built twice: with libFuzzer
 * (-DZB_FUZZ=ON, CC=clang) to search for crashes, and with replay.c as main() in the normal
 * build, where ctest replays the seeds and every input that once crashed (tests/fuzz/regress).
 *
 * Multi-file inputs (a shard set, a tokenizer with its tokenizer_config.json) are one byte
 * string cut into files at lines "@@@ <name>\n": the bytes before the first such line are the
 * harness's default file; a name outside the harness's list is ignored. */
#ifndef ZB_FUZZ_COMMON_H
#define ZB_FUZZ_COMMON_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zb_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the input broke: print and abort, so that libFuzzer keeps the input as a crash. */
#define FZ_ASSERT(cond, ...) do { if (!(cond)) { fprintf(stderr, "fuzz: property violated: " __VA_ARGS__); \
    fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__); abort(); } } while (0)

static char fz_dir_[256];

static inline void fz_cleanup(void) {
    if (!fz_dir_[0]) return;
    DIR *d = opendir(fz_dir_);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", fz_dir_, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(fz_dir_);
}

/* This process's scratch directory (under $TMPDIR, else /dev/shm: a file per input on a disk
 * would cost more than most parses). */
static inline const char *fz_dir(void) {
    if (!fz_dir_[0]) {
        const char *t = getenv("TMPDIR");
        if (!t || !*t) t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fz_dir_, sizeof fz_dir_, "%s/zb_fuzz_XXXXXX", t);
        if (!mkdtemp(fz_dir_)) { perror("fuzz: mkdtemp"); abort(); }
        atexit(fz_cleanup);
    }
    return fz_dir_;
}

/* Path of file `name` in the scratch directory (a static buffer per call site is not enough
 * when several are live: the caller passes its own). */
static inline const char *fz_path(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", fz_dir(), name);
    return buf;
}

/* Write data[0..n) as file `name` of the scratch directory; returns its path (in buf). */
static inline const char *fz_write(char *buf, size_t cap, const char *name, const void *data, size_t n) {
    fz_path(buf, cap, name);
    FILE *f = fopen(buf, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) { perror("fuzz: write"); abort(); }
    return buf;
}

static inline void fz_remove(const char *name) {
    char p[512];
    unlink(fz_path(p, sizeof p, name));
}

/* A failing parser must leave one line that names the file it read (`what`, a path or a part
 * of one such as the directory). */
static inline void fz_check_msg(int rc, const char *what) {
    const char *m = zb_errmsg();
    FZ_ASSERT(rc > 0, "error code %d is not a zb status", rc);
    FZ_ASSERT(m[0], "failed (code %d) without a message", rc);
    FZ_ASSERT(!strchr(m, '\n'), "message on several lines: %s", m);
    FZ_ASSERT(rc == ZB_ENOMEM || strstr(m, what), "message does not name '%s': %s", what, m);
}

/* Start of the next line "@@@ <name>" at or after `from`, n if none. */
static inline size_t fz_next_mark(const uint8_t *d, size_t n, size_t from) {
    for (size_t j = from; j + 4 <= n; j++)
        if ((j == 0 || d[j - 1] == '\n') && !memcmp(d + j, "@@@ ", 4)) return j;
    return n;
}

/* Cut a multi-file input (see the top of this file) into the scratch directory. names[0] is the
 * default file; every listed name absent from the input is removed, so that no file of an
 * earlier input is left behind. */
static inline void fz_write_files(const uint8_t *d, size_t n, const char *const *names) {
    char p[512];
    int seen[16] = {0}, cur = 0, nn = 0;
    while (names[nn] && nn < 16) nn++;
    size_t body = 0;
    for (;;) {
        size_t m = fz_next_mark(d, n, body);
        size_t end = m < n && m > body ? m - 1 : m;   /* the newline before the marker is not data */
        if (cur >= 0) { fz_write(p, sizeof p, names[cur], d + body, end - body); seen[cur] = 1; }
        if (m >= n) break;
        const uint8_t *nl = memchr(d + m + 4, '\n', n - m - 4);
        size_t ne = nl ? (size_t)(nl - d) : n, len = ne - m - 4;
        cur = -1;
        for (int k = 0; k < nn; k++)
            if (strlen(names[k]) == len && !memcmp(names[k], d + m + 4, len)) cur = k;
        body = nl ? ne + 1 : n;
    }
    for (int k = 0; k < nn; k++) if (!seen[k]) fz_remove(names[k]);
}

/* Touch every byte (so that ASan sees a read outside what was mapped / allocated). */
static inline unsigned fz_touch(const void *p, size_t n) {
    const volatile uint8_t *b = p;
    unsigned s = 0;
    for (size_t i = 0; i < n; i++) s += b[i];
    return s;
}

#endif
