/* compose.h — initialise a Zebra hybrid's mixers from a Llama target's attention layers
 * (SPEC.md §5): MLA by truncated SVD (X-EcoMLA), Mamba2 by the MambaInLlama mapping; norms,
 * MLPs, embeddings and head copied.
 *
 * Choices made here where SPEC §5 leaves room (see the comments in compose.c):
 *  - Which teacher dims of a head become the MLA's rope / nope dims. The MLA rope part of width
 *    `rope` rotates pair j with inv_freq = theta^(-2j/rope); the teacher pair i (dims i and
 *    i + hd/2, rotate-half) rotates with theta^(-2i/hd). We keep as rope the teacher pairs
 *    i_j = j*hd/rope, whose frequencies are exactly the MLA's (llama3 scaling included, it is a
 *    function of the frequency alone), laid out as the MLA stores them (interleaved pairs when
 *    rope_interleave, [firsts | seconds] otherwise). The nope dims are the remaining ones,
 *    lowest frequencies first when not all fit. With nope + rope = hd every dim is kept and, at
 *    position 0 (or with rotation off), the MLA reproduces the attention exactly.
 *  - The SVD is taken of exactly the rows the factor reproduces (query: the kept q rows; kv:
 *    per kv head the nope key rows then the value rows, i.e. kv_b's row order), so that the
 *    discarded energy is the reconstruction error of those rows.
 * The release's own choice (first nope / last rope rows, SVDs of the whole W_q and [W_k; W_v])
 * is ZB_MLA_INIT_RELEASE (`zebra compose --init release`). The assembly of a hybrid from two
 * ILD'd models (SPEC §6) is zb_assemble_*. */
#ifndef ZB_COMPOSE_H
#define ZB_COMPOSE_H

#include <stdint.h>

#include "config.h"
#include "model.h"

/* One teacher attention layer, HF layout: wq [H*hd, d], wk/wv [Hkv*hd, d], wo [d, H*hd]. */
typedef struct {
    int d, H, Hkv, hd;
    const float *wq, *wk, *wv, *wo;
} zb_attn_src;

/* How the MLA is initialised from the attention (SPEC §5 leaves the row choice open):
 *  ZB_MLA_INIT_ROPE_PAIRS (default) the rope dims are teacher rotate-half pairs of the MLA's
 *     frequencies (zb_mla_head_dims), the query rescaled to the teacher's score scale, and
 *     each SVD is of exactly the rows the factor reproduces;
 *  ZB_MLA_INIT_RELEASE as the authors' release: SVD of the whole W_q, q_b = per head the first
 *     nope and the last rope rows of U; SVD of the whole [W_k; W_v] (KV heads repeated to
 *     kv_heads, key rope rows included), kv_b = per head the first nope key rows and all value
 *     rows of U; kv_a's rope rows = the mean over the teacher's KV heads of the last rope rows
 *     of W_k; no query rescaling. */
typedef enum { ZB_MLA_INIT_ROPE_PAIRS = 0, ZB_MLA_INIT_RELEASE = 1 } zb_mla_init;

/* What the SVD kept, per MLA layer. Energy = sum of kept sigma^2 / sum of all sigma^2 of the
 * matrix the SVD factored (the used rows, or the whole W_q / [W_k; W_v] for the release init). */
typedef struct {
    double kv_energy, q_energy;        /* q: 1 when q_lora_rank == 0 */
    double kv_discarded, q_discarded;  /* sqrt(sum of discarded sigma^2) */
    int kv_rank_99, q_rank_99;         /* smallest multiple of 8 keeping >= 99% of the energy */
    /* reconstruction errors of what the MLA computes, ||rows - factors||_F / ||rows||_F:
     * kv: the teacher rows kv_b reproduces (nope key rows, value rows) vs kv_b kv_a(latent);
     * q: the teacher's query rows used vs q_b q_a (0 when q_lora_rank == 0);
     * rope: each teacher KV head's rope key rows vs the shared mean rope key. */
    double kv_rel_err, q_rel_err, rope_rel_err;
} zb_mla_init_stats;

/* Teacher dim (0..hd-1) of each MLA q/k dim of a head, in MLA storage order:
 * dims[0..nope) nope part, dims[nope..nope+rope) rope part. ZB_ESHAPE if nope + rope > hd. */
int zb_mla_head_dims(int hd, const zb_mla_dims *m, int *dims);

