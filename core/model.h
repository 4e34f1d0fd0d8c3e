/* model.h — a decoder stack whose mixers are GQA attention, MLA or Mamba2 per layer
 * (a Llama teacher, an all-MLA DeepSeek-style model, or a Zebra hybrid), as in llm.c:
 * one struct for the weights (one flat buffer + named views), one for activations
 * (allocated once for a B x T shape), forward / backward pairs, and a cached decoder.
 *
 * Block i (pre-norm, SPEC §2):  h += Mixer_i(RMSNorm(h));  h += MLP(RMSNorm(h))
 * Output: logits = head(RMSNorm(h)), head tied to the embedding when the config says so.
 *
 * Where tensors live: a model's parameters, gradients, activations (zb_acts) and generation
 * caches (zb_gen) are memory of its backend m->be (backend.h); forward, backward and the
 * generation step only do pointer arithmetic on them and call m->be's entries. A model is
 * built, loaded and initialised on the host (the CPU backend); zb_model_set_backend moves it.
 * Host-side code (loading, saving, TP slicing, sampling) reads m->data directly, which needs
 * m->be->host_memory.
 *
 * Implemented in weights.c (the parameter buffer: layout, allocation, loading, init, the move to
 * a backend) and model.c (forward / backward, generation, sampling). */
#ifndef ZB_MODEL_H
#define ZB_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "zb_common.h"

#define ZB_PARAM_NAME 128

typedef struct zb_tp zb_tp;   /* parallel/tp.h */

/* One named tensor of the parameter buffer, with its HF name. */
typedef struct {
    char name[ZB_PARAM_NAME];
    int ndim;
    int64_t shape[4];
    size_t offset, numel;   /* in floats, within the flat buffer */
    int no_decay;           /* norms, biases, A_log, D, dt_bias: no weight decay */
    int layer;              /* -1 for embedding / final norm / head */
    int bf16;               /* held in zb_model.data16 (offset counts its uint16 elements) */
} zb_param;

/* How a model holds its weight matrices (every 2-D parameter: projections, embedding, head).
 * bf16 is for inference only (generation): half the memory and half the bytes read per
 * decode step, float32 accumulation (linear.h); 1-D / 3-D parameters (norms, biases, A_log,
 * D, dt_bias, conv1d) stay float32. Training needs float32 (gradients, optimizer). */
typedef enum { ZB_WEIGHTS_F32 = 0, ZB_WEIGHTS_BF16 = 1 } zb_wdtype;
/* "f32" / "bf16" -> the value; ZB_EARG naming `what` otherwise. */
int zb_wdtype_parse(const char *s, zb_wdtype *out, const char *what);
const char *zb_wdtype_name(zb_wdtype t);

/* Views of one block's weights (all pointers into one flat buffer). */
typedef struct {
    zb_layer_kind kind;
    float *attn_norm, *mlp_norm;          /* input_layernorm, post_attention_layernorm */
    float *wq, *wk, *wv, *wo;             /* GQA attention: [H*hd,d] [Hkv*hd,d] [Hkv*hd,d] [d,H*hd] */
    zb_mla_weights mla;
    zb_mamba2_weights mamba;
    float *w_gate, *w_up, *w_down;        /* [F,d] [F,d] [d,F] */
    /* The same matrices as tagged views (f32 or bf16 storage, linear.h): the generation path
     * reads these. The float* views above are NULL for matrices held in bf16. */
    struct { zb_wt wq, wk, wv, wo, w_gate, w_up, w_down; } lin;
    zb_mla_lin mla_lin;
    zb_mamba2_lin mamba_lin;
} zb_block;

typedef struct {
    float *embed;       /* [V, d] */
    float *final_norm;  /* [d] */
    float *lm_head;     /* [V, d]; == embed when tied */
    zb_wt embed_lin, lm_head_lin;   /* tagged views of embed / lm_head (see zb_block.lin) */
    zb_block *blocks;   /* [n_layers] */
} zb_weights;

