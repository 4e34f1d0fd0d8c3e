/* store_compare.c — `zb_store_compare A B`: every tensor of model B (dir or .h5) is in model
 * A with the same dtype, shape and bytes, and both configs are identical. Used by
 * cli_import.sh to check what `zebra import` wrote. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "zb_common.h"
#include "zb_test.h"

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc != 3) { fprintf(stderr, "usage: zb_store_compare A B\n"); return 2; }
    zb_store *a = NULL, *b = NULL;
    ZB_TEST_OK(zb_store_open(&a, argv[1]));
    ZB_TEST_OK(zb_store_open(&b, argv[2]));
    zb_check(!memcmp(zb_store_config(a), zb_store_config(b), sizeof(zb_config)), "identical config");
    int n = zb_store_count(b), same = 0;
    for (int i = 0; i < n; i++) {
        const char *name = zb_store_name_at(b, i);
        int k = zb_store_find(a, name), nda, ndb;
        int64_t sa[ZB_MAX_DIMS], sb[ZB_MAX_DIMS], numel = 1;
        zb_dtype da, db;
        if (!zb_check(k >= 0, "%s present in %s", name, argv[1])) continue;
        zb_store_info_at(a, k, &nda, sa, &da);
        zb_store_info_at(b, i, &ndb, sb, &db);
        if (!zb_check(nda == ndb && da == db && !memcmp(sa, sb, (size_t)nda * sizeof *sa), "%s: dtype and shape", name))
            continue;
        for (int d = 0; d < nda; d++) numel *= sa[d];
        size_t nb = (size_t)numel * zb_dtype_size(da);
        char *x = malloc(nb + 1), *y = malloc(nb + 1);
        int ok = !zb_store_read_raw(a, name, x) && !zb_store_read_raw(b, name, y) && !memcmp(x, y, nb);
        same += zb_check(ok, "%s: bit-exact", name);
        free(x);
        free(y);
    }
    printf("%d of %d tensors bit-exact\n", same, n);
    zb_store_close(a);
    zb_store_close(b);
    return zb_test_finish();
}
