/* config.h — the one plain struct that describes a model (teacher or hybrid).
 *
 * Parsed from a Hugging Face config.json (model_type "llama" with `rope_scaling` or the newer
 * `rope_parameters`; "deepseek_v3" with dense layers only = an all-MLA model) or from zebra's
 * own hybrid config (model_type "zebra"), see docs/CONFIG.md. A native .h5 checkpoint stores
 * the JSON text written by zb_config_to_json() as an attribute. */
#ifndef ZB_CONFIG_H
#define ZB_CONFIG_H

#include <stddef.h>

#define ZB_MAX_LAYERS 256
#define ZB_MAX_EOS 8
#define ZB_ROPE_MAX_DIM 512   /* the widest rotary dim (head_dim, mla.qk_rope_head_dim); ops.h */

typedef enum { ZB_LAYER_ATTN = 0, ZB_LAYER_MLA = 1, ZB_LAYER_MAMBA2 = 2 } zb_layer_kind;

typedef enum { ZB_ROPE_DEFAULT = 0, ZB_ROPE_LLAMA3 = 1, ZB_ROPE_YARN = 2 } zb_rope_type;

typedef struct {
    zb_rope_type type;
    float theta;               /* rope_theta */
    float factor;              /* llama3 / yarn: factor, original_max_position_embeddings */
    float low_freq_factor, high_freq_factor;   /* llama3 */
    int original_max_pos;
    /* yarn (DeepSeek / Zebra release, SPEC §3): the ramp between beta_fast and beta_slow
     * rotations (32, 1), and cos/sin x get_mscale(factor, mscale) / get_mscale(factor,
     * mscale_all_dim) with get_mscale(f, m) = 0.1 m ln f + 1 (1, 0: the release's 0.1 ln f + 1);
     * mscale_all_dim != 0 also multiplies the softmax scale by get_mscale(f, mscale_all_dim)^2. */
    float beta_fast, beta_slow, mscale, mscale_all_dim;
} zb_rope_cfg;

/* Multi-head Latent Attention (SPEC.md §3). */
typedef struct {
    int n_heads;          /* query heads H */
    int q_lora_rank;      /* 0: plain q_proj [H*(nope+rope) x d]; else q_a_proj/q_b_proj */
    int q_norm;           /* RMSNorm on the q latent (q_a_layernorm), only with q_lora_rank > 0 */
    int kv_lora_rank;     /* r_kv: the cached latent width */
    int kv_norm;          /* RMSNorm on the latent (kv_a_layernorm); DeepSeek: 1, Zebra release: 0 */
    int qk_nope, qk_rope, v_head_dim;
    int kv_heads;         /* heads produced by kv_b_proj (H for DeepSeek, target Hkv for Zebra);
                             query head h uses kv head h / (H / kv_heads) */
    int rope_interleave;  /* 1: the rope part is stored interleaved (DeepSeek/Zebra release) */
    zb_rope_cfg rope;     /* the RoPE of the rope dims: the Zebra release's YaRN, or (configs
                             without mla.rope_scaling / mla.rope_theta, our older checkpoints)
                             a copy of the model's rope (llama3). theta 0 (a config built in
                             code that never set it): the model's rope, filled in by
                             zb_model_init */
} zb_mla_dims;

/* Mamba2 / SSD mixer (SPEC.md §4). in_proj rows: [z | x | B | C | dt] with widths
 * d_inner, x_groups*headdim, b_groups*d_state, c_groups*d_state, nheads.
 * HF Mamba2: x_groups = nheads, b_groups = c_groups = n_groups.
 * Zebra/MambaInLlama: x_groups = b_groups = target Hkv, c_groups = nheads, d_state = headdim.
 * Head h uses x/B group h / (nheads / x_groups) (resp. b_groups) and C group
 * h / (nheads / c_groups). */
typedef struct {
    int d_inner;          /* nheads * headdim */
    int nheads, headdim, d_state;
    int x_groups, b_groups, c_groups;
    int conv_k;           /* depthwise causal conv kernel (4) */
    int chunk;            /* SSD chunk length for the full-sequence form */
    int norm_group;       /* channels per gated-RMSNorm group (d_inner: whole, headdim: per head) */
    float dt_min, dt_max; /* time_step_limit: dt clamped to [dt_min, dt_max] (0, inf: no clamp) */
    int conv_bias;        /* conv1d has a bias */
} zb_mamba2_dims;

typedef struct {
    char model_type[32];  /* "llama", "deepseek_v3" or "zebra" */
    int d_model, n_layers, vocab, ffn;
    int n_heads, n_kv_heads, head_dim;   /* GQA attention layers (and the teacher's shape) */
    float rms_eps;
    int tie_embeddings;
    int max_pos;
    int bos_id;
    int n_eos, eos_ids[ZB_MAX_EOS];
    zb_rope_cfg rope;
    zb_mla_dims mla;
    zb_mamba2_dims mamba;
    zb_layer_kind kinds[ZB_MAX_LAYERS];
    /* Teacher shape for the KV-cache ratio of a hybrid (0 = same as n_layers/n_kv_heads/head_dim). */
    int teacher_layers, teacher_kv_heads, teacher_head_dim;
} zb_config;

/* Parse config JSON text. `src` names the file in error messages. */
int zb_config_parse(const char *json_text, const char *src, zb_config *c);
/* Read and parse a config.json file. */
int zb_config_load(const char *path, zb_config *c);
/* zebra's own JSON form of c (model_type "zebra" for hybrids, keeps HF keys for llama);
 * malloc'd, caller frees. zb_config_parse(zb_config_to_json(c)) == c. */
char *zb_config_to_json(const zb_config *c);
/* Check divisibility and ranges; a clear message naming src on failure. */
int zb_config_validate(const zb_config *c, const char *src);

const char *zb_layer_kind_name(zb_layer_kind k);   /* "attention", "mla", "mamba2" */
const char *zb_rope_type_name(zb_rope_type t);     /* "default", "llama3", "yarn" */
/* YaRN's attention factor (DeepSeek's yarn_get_mscale): 0.1 m ln(factor) + 1, 1 for factor <= 1. */
double zb_yarn_get_mscale(double factor, double m);
/* Parse a rope_scaling / rope_parameters object (llama3, yarn, default) into rc (its theta kept);
 * `where` names it in messages ("rope_scaling.", "mla.rope_scaling."). Used by the release reader. */
struct cJSON;
/* Typed keys of a JSON object, errors naming src and the key (as zb_config_parse's): an integer
 * (null allowed when null_ok: then null_val), a number, a boolean (true/false or 0/1; null or
 * absent: dflt). Absent and not required: dflt. */
int zb_json_int(const struct cJSON *o, const char *key, const char *src, int required, int dflt, int null_ok,
                int null_val, int *out);
int zb_json_float(const struct cJSON *o, const char *key, const char *src, int required, float dflt, float *out);
int zb_json_bool(const struct cJSON *o, const char *key, const char *src, int dflt, int *out);
/* The shortest decimal text of v that reads back as the same float ("1e-05", "500000"). */
void zb_float_text(char *buf, size_t n, float v);
int zb_rope_scaling_parse(const struct cJSON *obj, const char *src, const char *where, zb_rope_cfg *rc);

#endif
