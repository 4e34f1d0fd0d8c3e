/* cuda_p2p.h — a one-shot all-reduce (float32 sum) of small vectors between the GPUs of one
 * node, through CUDA IPC peer memory (NVLink): for the latency-bound all-reduces of a TP decode
 * step (2 per layer of d_model floats per token), where a NCCL call costs more than the bytes.
 *
 * Each rank owns one device buffer: a header (a flag per peer: the last call that peer entered,
 * and this rank's own call counter) and two data slots of max_floats, used by alternate calls.
 * A call is one kernel of one block on the stream (so it can be recorded in a CUDA graph): copy
 * x into this rank's slot, fence, tell every peer "call e entered" in its header, wait for every
 * peer's "call e", then sum every rank's slot in rank order (the same bits on every rank) into x.
 * Two slots suffice: a rank entering call e + 2 has seen every peer enter call e + 1, so every
 * peer has finished reading its slot of call e.
 *
 * Setup in two steps, the handles exchanged by the caller (parallel/comm_nccl.c over MPI):
 * new (this rank's buffer, zeroed, and its IPC handle), then open (the peers' buffers). Every
 * rank of the group must make the same calls in the same order (like a collective). */
#ifndef ZB_CUDA_P2P_H
#define ZB_CUDA_P2P_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZB_P2P_MAX_RANKS 8

typedef struct zb_cuda_p2p zb_cuda_p2p;

/* bytes of one rank's IPC handle (what new writes into handle, what open reads per rank) */
size_t zb_cuda_p2p_handle_bytes(void);
/* rank of size (<= ZB_P2P_MAX_RANKS) in the group; vectors of up to max_floats */
int zb_cuda_p2p_new(zb_cuda_p2p **out, int rank, int size, size_t max_floats, void *handle);
/* handles: size * zb_cuda_p2p_handle_bytes(), rank r's at r */
int zb_cuda_p2p_open(zb_cuda_p2p *p, const void *handles);
size_t zb_cuda_p2p_max(const zb_cuda_p2p *p);
/* x[n] (device, n <= max) = the sum over the group, in place, on the stream */
void zb_cuda_p2p_allreduce(zb_cuda_p2p *p, float *x, size_t n);
void zb_cuda_p2p_free(zb_cuda_p2p *p);

#ifdef __cplusplus
}
#endif

#endif