typedef struct {
    zb_config cfg;
    const zb_backend *be;   /* where data, data16, grad live and whose kernels run (CPU after init) */
    int n_params;
    zb_param *params;
    size_t n_floats;
    float *data;        /* the parameters (the float32 ones: all of them unless wdtype is bf16) */
    zb_wdtype wdtype;   /* storage of the 2-D parameters */
    size_t n_bf16;
    uint16_t *data16;   /* [n_bf16] the bf16 parameters (wdtype bf16), NULL otherwise */
    float *grad;        /* same layout; NULL until zb_model_alloc_grad */
    zb_weights w, g;    /* views into data and grad */
    zb_rope rope;       /* attention layers: rotary dim = head_dim */
    zb_rope rope_mla;   /* MLA layers: rotary dim = qk_rope */
    void *slots;        /* private: where each parameter's view lives */
    /* Tensor parallelism (parallel/tp.h): NULL on one rank. When set, this model is one TP
     * shard: cfg holds the LOCAL dims (heads, groups, ffn, vocab divided by tp), params the
     * local shapes; tp has the full config, names/shapes and this rank's slices. */
    zb_tp *tp;
    /* DP: optional hook called by the backward each time more gradients are final, from the
     * top, with `at` (decreasing): ZB_GRAD_HEAD(n_layers) the head's and the final norm's,
     * ZB_GRAD_MLP(l) block l's MLP and its norm (its mixer still to come), ZB_GRAD_BLOCK(l) all
     * of block l's, then ZB_GRAD_ALL after the embedding (everything final): the data-parallel
     * reducer (parallel/dp.h) starts the all-reduce of those buckets while the backward goes on
     * (overlap, as PyTorch DDP / Megatron's grad buckets). */
    void (*grad_hook)(void *ctx, int at);
    void *grad_hook_ctx;
    /* ZeRO-1 (optional, parallel/dp.c): called by the forward before it reads the parameters
     * of `at` (ZB_GRAD_ALL: the embedding, ZB_GRAD_BLOCK(l): block l; the last block's call
     * also covers the final norm and head), so that the parameters' all-gather after the last optimizer step, bucket
     * by bucket, overlaps the forward of the layers below. */
    void (*param_hook)(void *ctx, int at);
    void *param_hook_ctx;
    /* DP (optional, parallel/dp.c): when set, the embedding's backward adds token t's gradient
     * to row emb_slot[t] of emb_rows (backend memory, zeroed by the setter) instead of to its
     * row of g.embed; the setter reduces those rows over the ranks and adds them to g.embed. */
    float *emb_rows;
    const int *emb_slot;
    /* PP: a pipeline stage (parallel/pp.h) holds layers [pp_first, pp_first + cfg.n_layers) of
     * the full model: cfg.n_layers / kinds are the stage's, tensor names keep the GLOBAL layer
     * index (params[i].layer is local). pp_no_embed (not the first stage): no embedding lookup;
     * zb_model_forward starts from a->res[0] (the residual received from the previous stage) and
     * zb_model_backward stops with d(res[0]) in a->dres. pp_no_head (not the last stage): no
     * final norm / head / logits; forward stops at a->res[L], backward starts from d(res[L])
     * put in a->dres by the caller. Parameters held: the embedding on the first stage (and on
     * the last when tied: it is the head there), final norm + lm_head on the last. All 0 for
     * a whole model. Set by zb_model_init_stage. */
    int pp_first, pp_no_embed, pp_no_head;
} zb_model;

/* zb_model.grad_hook's `at`, in the order the backward calls it (decreasing) */
#define ZB_GRAD_HEAD(n_layers) (2 * (n_layers))
#define ZB_GRAD_MLP(l) (2 * (l) + 1)
#define ZB_GRAD_BLOCK(l) (2 * (l))
#define ZB_GRAD_ALL (-1)

/* Before reading the parameters of `at` (m->param_hook, when set). */
static inline void zb_model_params_needed(const zb_model *m, int at) {
    if (m->param_hook) m->param_hook(m->param_hook_ctx, at);
}