/* Rank-r factors of A [m, n] (row-major floats) by an SVD in double (LAPACKE_dgesdd):
 * U [m, r] and SVt = diag(S_r) Vt_r [r, n], so A ~= U SVt. r may exceed min(m, n) (extra
 * columns / rows are zero). sigma [min(m,n)] receives the singular values (may be NULL). */
int zb_svd_lowrank(const float *A, int m, int n, int r, float *U, float *SVt, double *sigma);

/* Energy bookkeeping of singular values s[k]: kept fraction at rank r, sqrt(discarded), and the
 * smallest multiple of 8 reaching `target` energy. */
void zb_svd_energy(const double *s, int k, int r, double target, double *energy,
                   double *discarded, int *rank_target);

/* The rows kv_b reproduces, [kv_heads * (nope + v), d]: per MLA kv head its teacher KV head's
 * nope key rows (zb_mla_head_dims order; _ex: the init's choice), then its value rows. */
int zb_mla_kv_rows(const zb_attn_src *s, const zb_mla_dims *m, float *M);
int zb_mla_kv_rows_ex(const zb_attn_src *s, const zb_mla_dims *m, zb_mla_init init, float *M);

/* MLA weights from one attention layer (SPEC §5) by `init`. st may be NULL. */
int zb_compose_mla(const zb_attn_src *s, const zb_mla_dims *m, zb_mla_init init, const zb_mla_weights *w,
                   zb_mla_init_stats *st);
/* Mamba2 mapping (SPEC §5): x <- W_v, B <- W_k, C <- W_q rows of in_proj, out_proj <- W_o.
 * The z and dt rows, conv, dt_bias, A_log, D and norm are left as they are (fresh values). */
int zb_compose_mamba2(const zb_attn_src *s, const zb_mamba2_dims *m, const zb_mamba2_weights *w);

/* Can teacher config tc initialise student config sc (same d, ffn, vocab, layers; mixer
 * shapes compatible)? A message naming src otherwise. */
int zb_compose_check(const zb_config *tc, const zb_config *sc, const char *src);
/* Block l of the student (kind from sc->kinds[sl]) from teacher block t: mixer by kind, norms
 * and MLP copied. The student block must already hold fresh values (zb_model_init_random). */
int zb_compose_block(const zb_config *tc, const zb_block *t, const zb_config *sc, int sl,
                     zb_mla_init init, const zb_block *s, zb_mla_init_stats *st);
/* Student layer l as a one-layer model `one` (zb_config_one_layer(sc, kind of l); caller
 * frees): fresh values by zb_model_init_random(seed + 7919 (l+1), 0.02), then
 * zb_compose_block from teacher block t. The streaming `zebra compose` writes its tensors. */
int zb_compose_layer(const zb_config *tc, const zb_block *t, const zb_config *sc, int l,
                     uint64_t seed, zb_mla_init init, zb_model *one, zb_mla_init_stats *st);
/* Whole student in memory (zb_model_init'd with its hybrid config) from a loaded teacher:
 * every layer by zb_compose_layer (so the same values as `zebra compose` with that seed), the
 * embedding, final norm and head copied. stats [n_layers] may be NULL. */
int zb_compose_model(const zb_model *teacher, zb_model *student, uint64_t seed, zb_mla_init init,
                     zb_mla_init_stats *stats);

/* Assembly (SPEC §6): the hybrid takes whole decoder layers (mixer, MLP, norms) from the
 * ILD'd all-MLA model A where is_mla[l], from the ILD'd all-Mamba2 model M elsewhere; the
 * embedding, final norm and head are M's (ILD leaves them as the teacher's).
 * zb_assemble_config: the hybrid's config from M's (mc) and A's (ac): A's MLA settings and rope,
 * M's Mamba2 dims, the kinds of is_mla; checks that M and A come from one teacher and have the
 * right kind at every position taken from them (a message naming src otherwise).
 * zb_assemble_model: copies the tensors by name into h (zb_model_init'd with that config). */
int zb_assemble_config(const zb_config *mc, const zb_config *ac, const unsigned char *is_mla, zb_config *out,
                       const char *src);
int zb_assemble_model(const zb_model *M, const zb_model *A, zb_model *h);

/* A config with one layer of kind `kind` of c's shapes and a vocabulary of 1 (the per-layer
 * working model of the streaming compose and of SMART). */
zb_config zb_config_one_layer(const zb_config *c, zb_layer_kind kind);

#endif
