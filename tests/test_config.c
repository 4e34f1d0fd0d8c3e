/* test_config.c — config parsing (HF llama hub form, rope_parameters form, deepseek_v3 dense,
 * zebra hybrid), the JSON round trip, validation, and clear errors on malformed configs.
 * Usage: test_config FIXTURES_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "zb_common.h"
#include "zb_test.h"

/* parse(to_json(c)) == c, field by field (both sides come from parse, which zeroes c). */
static void round_trip(const char *what, const zb_config *c) {
    char *j = zb_config_to_json(c);
    if (!zb_check(j != NULL, "%s: to_json", what)) return;
    zb_config d;
    int rc = zb_config_parse(j, "roundtrip.json", &d);
    zb_check(rc == 0, "%s: re-parse to_json output: %s", what, rc ? zb_errmsg() : "ok");
    if (rc) { printf("%s\n", j); free(j); return; }
    zb_check(!strcmp(c->model_type, d.model_type), "%s: model_type %s == %s", what, c->model_type, d.model_type);
    zb_check(c->d_model == d.d_model && c->n_layers == d.n_layers && c->vocab == d.vocab && c->ffn == d.ffn,
             "%s: sizes", what);
    zb_check(c->n_heads == d.n_heads && c->n_kv_heads == d.n_kv_heads && c->head_dim == d.head_dim, "%s: heads", what);
    zb_check(c->rms_eps == d.rms_eps && c->tie_embeddings == d.tie_embeddings && c->max_pos == d.max_pos &&
             c->bos_id == d.bos_id, "%s: eps/tie/max_pos/bos", what);
    zb_check(c->n_eos == d.n_eos && !memcmp(c->eos_ids, d.eos_ids, sizeof c->eos_ids), "%s: eos", what);
    zb_check(!memcmp(&c->rope, &d.rope, sizeof c->rope), "%s: rope", what);
    zb_check(!memcmp(&c->mla, &d.mla, sizeof c->mla), "%s: mla dims", what);
    zb_check(!memcmp(&c->mamba, &d.mamba, sizeof c->mamba), "%s: mamba2 dims", what);
    zb_check(!memcmp(c->kinds, d.kinds, sizeof c->kinds), "%s: layer kinds", what);
    zb_check(c->teacher_layers == d.teacher_layers && c->teacher_kv_heads == d.teacher_kv_heads &&
             c->teacher_head_dim == d.teacher_head_dim, "%s: teacher", what);
    zb_check(!memcmp(c, &d, sizeof d), "%s: whole struct identical", what);
    free(j);
}

static void expect_err(const char *what, const char *json, int code, const char *needle) {
    zb_config c;
    int rc = zb_config_parse(json, "bad_config.json", &c);
    const char *m = zb_errmsg();
    zb_check(rc == code, "%s: rc %d (want %d)", what, rc, code);
    zb_check(strstr(m, "bad_config.json") != NULL, "%s: message names the file: %s", what, m);
    zb_check(strstr(m, needle) != NULL, "%s: message mentions '%s': %s", what, needle, m);
    if (getenv("ZB_TEST_VERBOSE")) printf("  %s -> %s\n", what, m);
}

static void expect_invalid(const char *what, const zb_config *c, const char *needle) {
    int rc = zb_config_validate(c, "v.json");
    zb_check(rc != 0 && strstr(zb_errmsg(), "v.json") && strstr(zb_errmsg(), needle), "%s: invalid: %s", what,
             zb_errmsg());
}