/* Build the parameter list of a config (HF names and shapes) and allocate the buffer
 * (zeros). Used by loading, random init, import checks and compose. */
int zb_model_init(zb_model *m, const zb_config *cfg);
/* The same with the 2-D parameters held as wt (zb_model_init is wt = f32). */
int zb_model_init_ex(zb_model *m, const zb_config *cfg, zb_wdtype wt);
/* PP: the model of one pipeline stage: cfg is the stage's config (n_layers = its layer count,
 * kinds its layers'), which are layers [first, first + cfg->n_layers) of the full model; see
 * zb_model.pp_first. zb_model_init_ex is (first 0, no_embed 0, no_head 0). */
int zb_model_init_stage(zb_model *m, const zb_config *cfg, zb_wdtype wt, int first, int no_embed, int no_head);
void zb_model_free(zb_model *m);
/* Run m on backend be from now on: its parameters (and gradients) move to be's memory when be's
 * memory is not m's (with be->host_memory on both sides only the table changes: its options).
 * be must outlive m. Activations and generation state are allocated on m->be: make them after. */
int zb_model_set_backend(zb_model *m, const zb_backend *be);
int zb_model_alloc_grad(zb_model *m);
void zb_model_zero_grad(zb_model *m);
const zb_param *zb_model_param(const zb_model *m, const char *name);
/* Every parameter finite: ZB_EFORMAT "<src>: tensor '<name>' holds N NaN / inf values (first
 * at index i)" otherwise. The loaders call it: a checkpoint with NaN weights (a blown-up run, a
 * damaged file) is refused instead of producing garbage. */
int zb_model_check_finite(const zb_model *m, const char *src);
/* Load from an HF directory or a native .h5 checkpoint: every expected tensor must be present
 * with its exact shape, every value finite (zb_model_check_finite). */
int zb_model_load(zb_model *m, const char *path);
/* The same with the 2-D parameters held as wt: bf16 tensors of a bf16 checkpoint are read
 * raw, f32 ones are converted one tensor at a time (never an f32 copy of the model). */
int zb_model_load_ex(zb_model *m, const char *path, zb_wdtype wt);
/* Random init (N(0, std) for matrices, ones for norms, Mamba2 defaults of SPEC §5). */
void zb_model_init_random(zb_model *m, uint64_t seed, float std);
/* Weights for benchmarks, where the values do not matter but the time to draw them does: the
 * 2-D matrices uniform with standard deviation std from a counter-based hash (threaded), the
 * other tensors by their init rule (norms ones, Mamba2 defaults). Not the draws of
 * zb_model_init_random. Each value depends on (seed, the tensor's full name, its index in the
 * full tensor) only: a TP shard / PP stage holds its slice of the one-rank model's values. */
void zb_model_init_synthetic(zb_model *m, uint64_t seed, float std);
/* The init rule of parameter p (by its name), n values drawn from rng into x: what
 * zb_model_init_random does per tensor; `zebra init` streams it row block by row block. */
void zb_param_fill_random(const zb_param *p, float std, zb_rng *rng, float *x, size_t n);
/* Number of parameters. */
size_t zb_model_num_params(const zb_model *m);
/* Bytes held by the parameters (f32 + bf16). */
size_t zb_model_param_bytes(const zb_model *m);

