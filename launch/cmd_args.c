#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zb_common.h"

/* "-o", "--model": a flag; "-3" (a negative number) and "-" (stdin) are values. */
static int is_flag(const char *a) {
    return a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9') && a[1] != '.';
}

static int in_list(const char *s, const char *const *list) {
    for (int i = 0; list && list[i]; i++)
        if (strcmp(s, list[i]) == 0) return 1;
    return 0;
}

const char *zb_arg_str(int argc, char **argv, const char *name, const char *dflt) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return dflt;
}

/* ---- strict numbers --------------------------------------------------------------------- */

int zb_parse_long(const char *s, const char *what, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = s && *s && !isspace((unsigned char)*s) ? strtol(s, &end, 10) : 0;
    if (!s || !*s || isspace((unsigned char)*s) || *end || errno == ERANGE || v < lo || v > hi)
        return zb_fail(ZB_EARG, "%s must be an integer in [%ld, %ld], not '%s'", what, lo, hi, s ? s : "");
    *out = v;
    return ZB_OK;
}

int zb_parse_u64(const char *s, const char *what, uint64_t *out) {
    char *end;
    errno = 0;
    /* strtoull reads "-1" as 2^64 - 1: digits only */
    int ok = s && *s >= '0' && *s <= '9';
    unsigned long long v = ok ? strtoull(s, &end, 10) : 0;
    if (!ok || *end || errno == ERANGE)
        return zb_fail(ZB_EARG, "%s must be an integer in [0, %llu], not '%s'", what, (unsigned long long)UINT64_MAX,
                       s ? s : "");
    *out = (uint64_t)v;
    return ZB_OK;
}

int zb_parse_double(const char *s, const char *what, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = s && *s && !isspace((unsigned char)*s) ? strtod(s, &end) : 0;
    /* nan fails every comparison; inf only passes an infinite bound */
    if (!s || !*s || isspace((unsigned char)*s) || *end || !(v >= lo && v <= hi) || (errno == ERANGE && v != 0))
        return zb_fail(ZB_EARG, "%s must be a number in [%g, %g], not '%s'", what, lo, hi, s ? s : "");
    *out = v;
    return ZB_OK;
}

int zb_json_value_int(const struct cJSON *v, long lo, long hi, long *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double x = v->valuedouble;
    if (!(x >= (double)lo && x <= (double)hi) || x != floor(x)) return 0;
    *out = (long)x;
    return 1;
}

/* The value of option `name`, or NULL when absent; what: "generate: --max-new" for messages. */
static const char *arg_value(int argc, char **argv, const char *name, char *what, size_t n) {
    snprintf(what, n, "%s: %s", argv && argv[0] ? argv[0] : "zebra", name);
    return zb_arg_str(argc, argv, name, NULL);
}

int zb_arg_long(int argc, char **argv, const char *name, long dflt, long lo, long hi, long *out) {
    char what[128];
    const char *s = arg_value(argc, argv, name, what, sizeof what);
    if (!s) { *out = dflt; return ZB_OK; }
    return zb_parse_long(s, what, lo, hi, out);
}

int zb_arg_int(int argc, char **argv, const char *name, int dflt, long lo, long hi, int *out) {
    long v;
    ZB_TRY(zb_arg_long(argc, argv, name, dflt, lo < INT_MIN ? INT_MIN : lo, hi > INT_MAX ? INT_MAX : hi, &v));
    *out = (int)v;
    return ZB_OK;
}

int zb_arg_u64(int argc, char **argv, const char *name, uint64_t dflt, uint64_t *out) {
    char what[128];
    const char *s = arg_value(argc, argv, name, what, sizeof what);
    if (!s) { *out = dflt; return ZB_OK; }
    return zb_parse_u64(s, what, out);
}

int zb_arg_double(int argc, char **argv, const char *name, double dflt, double lo, double hi, double *out) {
    char what[128];
    const char *s = arg_value(argc, argv, name, what, sizeof what);
    if (!s) { *out = dflt; return ZB_OK; }
    return zb_parse_double(s, what, lo, hi, out);
}

int zb_arg_flag(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

int zb_args_check(int argc, char **argv, const char *const *value_flags,
                  const char *const *bool_flags, int max_positional) {
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_flag(a)) {
            if (in_list(a, value_flags)) {
                if (i + 1 >= argc) return zb_fail(ZB_EARG, "%s: option %s needs a value", argv[0], a);
                i++;
            } else if (!in_list(a, bool_flags)) {
                return zb_fail(ZB_EARG, "%s: unknown option %s", argv[0], a);
            }
        } else if (++npos > max_positional) {
            return zb_fail(ZB_EARG, "%s: unexpected argument '%s'", argv[0], a);
        }
    }
    return ZB_OK;
}

const char *zb_arg_pos(int argc, char **argv, const char *const *value_flags, int idx) {
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (is_flag(argv[i])) {
            if (in_list(argv[i], value_flags)) i++;
            continue;
        }
        if (npos++ == idx) return argv[i];
    }
    return NULL;
}
