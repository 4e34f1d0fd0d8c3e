/* test_chat FIXTURES — the Llama-3 chat template (core/chat.h) against HF transformers'
 * apply_chat_template (llama3-tokenizer/chat_ref.json): for every conversation, with and
 * without add_generation_prompt, the rendered text and the token ids equal HF's; without the
 * reply header (a training document) both are HF's less that header; the loss mask covers
 * exactly the assistant contents and their <|eot_id|>; and the template's trim is Python's
 * str.strip (Unicode white space). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "tokenizer.h"
#include "zb_common.h"
#include "zb_test.h"

static int check_case(const zb_tokenizer *t, const cJSON *c, int k) {
    const cJSON *ms = cJSON_GetObjectItem(c, "messages"), *ref = cJSON_GetObjectItem(c, "ids");
    const char *text_ref = cJSON_GetObjectItem(c, "text")->valuestring;
    int agp = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
    int n = cJSON_GetArraySize(ms), nref = cJSON_GetArraySize(ref);
    zb_chat_msg *m = calloc((size_t)n, sizeof *m);
    if (!m) return ZB_ENOMEM;
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(ms, i);
        m[i].role = cJSON_GetObjectItem(x, "role")->valuestring;
        m[i].content = cJSON_GetObjectItem(x, "content")->valuestring;
    }
    char *text = NULL, *turns = NULL;
    zb_chat_ids ids = {0}, tids = {0};
    int rc = zb_chat_render(t, m, n, 1, &text);
    if (!rc) rc = zb_chat_render(t, m, n, 0, &turns);
    if (!rc) rc = zb_chat_encode(t, m, n, 1, &ids);
    if (!rc) rc = zb_chat_encode(t, m, n, 0, &tids);
    if (!rc) {
        zb_check(!strcmp(text, text_ref), "case %d (add_generation_prompt %d): the rendered text is HF's", k, agp);
        int same = ids.n == (size_t)nref;
        for (int i = 0; same && i < nref; i++) same = ids.ids[i] == cJSON_GetArrayItem(ref, i)->valueint;
        zb_check(same, "case %d (add_generation_prompt %d): the %d ids are HF's (got %zu)", k, agp, nref, ids.n);
        const char *hdr = "<|start_header_id|>assistant<|end_header_id|>\n\n";
        size_t tl = strlen(turns);
        zb_check(tl + strlen(hdr) == strlen(text_ref) && !strncmp(turns, text_ref, tl) && !strcmp(text_ref + tl, hdr),
                 "case %d: without the reply header, the text is HF's less that header", k);
        int prefix = tids.n + 4 == (size_t)nref;   /* <|start_header_id|> assistant <|end_header_id|> \n\n */
        for (size_t i = 0; prefix && i < tids.n; i++) prefix = tids.ids[i] == ids.ids[i];
        zb_check(prefix, "case %d: without the reply header, the ids are HF's less its 4", k);
        /* the mask: the assistant contents and their <|eot_id|> */
        zb_chat_ids want = {0};
        for (int i = 0; i < n && !rc; i++)
            if (!strcmp(m[i].role, "assistant")) rc = zb_chat_encode_content(t, m[i].content, 1, &want);
        size_t on = 0, run = 0, matched = 0;
        for (size_t i = 0; i < ids.n; i++) on += ids.mask[i];
        for (size_t i = 0; i < ids.n && run < want.n; i++)   /* the masked ids, in order, are exactly these */
            if (ids.mask[i]) matched += ids.ids[i] == want.ids[run++];
        zb_check(!rc && on == want.n && matched == want.n, "case %d: the loss mask is the %zu assistant tokens", k,
                 want.n);
        zb_chat_ids_free(&want);
    }
    free(text);
    free(turns);
    zb_chat_ids_free(&ids);
    zb_chat_ids_free(&tids);
    free(m);
    return rc;
}

static void check_trim(void) {
    static const struct { const char *in, *out; } cases[] = {
        {"  a b \n\t", "a b"}, {"\xe3\x80\x80x\xc2\xa0", "x"},           /* U+3000, U+00A0 */
        {"\xe2\x80\x83y\xe2\x80\xa8", "y"},                               /* U+2003, U+2028 */
        {"\x1f z \x0b", "z"}, {"\xe2\x80\x8bq", "\xe2\x80\x8bq"},        /* U+200B is not white space */
        {"\xc3\xa9", "\xc3\xa9"}, {" \x80", "\x80"}, {"", ""}, {" \n ", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *s = cases[i].in;
        size_t n = strlen(s);
        zb_chat_trim(&s, &n);
        zb_check(n == strlen(cases[i].out) && !memcmp(s, cases[i].out, n), "trim case %zu: Python's str.strip", i);
    }
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 2) { fprintf(stderr, "usage: %s FIXTURES\n", argv[0]); return 2; }
    char tp[4096], rp[4096];
    snprintf(tp, sizeof tp, "%s/llama3-tokenizer/tokenizer.json", argv[1]);
    snprintf(rp, sizeof rp, "%s/llama3-tokenizer/chat_ref.json", argv[1]);
    zb_tokenizer *t = NULL;
    ZB_TEST_OK(zb_tokenizer_load(&t, tp));
    char *txt = NULL;
    size_t len = 0;
    ZB_TEST_OK(zb_read_file(rp, &txt, &len));
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    zb_check(root != NULL, "%s parses", rp);
    int k = 0;
    const cJSON *c;
    if (root) cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) ZB_TEST_OK(check_case(t, c, k++));
    zb_check(k == 12, "12 cases (6 conversations x add_generation_prompt)");
    check_trim();
    cJSON_Delete(root);
    zb_tokenizer_free(t);
    return zb_test_finish();
}