/* ---- training-shaped forward / backward --------------------------------------------- */
typedef struct {
    const zb_backend *be;   /* the model's backend at zb_acts_alloc: every buffer below but targets is its memory */
    int B, T, n_layers;
    float *res;        /* [(L+1), N, d] residual stream: res[i] = input of layer i; res[L] = final pre-norm */
    float *mid;        /* [L, N, d] residual after the mixer of layer i */
    float *ln1, *ln2;  /* [L, N, d] normed inputs of mixer / MLP */
    float *rstd1, *rstd2;   /* [L, N] */
    float *mix_out;    /* [N, d] scratch: mixer output (recomputed nothing: used as temp) */
    float **mix_acts;  /* [L] per-layer saved mixer activations */
    float *gate, *up, *hmlp;   /* [L, N, F] */
    float *lnf;        /* [N, d] final normed */
    float *rstdf;      /* [N] */
    float *logits;     /* [N, V] ([N, V/tp]: this rank's vocabulary columns, under TP) */
    /* backward scratch */
    float *dres, *dtmp, *dln; /* [N, d] */
    float *dgate, *dup, *dh;  /* [N, F] */
    float *mix_scratch;       /* max over layers of the mixer backward scratch */
    int *ids;          /* [N] the token ids of the last forward (device copy) */
    int *targets_dev;  /* [N] the targets of the last loss (device copy of targets) */
    int *targets;      /* [N] host */
    int profile;       /* 1: each part's wall time (synchronised) is added to prof[] (bench --breakdown) */
    double prof[16], prof_t;   /* by ZB_TPROF_*; prof_t: the last mark */
    double prof_mix[32];       /* the mixers' pieces inside those parts, by ZB_MIXP_* (backend.h) */
} zb_acts;

/* Parts of a training step, timed when zb_acts.profile is set: where step time goes. "block"
 * is each layer's norms, residual adds and SwiGLU MLP (and TP's all-reduces there); "loss" is
 * whatever ran between the forward and the backward (CE, or KD's KL with the teacher's logits). */
enum { ZB_TPROF_EMBED, ZB_TPROF_ATTN_F, ZB_TPROF_MLA_F, ZB_TPROF_MAMBA_F, ZB_TPROF_BLOCK_F, ZB_TPROF_HEAD_F,
       ZB_TPROF_LOSS, ZB_TPROF_HEAD_B, ZB_TPROF_BLOCK_B, ZB_TPROF_ATTN_B, ZB_TPROF_MLA_B, ZB_TPROF_MAMBA_B,
       ZB_TPROF_EMBED_B, ZB_TPROF_N };
extern const char *const zb_tprof_names[ZB_TPROF_N];
/* the profile part of a mixer's forward (bwd 0) or backward (bwd 1) */
static inline int zb_tprof_mixer(zb_layer_kind k, int bwd) {
    int f = k == ZB_LAYER_ATTN ? ZB_TPROF_ATTN_F : k == ZB_LAYER_MLA ? ZB_TPROF_MLA_F : ZB_TPROF_MAMBA_F;
    return bwd ? f - ZB_TPROF_ATTN_F + ZB_TPROF_ATTN_B : f;
}

int zb_acts_alloc(zb_acts *a, const zb_model *m, int B, int T);
void zb_acts_free(zb_acts *a);
/* Forward over ids [B*T]; fills a->logits [B*T, V] and the saved activations. */
void zb_model_forward(const zb_model *m, zb_acts *a, const int *ids);
/* Mean next-token cross-entropy with labels = ids shifted by one (HF convention: the last
 * position of each sequence has no target). targets_out may be NULL. Returns the mean loss;
 * when want_grad, a->logits is overwritten by dloss/dlogits. */
double zb_model_lm_loss(const zb_model *m, zb_acts *a, const int *ids, int want_grad);
/* Mean cross-entropy against explicit targets [B*T] (target < 0: no loss there). */
double zb_model_ce_loss(const zb_model *m, zb_acts *a, const int *targets, int want_grad);
/* Backward from dlogits (in a->logits) to every parameter gradient (accumulated into m->grad). */
void zb_model_backward(zb_model *m, zb_acts *a, const int *ids);

/* Block l alone on the saved activations: forward reads a->res[l] and writes a->mid[l],
 * a->res[l+1] and the layer's saved activations; backward takes d/d res[l+1] in a->dres and
 * leaves d/d res[l] there, accumulating block l's parameter gradients. dmix (may be NULL) is an
 * extra gradient on the mixer's output (ILD's mixer term). zb_model_forward / _backward are
 * the embedding, these over every layer, and the head. */
