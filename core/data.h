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
/* Next batch: ids [B*T] inputs, targets [B*T] (-1 where the mask says no loss).
 * Wraps around at the end of the split (epoch += 1). */
int zb_loader_next(zb_loader *l, int *ids, int *targets);
zb_loader_pos zb_loader_tell(const zb_loader *l);
int zb_loader_seek(zb_loader *l, zb_loader_pos p);
/* Rows per epoch for the whole world (all ranks), and total tokens in the split. */
uint64_t zb_loader_rows(const zb_loader *l);
uint64_t zb_loader_tokens(const zb_loader *l);

#endif
