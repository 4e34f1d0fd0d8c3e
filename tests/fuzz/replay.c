/* replay.c — main() for a fuzz harness outside libFuzzer: feeds it every file named on the
 * command line (a directory: every regular file in it, in name order), as libFuzzer would
 * replay a corpus. ctest runs it on the seeds and on tests/fuzz/regress/<format>/, the inputs
 * that once crashed a parser, so that they are checked by every build (the ASan one too). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* optional, as with libFuzzer: one-time setup before the first input */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "replay: %s: cannot open\n", path); return 1; }
    size_t cap = 1 << 16, n = 0, k;
    uint8_t *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) { uint8_t *nb = realloc(buf, cap *= 2); if (!nb) { free(buf); buf = NULL; } else buf = nb; }
    }
    fclose(f);
    if (!buf) { fprintf(stderr, "replay: %s: out of memory\n", path); return 1; }
    /* an exact-size copy, so that ASan catches a read one past the input */
    uint8_t *in = malloc(n ? n : 1);
    if (in && n) memcpy(in, buf, n);
    free(buf);
    if (!in) return 1;
    LLVMFuzzerTestOneInput(in, n);
    free(in);
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    int n = 0, bad = 0;
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) { fprintf(stderr, "replay: %s: not found\n", argv[i]); bad = 1; continue; }
        if (!S_ISDIR(sb.st_mode)) { bad |= replay_file(argv[i]); n++; continue; }
        DIR *d = opendir(argv[i]);
        if (!d) { fprintf(stderr, "replay: %s: cannot list\n", argv[i]); bad = 1; continue; }
        char **names = NULL;
        int nn = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            if (nn == cap) { cap = cap ? 2 * cap : 64; names = realloc(names, (size_t)cap * sizeof *names); }
            if (!names) return 1;
            names[nn] = malloc(strlen(argv[i]) + strlen(e->d_name) + 2);
            sprintf(names[nn++], "%s/%s", argv[i], e->d_name);
        }
        closedir(d);
        if (nn > 1) qsort(names, (size_t)nn, sizeof *names, cmp_str); /* qsort(NULL, 0) is UB */
        for (int k = 0; k < nn; k++) {
            if (stat(names[k], &sb) == 0 && S_ISREG(sb.st_mode)) { bad |= replay_file(names[k]); n++; }
            free(names[k]);
        }
        free(names);
    }
    printf("replayed %d inputs%s\n", n, bad ? " (some could not be read)" : "");
    return bad;
}