void zb_block_forward(const zb_model *m, zb_acts *a, int l);
void zb_block_backward(zb_model *m, zb_acts *a, int l, const float *dmix);

/* Inference-only block (no saved activations, no gradients): x[B*T, d] <- block l of m
 * applied to x, B <= the ws's rows, with the working buffers of zb_block_ws_alloc (sized for
 * every layer kind of m; on error zb_block_ws_free frees what was allocated). SMART
 * (core/smart.c) scores layer swaps with it. */
typedef struct {
    const zb_backend *be;   /* m->be at zb_block_ws_alloc: the buffers are its memory */
    int B, T;
    float *ln, *mo, *g, *u, *mix_acts;
    double *prof;   /* NULL, or [2]: each call adds the mixer's and the rest's wall time (synchronised) */
} zb_block_ws;
int zb_block_ws_alloc(zb_block_ws *w, const zb_model *m, int B, int T);
void zb_block_ws_free(zb_block_ws *w);
void zb_block_apply(const zb_model *m, int l, float *x, int B, zb_block_ws *w);

/* Inference forward of a whole frozen model (the KD teacher, SPEC §6): no activations kept for a
 * backward; every layer runs in place on one residual buffer with one layer's working buffers
 * (zb_block_apply), so the memory is that of one layer whatever the depth. The 2-D weights may
 * be float32 or bf16 (bf16 with attention layers only: the MLA / Mamba2 training kernels read
 * float32 matrices). Leaves the final normed hidden state hidden[B*T, d] (the head's input, what
 * zb_model_forward leaves in a->lnf, the same bits with float32 weights); the logits of any rows
 * come from zb_model_head_rows, so a loss can make them a block of rows at a time. A whole model
 * on one rank (no TP shard, no PP stage). profile: the forward's wall time (synchronised) is
 * added to prof. */
typedef struct {
    const zb_backend *be;
    zb_block_ws w;
    float *x;        /* [N, d] the residual stream */
    float *hidden;   /* [N, d] the final RMSNorm's output */
    int *ids;        /* [N] device copy of the token ids */
    int profile;
    double prof;           /* the whole forward */
    double prof_part[2];   /* profile: its mixers, and its norms, MLPs and residual adds (synchronised) */
} zb_infer;
int zb_infer_alloc(zb_infer *f, const zb_model *m, int B, int T);
void zb_infer_free(zb_infer *f);
void zb_model_forward_infer(const zb_model *m, zb_infer *f, const int *ids);
/* logits[rows, V] = hidden[rows, d] @ lm_head^T (float32 or bf16 head). */
void zb_model_head_rows(const zb_model *m, float *logits, const float *hidden, int rows);

/* One block's mixer alone (used by intermediate-layer distillation): out[B*T,d] =
 * Mixer_l(x); acts = a->mix_acts[l] of acts allocated for this B x T. Backward accumulates
 * into dx and into m->grad. */
void zb_mixer_forward(const zb_model *m, int l, const float *x, float *out, float *acts, int B, int T);
void zb_mixer_backward(zb_model *m, int l, const float *x, const float *dout, float *dx,
                       float *acts, float *scratch, int B, int T);

/* ---- generation with caches ---------------------------------------------------------- */
/* Parts of a generation step, timed when zb_gen.profile is set: where decode time goes. */
enum { ZB_PROF_EMBED, ZB_PROF_ATTN, ZB_PROF_MLA, ZB_PROF_MAMBA, ZB_PROF_MLP, ZB_PROF_HEAD,
       ZB_PROF_OTHER, ZB_PROF_N };