#define LLAMA_KEYS "\"hidden_size\": 64, \"num_hidden_layers\": 4, \"vocab_size\": 300, \"intermediate_size\": 128, " \
                   "\"num_attention_heads\": 8, \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-5"

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    const char *fx = argc > 1 ? argv[1] : "../shared/fixtures";
    char path[1024];
    zb_config c;

    /* (a) HF llama hub form */
    snprintf(path, sizeof path, "%s/hf-llama-tiny/config.json", fx);
    if (zb_check(zb_config_load(path, &c) == 0, "load hf-llama-tiny: %s", zb_errmsg())) {
        zb_check(!strcmp(c.model_type, "llama"), "model_type llama");
        zb_check(c.d_model == 64 && c.n_layers == 3 && c.vocab == 256 && c.ffn == 160, "llama sizes");
        zb_check(c.n_heads == 4 && c.n_kv_heads == 2 && c.head_dim == 16, "llama heads 4/2/16");
        zb_check(c.rms_eps == 1e-5f && c.tie_embeddings == 1 && c.max_pos == 131072, "eps, tied, max_pos");
        zb_check(c.bos_id == 1 && c.n_eos == 1 && c.eos_ids[0] == 2, "bos/eos");
        zb_check(c.rope.type == ZB_ROPE_LLAMA3 && c.rope.theta == 500000.f && c.rope.factor == 32.f &&
                 c.rope.low_freq_factor == 1.f && c.rope.high_freq_factor == 4.f && c.rope.original_max_pos == 8192,
                 "llama3 rope scaling");
        int all = 1;
        for (int i = 0; i < c.n_layers; i++) all &= c.kinds[i] == ZB_LAYER_ATTN;
        zb_check(all, "all layers attention");
        zb_check(zb_config_validate(&c, path) == 0, "validate llama: %s", zb_errmsg());
        round_trip("llama hub", &c);
        char *j = zb_config_to_json(&c);
        zb_check(j && strstr(j, "\"model_type\": \"llama\"") && strstr(j, "\"rope_scaling\""), "llama written as HF llama");
        free(j);
    }

    /* (b) deepseek_v3 dense = all MLA */
    snprintf(path, sizeof path, "%s/hf-mla-tiny/config.json", fx);
    if (zb_check(zb_config_load(path, &c) == 0, "load hf-mla-tiny: %s", zb_errmsg())) {
        zb_check(!strcmp(c.model_type, "deepseek_v3"), "model_type deepseek_v3");
        zb_check(c.d_model == 64 && c.n_layers == 2 && c.vocab == 256 && c.ffn == 160 && c.n_heads == 4, "mla sizes");
        const zb_mla_dims *m = &c.mla;
        zb_check(m->n_heads == 4 && m->q_lora_rank == 0 && m->q_norm == 0 && m->kv_lora_rank == 32 && m->kv_norm == 1 &&
                 m->qk_nope == 16 && m->qk_rope == 8 && m->v_head_dim == 16 && m->kv_heads == 4 &&
                 m->rope_interleave == 0, "mla dims");
        zb_check(c.rope.type == ZB_ROPE_DEFAULT && c.rope.theta == 10000.f, "rope_parameters default theta 1e4");
        zb_check(c.tie_embeddings == 0 && c.kinds[0] == ZB_LAYER_MLA && c.kinds[1] == ZB_LAYER_MLA, "untied, all MLA");
        zb_check(zb_config_validate(&c, path) == 0, "validate mla: %s", zb_errmsg());
        round_trip("deepseek_v3", &c);
    }

    /* rope_parameters form (transformers 5), defaults for head_dim / kv heads / tie, eos list */
    const char *rp = "{\"model_type\": \"llama\", \"hidden_size\": 96, \"num_hidden_layers\": 2, \"vocab_size\": 500,"
                     " \"intermediate_size\": 256, \"num_attention_heads\": 6, \"max_position_embeddings\": 4096,"
                     " \"eos_token_id\": [128001, 128008, 128009], \"bos_token_id\": null,"
                     " \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", \"factor\": 8.0,"
                     " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}";
    if (zb_check(zb_config_parse(rp, "rp.json", &c) == 0, "rope_parameters form: %s", zb_errmsg())) {
        zb_check(c.head_dim == 16 && c.n_kv_heads == 6 && c.tie_embeddings == 0, "defaults head_dim=16, kv=heads, untied");
        zb_check(c.rope.type == ZB_ROPE_LLAMA3 && c.rope.theta == 500000.f && c.rope.factor == 8.f &&
                 c.rope.original_max_pos == 8192, "rope_parameters llama3");
        zb_check(c.n_eos == 3 && c.eos_ids[2] == 128009 && c.bos_id == -1, "eos list, bos null");
        round_trip("rope_parameters", &c);
        /* vocab 500 < eos ids: validation must say so */
        expect_invalid("eos outside vocab", &c, "eos_token_id");
    }
    /* legacy "type" key in rope_scaling */
    const char *legacy = "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"rope_theta\": 10000,"
                         " \"rope_scaling\": {\"type\": \"llama3\", \"factor\": 2, \"low_freq_factor\": 1,"
                         " \"high_freq_factor\": 4, \"original_max_position_embeddings\": 1024}}";
    zb_check(zb_config_parse(legacy, "legacy.json", &c) == 0 && c.rope.type == ZB_ROPE_LLAMA3 && c.rope.factor == 2.f,
             "rope_scaling with legacy 'type' key");

    /* (c) zebra hybrid */
    const char *zb = "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"head_dim\": 8, \"tie_word_embeddings\": true,"
                     " \"rope_theta\": 500000, \"rope_scaling\": null,"
                     " \"layer_kinds\": [\"mla\", \"mamba2\", \"attention\", \"mla\"],"
                     " \"mla\": {\"n_heads\": 8, \"q_lora_rank\": 48, \"q_norm\": true, \"kv_lora_rank\": 16,"
                     " \"kv_norm\": false, \"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 4, \"v_head_dim\": 8,"
                     " \"kv_heads\": 2, \"rope_interleave\": true},"
                     " \"mamba2\": {\"d_inner\": 64, \"nheads\": 8, \"headdim\": 8, \"d_state\": 8, \"x_groups\": 2,"
                     " \"b_groups\": 2, \"c_groups\": 8, \"conv_kernel\": 4, \"chunk_size\": 16,"
                     " \"norm_group_size\": 8, \"time_step_limit\": [0.0, null], \"conv_bias\": true},"
                     " \"teacher\": {\"num_hidden_layers\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8}}";
    if (zb_check(zb_config_parse(zb, "zebra.json", &c) == 0, "zebra hybrid: %s", zb_errmsg())) {
        zb_check(c.kinds[0] == ZB_LAYER_MLA && c.kinds[1] == ZB_LAYER_MAMBA2 && c.kinds[2] == ZB_LAYER_ATTN &&
                 c.kinds[3] == ZB_LAYER_MLA, "layer kinds");
        zb_check(c.mla.q_lora_rank == 48 && c.mla.q_norm && !c.mla.kv_norm && c.mla.kv_heads == 2 &&
                 c.mla.rope_interleave, "zebra mla dims");
        zb_check(c.mamba.d_inner == 64 && c.mamba.x_groups == 2 && c.mamba.c_groups == 8 && c.mamba.norm_group == 8 &&
                 c.mamba.dt_min == 0 && isinf(c.mamba.dt_max) && c.mamba.conv_bias && c.mamba.chunk == 16,
                 "zebra mamba2 dims, dt max inf");
        zb_check(c.teacher_layers == 4 && c.teacher_kv_heads == 2 && c.teacher_head_dim == 8, "teacher");
        zb_check(!memcmp(&c.mla.rope, &c.rope, sizeof c.rope), "no mla rope keys: the MLA inherits the model's rope");
        zb_check(zb_config_validate(&c, "zebra.json") == 0, "validate zebra: %s", zb_errmsg());
        round_trip("zebra hybrid", &c);
        zb_config bad = c;
        bad.mamba.d_inner = 60;
        expect_invalid("d_inner != nheads*headdim", &bad, "d_inner");
        bad = c;
        bad.mamba.norm_group = 7;
        expect_invalid("norm group does not divide", &bad, "norm_group_size");
        bad = c;
        bad.mamba.b_groups = 3;
        expect_invalid("b_groups does not divide", &bad, "b_groups");
        bad = c;
        bad.mla.kv_heads = 3;
        expect_invalid("mla kv_heads does not divide", &bad, "kv_heads");
        bad = c;
        bad.n_kv_heads = 3;
        expect_invalid("kv heads do not divide", &bad, "num_key_value_heads");
        bad = c;
        bad.mamba.dt_max = 0.5f;
        bad.mamba.dt_min = 0.001f;
        zb_check(zb_config_validate(&bad, "v.json") == 0, "finite dt limit valid");
        round_trip("finite dt limit", &bad);
        /* a deepseek_v3 config turned hybrid is written in zebra form */
        bad = c;
        snprintf(bad.model_type, sizeof bad.model_type, "llama");
        char *j = zb_config_to_json(&bad);
        zb_check(j && strstr(j, "\"zebra\""), "hybrid kinds force the zebra form");
        free(j);
    }
    /* the MLA's own rope (SPEC §3): YaRN with DeepSeek's defaults, next to the model's llama3 */
    const char *zy = "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"rope_theta\": 500000, \"rope_scaling\": {"
                     "\"rope_type\": \"llama3\", \"factor\": 32, \"low_freq_factor\": 1, \"high_freq_factor\": 4,"
                     " \"original_max_position_embeddings\": 8192}, \"layer_kinds\": [\"mla\", \"attention\","
                     " \"attention\", \"mla\"], \"mla\": {\"kv_lora_rank\": 16, \"qk_nope_head_dim\": 4,"
                     " \"qk_rope_head_dim\": 4, \"v_head_dim\": 8, \"rope_scaling\": {\"rope_type\": \"yarn\","
                     " \"factor\": 32, \"original_max_position_embeddings\": 8192}}}";
    if (zb_check(zb_config_parse(zy, "zy.json", &c) == 0, "zebra with YaRN MLA: %s", zb_errmsg())) {
        const zb_rope_cfg *r = &c.mla.rope;
        zb_check(r->type == ZB_ROPE_YARN && r->theta == 500000.f && r->factor == 32.f && r->original_max_pos == 8192 &&
                 r->beta_fast == 32.f && r->beta_slow == 1.f && r->mscale == 1.f && r->mscale_all_dim == 0.f,
                 "mla yarn: theta from the model, DeepSeek defaults beta 32 / 1, mscale 1, mscale_all_dim 0");
        zb_check(c.rope.type == ZB_ROPE_LLAMA3, "the attention layers keep llama3");
        zb_check(zb_config_validate(&c, "zy.json") == 0, "validate: %s", zb_errmsg());
        round_trip("zebra YaRN MLA", &c);
        zb_config bad = c;
        bad.mla.rope.factor = 0.5f;
        expect_invalid("yarn factor < 1", &bad, "mla.yarn");
        bad = c;
        bad.mla.rope = (zb_rope_cfg){.type = ZB_ROPE_DEFAULT, .theta = 10000.f};   /* mla.rope_scaling null */
        round_trip("zebra unscaled MLA rope", &bad);
    }
    expect_err("unknown mla rope type", "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"mla\", \"mla\","
               " \"mla\", \"mla\"], \"mla\": {\"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 4,"
               " \"v_head_dim\": 4, \"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2}}}", ZB_EFORMAT,
               "'mla.rope_scaling.rope_type': rope type 'dynamic' is not supported");
    const char *zb_str_inf = "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"mamba2\", \"mamba2\","
                             " \"mamba2\", \"attention\"], \"mamba2\": {\"nheads\": 8, \"headdim\": 8, \"d_state\": 16,"
                             " \"n_groups\": 2, \"time_step_limit\": [0.0, \"inf\"]}}";
    if (zb_check(zb_config_parse(zb_str_inf, "z2.json", &c) == 0, "zebra mamba2 defaults: %s", zb_errmsg())) {
        zb_check(c.mamba.d_inner == 64 && c.mamba.x_groups == 8 && c.mamba.b_groups == 2 && c.mamba.c_groups == 2 &&
                 c.mamba.conv_k == 4 && c.mamba.norm_group == 64 && isinf(c.mamba.dt_max) && c.mamba.conv_bias,
                 "mamba2 defaults (HF layout from n_groups), \"inf\" max");
        zb_check(zb_config_validate(&c, "z2.json") == 0, "validate: %s", zb_errmsg());
        round_trip("zebra mamba-only", &c);
    }

    /* malformed configs: one line naming the file and the key */
    expect_err("malformed JSON", "{\"model_type\": \"llama\", ", ZB_EFORMAT, "malformed JSON");
    expect_err("not an object", "[1, 2]", ZB_EFORMAT, "object");
    expect_err("missing model_type", "{\"hidden_size\": 4}", ZB_EFORMAT, "'model_type'");
    expect_err("unknown model_type", "{\"model_type\": \"gpt2\"}", ZB_EFORMAT, "gpt2");
    expect_err("missing hidden_size", "{\"model_type\": \"llama\", \"num_hidden_layers\": 2}", ZB_EFORMAT, "'hidden_size'");
    expect_err("wrong type", "{\"model_type\": \"llama\", \"hidden_size\": \"64\", \"num_hidden_layers\": 2}", ZB_EFORMAT,
               "'hidden_size' must be an integer");
    expect_err("fractional int", "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"head_dim\": 8.5}", ZB_EFORMAT, "'head_dim'");
    expect_err("bad tie", "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"tie_word_embeddings\": \"yes\"}", ZB_EFORMAT,
               "'tie_word_embeddings'");
    expect_err("yarn without factor", "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"rope_scaling\": {\"rope_type\": "
               "\"yarn\"}}", ZB_EFORMAT, "'rope_scaling.factor'");
    expect_err("unknown rope type", "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"rope_scaling\": {\"rope_type\": "
               "\"longrope\"}}", ZB_EFORMAT, "'longrope' is not supported");
    expect_err("llama3 missing factor", "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"rope_scaling\": {\"rope_type\": "
               "\"llama3\", \"low_freq_factor\": 1, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 8}}",
               ZB_EFORMAT, "'rope_scaling.factor'");
    expect_err("eos strings", "{\"model_type\": \"llama\", " LLAMA_KEYS ", \"eos_token_id\": [\"a\"]}", ZB_EFORMAT,
               "'eos_token_id'");
    expect_err("deepseek MoE", "{\"model_type\": \"deepseek_v3\", " LLAMA_KEYS ", \"kv_lora_rank\": 8, "
               "\"qk_nope_head_dim\": 4, \"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"first_k_dense_replace\": 1, "
               "\"n_routed_experts\": 4}", ZB_EFORMAT, "MoE layers are not supported");
    expect_err("deepseek missing kv_lora_rank", "{\"model_type\": \"deepseek_v3\", " LLAMA_KEYS ", "
               "\"first_k_dense_replace\": 4}", ZB_EFORMAT, "'kv_lora_rank'");
    expect_err("zebra missing layer_kinds", "{\"model_type\": \"zebra\", " LLAMA_KEYS "}", ZB_EFORMAT, "'layer_kinds'");
    expect_err("zebra kinds length", "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"attention\"]}",
               ZB_EFORMAT, "'layer_kinds' has 1 entries");
    expect_err("zebra unknown kind", "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"attention\", "
               "\"rwkv\", \"attention\", \"attention\"]}", ZB_EFORMAT, "'layer_kinds[1]'");
    expect_err("zebra missing mla", "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"mla\", \"mla\", "
               "\"mla\", \"mla\"]}", ZB_EFORMAT, "'mla'");
    expect_err("zebra mla missing key", "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"mla\", \"mla\", "
               "\"mla\", \"mla\"], \"mla\": {\"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4, \"v_head_dim\": 4}}",
               ZB_EFORMAT, "'mla.qk_rope_head_dim'");
    expect_err("zebra bad dt limit", "{\"model_type\": \"zebra\", " LLAMA_KEYS ", \"layer_kinds\": [\"mamba2\", "
               "\"mamba2\", \"mamba2\", \"mamba2\"], \"mamba2\": {\"nheads\": 8, \"headdim\": 8, \"d_state\": 8, "
               "\"time_step_limit\": [0, \"big\"]}}", ZB_EFORMAT, "'mamba2.time_step_limit'");
    expect_err("too many layers", "{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 100000, "
               "\"vocab_size\": 8, \"intermediate_size\": 8, \"num_attention_heads\": 2}", ZB_EFORMAT, "num_hidden_layers");

    zb_check(zb_config_load("/nonexistent/config.json", &c) == ZB_EIO && strstr(zb_errmsg(), "/nonexistent/config.json"),
             "missing file: %s", zb_errmsg());
    zb_check(!strcmp(zb_layer_kind_name(ZB_LAYER_ATTN), "attention") && !strcmp(zb_layer_kind_name(ZB_LAYER_MLA), "mla") &&
             !strcmp(zb_layer_kind_name(ZB_LAYER_MAMBA2), "mamba2"), "layer kind names");
    return zb_test_finish();
}
