/* fuzz_config.c — the model config parser (core/config.c) on config.json text: parse and
 * validate; a config that passes must survive its own JSON form (zb_config_to_json), as
 * checkpoints store it: parsed back it validates and prints the same text. */
#include "config.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    static zb_config c, c2;
    int rc = zb_config_parse(text, "config.json", &c);
    free(text);
    if (!rc) rc = zb_config_validate(&c, "config.json");
    if (rc) { fz_check_msg(rc, "config.json"); return 0; }
    char *j = zb_config_to_json(&c);
    FZ_ASSERT(j, "zb_config_to_json failed: %s", zb_errmsg());
    rc = zb_config_parse(j, "roundtrip.json", &c2);
    if (!rc) rc = zb_config_validate(&c2, "roundtrip.json");
    FZ_ASSERT(!rc, "a valid config's own JSON does not read back: %s\n%s", zb_errmsg(), j);
    char *j2 = zb_config_to_json(&c2);
    FZ_ASSERT(j2 && !strcmp(j, j2), "the JSON of a config changes when read back:\n%s\n---\n%s", j, j2 ? j2 : "(null)");
    free(j);
    free(j2);
    return 0;
}
