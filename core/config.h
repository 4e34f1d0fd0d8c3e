/* config.h — the one plain struct that describes a model (teacher or hybrid).
 *
 * Parsed from a Hugging Face config.json (model_type "llama" with `rope_scaling` or the newer
 * `rope_parameters`; "deepseek_v3" with dense layers only = an all-MLA model) or from zebra's
 * own hybrid config (model_type "zebra"), see docs/CONFIG.md. A native .h5 checkpoint stores
 * the JSON text written by zb_config_to_json() as an attribute. */
#ifndef ZB_CONFIG_H
#define ZB_CONFIG_H

#define ZB_MAX_LAYERS 256
#define ZB_MAX_EOS 8

typedef enum { ZB_LAYER_ATTN = 0, ZB_LAYER_MLA = 1, ZB_LAYER_MAMBA2 = 2 } zb_layer_kind;

typedef enum { ZB_ROPE_DEFAULT = 0, ZB_ROPE_LLAMA3 = 1 } zb_rope_type;

typedef struct {
    zb_rope_type type;
    float theta;               /* rope_theta */
    float factor;              /* llama3: factor, low_freq_factor, high_freq_factor, original */
    float low_freq_factor, high_freq_factor;
    int original_max_pos;
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

#endif
