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

int zb_arg_int(int argc, char **argv, const char *name, int dflt) {
    const char *s = zb_arg_str(argc, argv, name, NULL);
    return s ? atoi(s) : dflt;
}

double zb_arg_double(int argc, char **argv, const char *name, double dflt) {
    const char *s = zb_arg_str(argc, argv, name, NULL);
    return s ? atof(s) : dflt;
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
