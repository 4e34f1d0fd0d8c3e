/* data.h — token shards on disk and the deterministic loader that feeds training.
 *
 * A shard set (written by `zebra data`) is a directory: manifest.json (counts, hashes, the
 * tokenizer, the split), train.bin / val.bin (little-endian uint32 token ids, documents
 * separated by the EOS id), train.idx / val.idx (uint64 document start offsets), and for
 * chat/preference data the loss masks (train.mask: one byte per token, 1 = the loss counts).
 *
 * The loader packs the token stream into fixed-length rows of T+1 tokens (inputs = row[0..T),
 * targets = row[1..T]), gives data-parallel rank r of R every R-th row (so the union over
 * ranks is the single-rank stream), and can report and restore its exact position. */
#ifndef ZB_DATA_H
#define ZB_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct zb_loader zb_loader;

typedef struct {
    uint64_t row;        /* next global row index (before the rank offset) */
    uint64_t epoch;
} zb_loader_pos;

/* split: "train" or "val". B rows of T+1 tokens per batch on this rank. */
int zb_loader_open(zb_loader **out, const char *dir, const char *split, int B, int T,
                   int dp_rank, int dp_size);
void zb_loader_close(zb_loader *l);
/* Every id a loader, shard or pair reader hands out is checked against the set's vocabulary
 * (manifest.json vocab_size) and, once the reader is told, the model's (*_limit_vocab: the
 * lower one wins; `who` names it in the message, e.g. "the model's vocabulary"): an id outside
 * is ZB_EFORMAT naming the file, the id and its position, never an index past the embedding. */
void zb_loader_limit_vocab(zb_loader *l, int vocab, const char *who);
/* Next batch: ids [B*T] inputs, targets [B*T] (-1 where the mask says no loss).
 * Wraps around at the end of the split (epoch += 1). */
int zb_loader_next(zb_loader *l, int *ids, int *targets);
zb_loader_pos zb_loader_tell(const zb_loader *l);
int zb_loader_seek(zb_loader *l, zb_loader_pos p);
/* Rows per epoch for the whole world (all ranks), and total tokens in the split. Row k is
 * tokens [k*T, k*T+T] (consecutive rows share one token), so rows = (tokens-1)/T; the loader
 * reads rows in order, rank r of R taking rows p+r, p+R+r, ... of each batch. */
uint64_t zb_loader_rows(const zb_loader *l);
uint64_t zb_loader_tokens(const zb_loader *l);

/* ---- On-disk format (version 1), for readers other than the loader ------------------------
 * manifest.json: {"format": "zebra-shards", "version": 1, "kind": "text" | "chat" | "pref",
 *   "tokenizer": path, "vocab_size", "bos_id", "eos_id", "val_fraction", "seed",
 *   "splits": {"train": {"docs", "tokens"}, "val": {...}},
 *   "files": {"train.bin": {"bytes", "fnv64": "16 hex digits"}, ...}}
 * <split>.bin   uint32 LE ids. Text/chat documents are stored as BOS, tokens, EOS; the
 *               training order of the train split is shuffled by --seed at write time.
 * <split>.idx   uint64 LE, docs+1 offsets in tokens (doc i = [idx[i], idx[i+1]), last = tokens).
 * <split>.mask  (chat only) one byte per token of <split>.bin: 1 on assistant content tokens
 *               and their <|eot_id|>; the loader sets targets whose token has mask 0 to -1.
 * <split>.prefs.bin / .prefs.idx  (pref only) uint32 ids; uint64 offsets, 3*pairs+1 of them:
 *               pair i = prompt [o[3i], o[3i+1]), chosen [o[3i+1], o[3i+2]),
 *               rejected [o[3i+2], o[3i+3]).
 * The hash is 64-bit FNV-1a over the whole file. Writers go to a temporary directory that
 * is renamed into place, so a shard set is never seen half-written. */

/* 64-bit FNV-1a; start with h = ZB_FNV64_INIT, chain calls for streaming. */
#define ZB_FNV64_INIT 0xcbf29ce484222325ull
uint64_t zb_fnv64(const void *p, size_t n, uint64_t h);

/* One split of a text/chat shard set, mmap'd read-only. */
typedef struct zb_shard zb_shard;
int zb_shard_open(zb_shard **out, const char *dir, const char *split);
void zb_shard_close(zb_shard *s);
const uint32_t *zb_shard_tokens(const zb_shard *s, uint64_t *n_tokens);
const uint8_t *zb_shard_mask(const zb_shard *s);   /* NULL when every token counts */
uint64_t zb_shard_docs(const zb_shard *s);
/* Document i spans tokens [*start, *end). */
int zb_shard_doc(const zb_shard *s, uint64_t i, uint64_t *start, uint64_t *end);
/* Recompute every file's size and hash against manifest.json (reads all the data). */
int zb_shards_verify(const char *dir);

/* ---- Preference pairs (DPO) ------------------------------------------------------------------
 * The prompt is rendered with the Llama-3 chat template up to and including the assistant
 * header ("<|begin_of_text|>...<|start_header_id|>assistant<|end_header_id|>\n\n"); chosen
 * and rejected are the two completions, each ending with <|eot_id|>. The DPO loss scores
 * log p(chosen | prompt) and log p(rejected | prompt): feed prompt+chosen and take the
 * log-probs of the chosen tokens only. Pairs are in input order; pick i = r, r+R, ... per rank. */
typedef struct zb_prefs zb_prefs;
typedef struct {
    const uint32_t *prompt, *chosen, *rejected;   /* point into the mapping; valid until close */
    size_t n_prompt, n_chosen, n_rejected;
} zb_pref_pair;
int zb_pref_open(zb_prefs **out, const char *dir, const char *split);
void zb_pref_close(zb_prefs *p);
uint64_t zb_pref_count(const zb_prefs *p);
void zb_pref_limit_vocab(zb_prefs *p, int vocab, const char *who);
/* Pair i; its ids checked as zb_loader_next's. */
int zb_pref_get(const zb_prefs *p, uint64_t i, zb_pref_pair *out);
/* One DPO row of T tokens: prompt ++ completion (the prompt is cut from the left, keeping at
 * least its last token, then the completion from the right, when too long; zeros after);
 * targets tg[t] = the next token where that token is part of the completion, -1 elsewhere
 * (SPEC §6 DPO: log pi(y | x) over the continuation tokens). */
void zb_pref_row(const uint32_t *prompt, size_t n_prompt, const uint32_t *completion, size_t n_completion, int T,
                 int *ids, int *tg);

/* ---- Batches of a training stage --------------------------------------------------------
 * The token loader, or, for pairs (DPO), B preference pairs per batch as 2B rows: rows [0, B)
 * chosen, [B, 2B) rejected; data-parallel rank r of R takes pairs next + b*R + r, so that the
 * union over the ranks is the one-rank order; positions as the loader's. */
typedef struct zb_batches zb_batches;
int zb_batches_open(zb_batches **out, const char *dir, const char *split, int pairs, int B, int T, int dp_rank,
                    int dp_size);
void zb_batches_close(zb_batches *b);
/* The models' vocabulary: every id handed out below it (zb_loader_limit_vocab). */
void zb_batches_limit_vocab(zb_batches *b, int vocab, const char *who);
/* ids, targets [rows * T] (rows = B, or 2B for pairs). */
int zb_batches_next(zb_batches *b, int *ids, int *targets);
zb_loader_pos zb_batches_tell(const zb_batches *b);
int zb_batches_seek(zb_batches *b, zb_loader_pos p);

#endif
