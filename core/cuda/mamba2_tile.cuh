/* mamba2_tile.cuh — the block-level tile product the SSD and bf16-linear kernels share.
 *
 * One block of M2_NT = 256 threads owns a 64 x 64 output tile; thread (tx, ty) = (tid % 16,
 * tid / 16) holds the 4 x 4 elements at rows ty + 16 q and columns tx + 16 r (strided, so that
 * the shared-memory reads of a warp hit distinct banks or broadcast). The inner dimension runs
 * in steps of M2_TK = 32 (fewer barriers than 16, a warp loads 128 contiguous bytes of a k-fast
 * operand) through two padded shared tiles. Operands come from loader functors
 * la(m, k) and lb(k, n) (m, n in [0, 64) tile-local, k in [0, K) global) that return 0 outside
 * the operand, so any edge (ragged chunk, head dims not multiple of 64) is a zero-padded tile.
 * A_KFAST / B_KFAST say which index is contiguous in memory, to coalesce the loads. */
#ifndef ZB_MAMBA2_TILE_CUH
#define ZB_MAMBA2_TILE_CUH

#include <mma.h>

#define M2_TB 64
#define M2_TK 32
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

/* One k-slab of an operand into registers, every load issued before the shared stores that
 * follow. Interleaved (load, store, load, ...) each store waited for its load, one memory latency
 * per element, 16 per slab: S4R1 measured ~10 us per 64^3 tile product per block, about that
 * many L2 latencies. Now two per slab (A's, then B's: 8 registers live, not 16). */
#define M2_NL (M2_TK * M2_TB / M2_NT)
template <class LA>
__device__ __forceinline__ void m2_load_a(float (&r)[M2_NL], const LA &la, int k0, int K, int tid, bool kfast) {
#pragma unroll
    for (int i = 0; i < M2_NL; i++) {
        int e = tid + i * M2_NT, kk = kfast ? e % M2_TK : e / M2_TB, mm = kfast ? e / M2_TK : e % M2_TB;
        r[i] = k0 + kk < K ? la(mm, k0 + kk) : 0.0f;
    }
}
template <class LB>
__device__ __forceinline__ void m2_load_b(float (&r)[M2_NL], const LB &lb, int k0, int K, int tid, bool kfast) {
#pragma unroll
    for (int i = 0; i < M2_NL; i++) {
        int e = tid + i * M2_NT, kk = kfast ? e % M2_TK : e / M2_TB, nn = kfast ? e / M2_TK : e % M2_TB;
        r[i] = k0 + kk < K ? lb(k0 + kk, nn) : 0.0f;
    }
}

/* acc[q][r] += sum_k la(m2_row(q), k) * lb(k, m2_col(r)). Every thread of the block must call
 * it (it synchronises); it ends with a barrier, so sm may be reused right after. */
