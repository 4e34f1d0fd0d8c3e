#include "zb_common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/* The one piece of module state: the last error message of this process (each MPI rank
 * is its own process). */
static char zb_msg[1024];

int zb_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(zb_msg, sizeof zb_msg, fmt, ap);
    va_end(ap);
    for (char *p = zb_msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';   /* one line, always */
    return code;
}

const char *zb_errmsg(void) { return zb_msg; }

int zb_fail_prefix(int code, const char *prefix) {
    char tmp[sizeof zb_msg];
    memcpy(tmp, zb_msg, sizeof tmp);
    size_t n = strlen(prefix);
    if (n > sizeof zb_msg / 2) n = sizeof zb_msg / 2;   /* keep room for the message */
    memcpy(zb_msg, prefix, n);
    zb_msg[n] = ':';
    zb_msg[n + 1] = ' ';
    size_t rest = sizeof zb_msg - n - 3, len = strlen(tmp);
    memcpy(zb_msg + n + 2, tmp, len < rest ? len : rest);
    zb_msg[n + 2 + (len < rest ? len : rest)] = 0;
    return code;
}

void *zb_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) zb_fail(ZB_ENOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return p;
}

void *zb_calloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) zb_fail(ZB_ENOMEM, "out of memory allocating %zu x %zu bytes for %s", n, size, what);
    return p;
}

static int kind_check(const struct stat *st, const char *path, int need_regular) {
    if (S_ISDIR(st->st_mode)) return zb_fail(ZB_EIO, "%s: is a directory, expected a file", path);
    if (need_regular && !S_ISREG(st->st_mode)) return zb_fail(ZB_EIO, "%s: not a regular file", path);
    return ZB_OK;
}

int zb_path_is_file(const char *path, int need_regular) {
    struct stat st;
    if (stat(path, &st) != 0) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    return kind_check(&st, path, need_regular);
}

int zb_fd_is_file(int fd, const char *path, int need_regular) {
    struct stat st;
    if (fstat(fd, &st) != 0) return zb_fail(ZB_EIO, "%s: cannot stat (%s)", path, strerror(errno));
    return kind_check(&st, path, need_regular);
}

void zb_fsync_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int zb_write_all_fsync(int fd, const void *p, size_t n, const char *path) {
    const char *b = p;
    while (n > 0) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return zb_fail(ZB_EIO, "%s: write failed (%s)", path, k < 0 ? strerror(errno) : "no progress");
        b += k;
        n -= (size_t)k;
    }
    if (fsync(fd) != 0) return zb_fail(ZB_EIO, "%s: cannot flush to disk (%s)", path, strerror(errno));
    return ZB_OK;
}

const char *zb_json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int zb_ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int zb_is_config_json(const char *path) {
    struct stat st;
    return zb_ends_with(path, ".json") && strlen(path) > 5 && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int zb_read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    /* a directory opens for reading on Linux and reports a size of LONG_MAX */
    int krc = zb_fd_is_file(fileno(f), path, 1);
    if (krc) { fclose(f); return krc; }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return zb_fail(ZB_EIO, "%s: cannot seek", path); }
    long n = ftell(f);
    if (n < 0) { fclose(f); return zb_fail(ZB_EIO, "%s: cannot tell size", path); }
    rewind(f);
    char *buf = zb_malloc((size_t)n + 1, path);
    if (!buf) { fclose(f); return ZB_ENOMEM; }
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf); fclose(f);
        return zb_fail(ZB_EIO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (len) *len = (size_t)n;
    return ZB_OK;
}

double zb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

float zb_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t zb_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);   /* round to nearest even */
    return (uint16_t)(u >> 16);
}

void zb_bf16_to_f32_n(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = zb_bf16_to_f32(src[i]);
}

void zb_f32_to_bf16_n(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = zb_f32_to_bf16(src[i]);
}

float zb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else {                              /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t zb_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffffu;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = 1u << (shift - 1), rem = man & ((1u << shift) - 1), r = man >> shift;
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (uint32_t)(exp << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

void zb_rng_seed(zb_rng *r, uint64_t seed) {
    r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (!r->s) r->s = 1;
    for (int i = 0; i < 4; i++) zb_rng_u64(r);
}

uint64_t zb_rng_u64(zb_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

float zb_rng_uniform(zb_rng *r) { return (float)((zb_rng_u64(r) >> 40) * (1.0 / 16777216.0)); }

float zb_hash_uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;   /* splitmix64's finaliser */
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((z >> 40) * (1.0 / 16777216.0));
}

float zb_rng_normal(zb_rng *r) {
    double u1 = ((zb_rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (zb_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
