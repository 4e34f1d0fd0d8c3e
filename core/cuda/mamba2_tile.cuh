/* mamba2_tile.cuh — the block-level tile product the SSD and bf16-linear kernels share.
 *
 * One block of M2_NT = 256 threads owns a 64 x 64 output tile; thread (tx, ty) = (tid % 16,
 * tid / 16) holds the 4 x 4 elements at rows ty + 16 q and columns tx + 16 r (strided, so that
 * the shared-memory reads of a warp hit distinct banks or broadcast). The inner dimension runs
 * in steps of 16 through two padded shared tiles. Operands come from loader functors
 * la(m, k) and lb(k, n) (m, n in [0, 64) tile-local, k in [0, K) global) that return 0 outside
 * the operand, so any edge (ragged chunk, head dims not multiple of 64) is a zero-padded tile.
 * A_KFAST / B_KFAST say which index is contiguous in memory, to coalesce the loads. */
#ifndef ZB_MAMBA2_TILE_CUH
#define ZB_MAMBA2_TILE_CUH

#define M2_TB 64
#define M2_TK 16
#define M2_NT 256

struct m2_tile_smem {
    float a[M2_TK][M2_TB + 1];
    float b[M2_TK][M2_TB + 1];
};

__device__ __forceinline__ int m2_row(int q) { return (int)(threadIdx.x >> 4) + 16 * q; }
__device__ __forceinline__ int m2_col(int r) { return (int)(threadIdx.x & 15) + 16 * r; }

__device__ __forceinline__ void m2_zero(float (&acc)[4][4]) {
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) acc[q][r] = 0.0f;
}

/* acc[q][r] += sum_k la(m2_row(q), k) * lb(k, m2_col(r)). Every thread of the block must call
 * it (it synchronises); it ends with a barrier, so sm may be reused right after. */
template <bool A_KFAST, bool B_KFAST, class LA, class LB>
__device__ __forceinline__ void m2_mma(float (&acc)[4][4], const LA &la, const LB &lb, int K,
                                       m2_tile_smem &sm) {
    const int tid = threadIdx.x;
    for (int k0 = 0; k0 < K; k0 += M2_TK) {
        for (int e = tid; e < M2_TK * M2_TB; e += M2_NT) {
            int kk = A_KFAST ? e % M2_TK : e / M2_TB, mm = A_KFAST ? e / M2_TK : e % M2_TB;
            sm.a[kk][mm] = k0 + kk < K ? la(mm, k0 + kk) : 0.0f;
            kk = B_KFAST ? e % M2_TK : e / M2_TB;
            int nn = B_KFAST ? e / M2_TK : e % M2_TB;
            sm.b[kk][nn] = k0 + kk < K ? lb(k0 + kk, nn) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < M2_TK; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int q = 0; q < 4; q++) av[q] = sm.a[kk][m2_row(q)];
#pragma unroll
            for (int r = 0; r < 4; r++) bv[r] = sm.b[kk][m2_col(r)];
#pragma unroll
            for (int q = 0; q < 4; q++)
#pragma unroll
                for (int r = 0; r < 4; r++) acc[q][r] = fmaf(av[q], bv[r], acc[q][r]);
        }
        __syncthreads();
    }
}

/* Kernel launch check: one line naming the kernel and the CUDA error, then exit. */
void zb_cuda_m2_check_launch(const char *what);

#endif