template <bool A_KFAST, bool B_KFAST, class LA, class LB>
__device__ __forceinline__ void m2_mma(float (&acc)[4][4], const LA &la, const LB &lb, int K,
                                       m2_tile_smem &sm) {
    const int tid = threadIdx.x;
    for (int k0 = 0; k0 < K; k0 += M2_TK) {
        float r[M2_NL];
        m2_load_a(r, la, k0, K, tid, A_KFAST);
#pragma unroll
        for (int i = 0; i < M2_NL; i++) {
            int e = tid + i * M2_NT, kk = A_KFAST ? e % M2_TK : e / M2_TB, mm = A_KFAST ? e / M2_TK : e % M2_TB;
            sm.a[kk][mm] = r[i];
        }
        m2_load_b(r, lb, k0, K, tid, B_KFAST);
#pragma unroll
        for (int i = 0; i < M2_NL; i++) {
            int e = tid + i * M2_NT, kk = B_KFAST ? e % M2_TK : e / M2_TB, nn = B_KFAST ? e / M2_TK : e % M2_TB;
            sm.b[kk][nn] = r[i];
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

/* ---- the same product on the tensor cores ---------------------------------------------------
 * TF32 operands (10-bit mantissas, unit roundoff 2^-11), float32 sums: the SSD forward of the bf16
 * precision mode. The same loads into padded tiles; each of the 8 warps owns 2 of the 16 16 x 16
 * output fragments (rows 16 (warp / 2), columns 32 (warp % 2)) and multiplies them in steps of 8;
 * at the end the fragments go through shared memory into the threads' acc layout (added). The
 * tiles' row strides keep every fragment pointer 32-byte aligned (wmma's rule). */
struct __align__(32) m2_tile_tc {
    union {
        struct {
            float a[M2_TB][M2_TK + 4];   /* [m][k] */
            float b[M2_TK][M2_TB + 4];   /* [k][n] */
        } ab;
        float c[M2_TB][M2_TB + 4];
    } u;
};
/* shared memory for either form */
union __align__(32) m2_tile_any {
    m2_tile_smem f;
    m2_tile_tc t;
};

template <bool A_KFAST, bool B_KFAST, class LA, class LB>
__device__ __forceinline__ void m2_mma_tc(float (&acc)[4][4], const LA &la, const LB &lb, int K,
                                          m2_tile_tc &sm) {
    namespace wm = nvcuda::wmma;
    const int tid = threadIdx.x, warp = tid >> 5, mi = warp >> 1, nj = (warp & 1) * 2;
    wm::fragment<wm::accumulator, 16, 16, 8, float> c0, c1;
    wm::fill_fragment(c0, 0.0f);
    wm::fill_fragment(c1, 0.0f);
    for (int k0 = 0; k0 < K; k0 += M2_TK) {
        float r[M2_NL];
        m2_load_a(r, la, k0, K, tid, A_KFAST);
#pragma unroll
        for (int i = 0; i < M2_NL; i++) {
            int e = tid + i * M2_NT, kk = A_KFAST ? e % M2_TK : e / M2_TB, mm = A_KFAST ? e / M2_TK : e % M2_TB;
            sm.u.ab.a[mm][kk] = r[i];
        }
        m2_load_b(r, lb, k0, K, tid, B_KFAST);
#pragma unroll
        for (int i = 0; i < M2_NL; i++) {
            int e = tid + i * M2_NT, kk = B_KFAST ? e % M2_TK : e / M2_TB, nn = B_KFAST ? e / M2_TK : e % M2_TB;
            sm.u.ab.b[kk][nn] = r[i];
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < M2_TK; ks += 8) {
            wm::fragment<wm::matrix_a, 16, 16, 8, wm::precision::tf32, wm::row_major> fa;
            wm::fragment<wm::matrix_b, 16, 16, 8, wm::precision::tf32, wm::row_major> fb0, fb1;
            wm::load_matrix_sync(fa, &sm.u.ab.a[mi * 16][ks], M2_TK + 4);
            wm::load_matrix_sync(fb0, &sm.u.ab.b[ks][nj * 16], M2_TB + 4);
            wm::load_matrix_sync(fb1, &sm.u.ab.b[ks][(nj + 1) * 16], M2_TB + 4);
#pragma unroll
            for (int t = 0; t < fa.num_elements; t++) fa.x[t] = wm::__float_to_tf32(fa.x[t]);
#pragma unroll
            for (int t = 0; t < fb0.num_elements; t++) {
                fb0.x[t] = wm::__float_to_tf32(fb0.x[t]);
                fb1.x[t] = wm::__float_to_tf32(fb1.x[t]);
            }
            wm::mma_sync(c0, fa, fb0, c0);
            wm::mma_sync(c1, fa, fb1, c1);
        }
        __syncthreads();
    }
    wm::store_matrix_sync(&sm.u.c[mi * 16][nj * 16], c0, M2_TB + 4, wm::mem_row_major);
    wm::store_matrix_sync(&sm.u.c[mi * 16][(nj + 1) * 16], c1, M2_TB + 4, wm::mem_row_major);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int r = 0; r < 4; r++) acc[q][r] += sm.u.c[m2_row(q)][m2_col(r)];
    __syncthreads();
}

/* m2_mma (TC false) or m2_mma_tc (TC true) */
template <bool TC, bool A_KFAST, bool B_KFAST, class LA, class LB>
__device__ __forceinline__ void m2_mma_sel(float (&acc)[4][4], const LA &la, const LB &lb, int K,
                                           m2_tile_any &sm) {
    if (TC) m2_mma_tc<A_KFAST, B_KFAST>(acc, la, lb, K, sm.t);
    else m2_mma<A_KFAST, B_KFAST>(acc, la, lb, K, sm.f);
}

/* Kernel launch check: one line naming the kernel and the CUDA error, then exit. */
void zb_cuda_m2_check_launch(const char *what);
/* Profiling (zb_cuda_mamba2_profile on): synchronise, add the time since the last mark to piece
 * `part` (ZB_MIXP_*; < 0: only restart the clock). Off: nothing. */
void zb_cuda_m2_prof(int part);
/* 0 when ZB_SSD=old asks for the path before issue 17's speed work. */
bool zb_cuda_m2_new_path(void);

#endif