extern const char *const zb_prof_names[ZB_PROF_N];
typedef struct {
    const zb_backend *be;   /* the model's backend at zb_gen_init: caches and buffers are its memory */
    int B, max_T, n_layers;
    int *pos;          /* [B] host: tokens cached so far by each sequence (its next position) */
    int *seqs;         /* [B] host scratch: the identity list of zb_gen_step */
    int *pos_dev, *seqs_dev;   /* [B] device copies for the step's entries */
    zb_layer_kind *kinds;   /* [L] the layer kinds (cache layout of each layer) */
    size_t *cache_floats;   /* [L] elements of each layer's cache (bf16 or float32, cache_esize) */
    int *cache_esize;       /* [L] bytes per element: 2 for bf16 K/V / latents (opts.cache_bf16), else 4 */
    int *ids;          /* [B*chunk] device: the chunk's token ids */
    float **cache;     /* [L]: attention K|V, MLA latent, or Mamba2 state, per layer kind */
    size_t cache_bytes_per_token, state_bytes_per_seq;
    float *x, *ln, *mo, *g, *u, *lnf;   /* [B*chunk, ...] */
    float *scratch;
    float *logits;     /* [B, V] host, for the last new token of each sequence fed (full V
                        * under TP); after zb_gen_step_seqs, row i is sequence seqs[i] */
    float *logits_dev; /* the head's output: == logits on a host_memory backend (no copy) */
    float *tp_buf;     /* TP only: local logits [B, V/tp] + gather area [B, V] (device) */
    int *ids_host;     /* TP on a device: [B*chunk] the chunk's ids as this rank's vocabulary rows
                        * (-1: another rank's token, an embedding row of zeros), made on the host */
    float *logits_stage;   /* TP on a device, B > 1: the gathered [tp][B][V/tp] on the host */
    int greedy;        /* 1: each step picks the argmax of each row into next[] (zb_sample's
                        * greedy pick) where the logits are, and copies only those ids to the
                        * host; s->logits is then NOT filled (a device backend; under TP on a
                        * device with one sequence or one rank) */
    int picks_only;    /* with greedy: only the picks are wanted, never the logits (no
                        * zb_gen_logits_host / zb_gen_top2): under TP on a device each rank
                        * picks in its vocabulary slice and only (value, index) pairs are
                        * gathered, not B x V logits (the same ids). Every rank of the TP group
                        * must set the same value. */
    int *next;         /* [B] host: after a step with greedy set, row i's argmax */
    int *next_dev;     /* [B] the backend's copy of next */
    int chunk;         /* max tokens processed per step call */
    int profile;       /* 1: add each part's wall time of every step to prof[] (zebra bench) */
    double prof[ZB_PROF_N];
    void *graph;       /* the backend's recording of a decode step (step_graph), NULL if none */
    long long graph_warm;   /* the key of the last decode step run without one (0: none) */
    int graph_off;     /* recording failed once: steps run call by call */
    /* pipelined greedy decode (zb_gen_decode_launch / _wait) */
    int *aseqs, anb;   /* [B] host: the sequences of the steps launched, how many */
    int pending;       /* steps launched whose picks were not waited for */
    int async_step;    /* set while a pipelined step is queued: it ends by making the next step's
                        * inputs (backend decode_advance), and is recorded under its own key */
    float *logits_rows;   /* TP on a device, B > 1: the gathered logits as rows [B, V] (device), for
                           * the pipelined step's picks */
    int time_steps;    /* 1: the steps made now are timed on the device (step_queue marks) */
    void *stepq;       /* the backend's step queue (marks, fetches), NULL if none yet */
} zb_gen;

/* B sequences (slots) of up to max_T tokens each; every cache is allocated here. */
int zb_gen_init(zb_gen *s, const zb_model *m, int B, int max_T);
void zb_gen_free(zb_gen *s);
/* Empty every sequence (caches and states zeroed, positions 0). */
void zb_gen_reset(zb_gen *s);
/* Empty sequence b only (its cache rows, its Mamba2 states, pos[b] = 0), e.g. to reuse its
 * slot for the next prompt while the other sequences keep decoding. */
void zb_gen_reset_seq(zb_gen *s, int b);
/* Feed n tokens to every sequence (ids [B*n]), sequence b at positions pos[b]..pos[b]+n-1;
 * leaves each sequence's last-position logits in s->logits [B, V]. Returns ZB_EARG if a
 * cache would overflow. */
int zb_gen_step(const zb_model *m, zb_gen *s, const int *ids, int n);
/* The same for the nb sequences seqs[0..nb) only (distinct slot indices < B, any order;
 * seqs NULL = 0..nb-1), ids [nb*n] in that order: prefill one prompt (nb = 1, n = its
 * length) into its own slot, or decode the active sequences together (n = 1), each at its own
 * position. Row i of s->logits is then sequence seqs[i]'s. Under TP every rank of the group
 * must make the same calls. PP (a stage-local model): every stage makes the same calls; a
 * stage without embedding receives the residual [nb*n, d] of each chunk from the previous
 * stage, a stage without head sends its output to the next and leaves no logits (only the
 * last stage has them); the caches hold the stage's layers only. */
int zb_gen_step_seqs(const zb_model *m, zb_gen *s, const int *seqs, int nb, const int *ids, int n);

/* Pipelined greedy decode (zebra generate): a decode step is queued on the backend and its picks
 * read later, so that the next step is queued before the host has read this one's.
 * zb_gen_decode_launch with ids (one per sequence): a decode step of the nb sequences seqs (as
 * zb_gen_step_seqs with n = 1; no step may be pending); with ids NULL: the next step of the same
 * sequences, each fed its pick of the step before, read where it was made (the positions advance
 * on the backend too). At most 2 steps pending. zb_gen_decode_wait: the picks of the oldest
 * pending step into next[nb] (host), in the order of seqs. pos[] advances at the launch. Needs
 * s->greedy; zb_gen_async_ok says whether this model and generation can (no PP stage, not
 * profiling, the picks made where the logits are: a device backend, under TP its gathered rows;
 * a host-memory backend makes them on the host). Under TP every rank of the group makes the same
 * calls and gets the same picks (the same gathered logits). */
int zb_gen_async_ok(const zb_model *m, const zb_gen *s);
int zb_gen_decode_launch(const zb_model *m, zb_gen *s, const int *seqs, int nb, const int *ids);
int zb_gen_decode_wait(const zb_model *m, zb_gen *s, int *next);
/* The device time of the steps made with s->time_steps set (seconds; waits for them). */
double zb_gen_device_time(zb_gen *s);

/* The last step's logits of its nb rows in s->logits also when the greedy pick left them on the
 * device (a copy of nb x V floats); not with picks_only. */
void zb_gen_logits_host(const zb_model *m, zb_gen *s, int nb);
/* The two largest logits of each of the last step's nb rows: id[2i], id[2i+1] and their values
 * val[2i], val[2i+1] (the greedy pick first: the lower id on ties), and mdiff[i] =
 * sqrt(sum_k (lnf_ik (W_ak - W_bk))^2) for those two ids a, b (W the LM head): the 2-norm of
 * the terms by which the two logits differ (-1 under TP, where this rank holds part of the
 * head). Fetches the logits when the greedy pick left them on the device (an error with
 * picks_only: there are none). For checks (ZB_GEN_TOP2
 * of zebra generate): a copy of the logits per call. Not collective (the sampler rank's logits). */
int zb_gen_top2(const zb_model *m, zb_gen *s, int nb, int *id, float *val, float *mdiff);

/* Benchmarks: pretend pos tokens are cached (caches and states filled with small random
 * values) so that decode speed at a long context can be measured without the prefill. */
void zb_gen_fill_synthetic(zb_gen *s, int pos, uint64_t seed);

/* Sampling: temperature 0 = greedy (lowest id on ties, as torch.argmax); top_k 0 = off;
 * top_p 1 = off. */
typedef struct { float temperature; int top_k; float top_p; } zb_sampler;
int zb_sample(const float *logits, int V, const zb_sampler *sp, zb_rng *rng, float *scratch);

/* KV/latent cache bytes per token and fixed state bytes per sequence (float32 storage). */
void zb_cache_sizes(const zb_config *c, size_t *kv_numbers_per_token, size_t *state_numbers_per_seq);

#endif
