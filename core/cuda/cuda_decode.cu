/* cuda_decode.cu — the memory-bound kernels of a decode step, where one token per sequence
 * meets weights and caches that are read once per step:
 *
 *   zb_cuda_gemv_bf16   out[N, OC] = x[N, C] @ W^T for a bf16 W and N <= 8 rows: one warp per
 *                       output row streams its weight row in 16-byte loads (8 bf16 per lane) and
 *                       multiplies the N float32 inputs (read through L1), float32 sums; no
 *                       input conversion, no library call.
 *   zb_cuda_decode_attn flash-decoding (split-K over the cache): for each (sequence, KV group,
 *                       chunk of positions) one block scores the group's query heads against the
 *                       chunk (its length read from the device positions, so no host round trip),
 *                       keeps the chunk's max, sum and weighted values; a second kernel merges the
 *                       chunks exactly: out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c. Float32
 *                       or bf16 caches; the values may be the first dv columns of the key rows
 *                       (MLA's latent cache: one group of all the heads). */
#include "cuda_ops.h"
#include "cuda_pdl.cuh"
#include "cuda_reduce.cuh"

typedef __nv_bfloat16 bf16;

/* ---- small-N GEMV on bf16 weights ------------------------------------------------------------- */

#define GEMV_MAXN 8
#define GEMV_THREADS 256   /* 8 warps */
#define GEMV_UNROLL 4      /* 16-byte weight loads in flight per lane (per matrix); 8 for one row (UNR) */

/* up to 3 matrices sharing the input x (q | k | v), their rows numbered one after the other;
 * pair mode: rows r of W[0] (gate) and Wu (up) together, out[0] = silu(gate) * up */
typedef struct {
    const bf16 *W[3];
    float *out[3];
    int OC[3], start[4], nseg;
    const bf16 *Wu;
    int pf;    /* columns of each warp's slice fetched into the L2 before the PDL wait */
    int pre;   /* the first round of weight loads before the PDL wait (gemv_preload) */
    /* NORM (zb_cuda_gemv_bf16_add_rmsnorm): then nx += out[0], nout = RMSNorm(nx) nw by the last
     * block (g_gemv_ticket) */
    float *nx, *nout;
    const float *nw;
    float eps;
} gemv_args;

/* streamed once: no L1 allocation (x stays there), L2 fetches 256 B at a time */
__device__ static inline uint4 ld_stream(const bf16 *p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

/* the same, volatile: kept before the PDL wait (an asm without volatile may be moved across it) */
__device__ static inline uint4 ld_stream_v(const bf16 *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ static inline void prefetch_l2(const bf16 *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

/* one round: UNR 16-byte loads per lane of the weight row (and of the up row in pair mode) */
template <int UNR, bool PAIR, bool VOL = false>
__device__ static inline void gemv_load(uint4 *rw, uint4 *ru, const bf16 *w, const bf16 *wu, int c, int c1) {
#pragma unroll
    for (int k = 0; k < UNR; k++) {
        int cc = c + k * 256;
        if (cc < c1) {
            rw[k] = VOL ? ld_stream_v(w + cc) : ld_stream(w + cc);
            if (PAIR) ru[k] = VOL ? ld_stream_v(wu + cc) : ld_stream(wu + cc);
        }
    }
}

template <int NN>
__device__ static inline void gemv_fma(float *acc, uint4 raw, const float *__restrict__ x, int C, int c) {
    const __nv_bfloat162 *p2 = (const __nv_bfloat162 *)&raw;
    float2 f0 = __bfloat1622float2(p2[0]), f1 = __bfloat1622float2(p2[1]);
    float2 f2 = __bfloat1622float2(p2[2]), f3 = __bfloat1622float2(p2[3]);
#pragma unroll
    for (int n = 0; n < NN; n++) {
        const float4 *xr = (const float4 *)(x + (size_t)n * C + c);
        float4 a = __ldg(xr), b = __ldg(xr + 1);
        acc[n] += f0.x * a.x + f0.y * a.y + f1.x * a.z + f1.y * a.w + f2.x * b.x + f2.y * b.y + f3.x * b.z + f3.y * b.w;
    }
}

/* blocks of the fused GEMV + residual + norm done (k_gemv NORM): the last one resets it to 0 for
 * the next call (graph replays). One counter: such GEMVs run one after the other on the stream (a
 * GEMV counts only after its PDL wait, so after the kernel before, and each one before, ended). */
__device__ unsigned g_gemv_ticket;

/* x += a, out = RMSNorm(x) w for one row of C by the block of GEMV_THREADS (= k_add_rmsnorm's
 * row_threads(C) for C > 128): k_add_rmsnorm's arithmetic, the sum of squares in the same order
 * (thread t: columns t, t + 256, ... in double, then zb_block_sum_d), so the same bits. a, written
 * by the other blocks of the grid, is read from the L2. */
__device__ static void gemv_add_rmsnorm_row(float *x, const float *a, float *out, const float *w, int C, float eps) {
    double ss = 0;
    for (int i = threadIdx.x; i < C; i += GEMV_THREADS) {
        float v = x[i] + __ldcg(a + i);
        ss += (double)v * v;
    }
    ss = zb_block_sum_d(ss);
    float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int i = threadIdx.x; i < C; i += GEMV_THREADS) {
        float v = x[i] + __ldcg(a + i);
        x[i] = v;
        out[i] = w[i] * (v * r);
    }
}

/* KS warps share one output row (split-K: each sums C / KS columns, GEMV_UNROLL loads of 16 bytes
 * in flight per lane before the products), the block's 8 / KS rows are summed through shared
 * memory. NN (1..8) rows of x, a compile-time count. NORM: then the residual step and the next norm by the
 * grid's last block (zb_cuda_gemv_bf16_add_rmsnorm). */
template <int NN, bool PAIR, int UNR = GEMV_UNROLL, bool NORM = false>
__global__ void __launch_bounds__(GEMV_THREADS) k_gemv(const gemv_args a, const float *__restrict__ x, int C, int KS, int total) {
    constexpr int NA = PAIR ? 2 : 1;
    __shared__ float red[GEMV_THREADS / 32][NA * NN];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, RB = (GEMV_THREADS / 32) / KS;
    const int row = blockIdx.x * RB + warp / KS, kp = warp % KS;
    float acc[NA * NN];
#pragma unroll
    for (int n = 0; n < NA * NN; n++) acc[n] = 0.0f;
    pdl_launch();   /* the next kernel (a GEMV) may start loading its weights */
    const bf16 *w = NULL, *wu = NULL;
    int c = 0, c1 = 0;
    if (row < total) {
        /* the segment by selects, not an index (an indexed parameter array goes to local memory) */
        int sg = row >= a.start[1] ? (row >= a.start[2] ? 2 : 1) : 0;
        int r = row - (sg == 0 ? 0 : sg == 1 ? a.start[1] : a.start[2]);
        w = (sg == 0 ? a.W[0] : sg == 1 ? a.W[1] : a.W[2]) + (size_t)r * C;
        wu = PAIR ? a.Wu + (size_t)r * C : NULL;
        int per = ((C + 8 * KS - 1) / (8 * KS)) * 8, c0 = kp * per;
        c1 = min(C, c0 + per);
        c = c0 + lane * 8;
    }
    /* the first a.pf columns of each warp's slice fetched into the L2 before waiting on the kernel
     * before (launched with PDL), so that the weight stream starts while that kernel ends: a
     * prefetch delivers no data, so nothing is read before the wait (a kernel that wrote the
     * weights, e.g. a conversion, is finished by then); then the loads as ever */
    for (int cc = c, ce = min(c1, c - lane * 8 + a.pf); cc < ce; cc += 256) {
        prefetch_l2(w + cc);
        if (PAIR) prefetch_l2(wu + cc);
    }
    /* a.pre (a recorded decode step, where no kernel writes weights: gemv_preload): the first
     * round of weight loads issued into registers before the wait, so that the resident warps
     * have their first bytes when the kernel before ends; the same products in the same order */
    uint4 rw[UNR], ru[UNR];
    bool held = false;
    if (a.pre && c < c1) {
        gemv_load<UNR, PAIR, true>(rw, ru, w, wu, c, c1);
        held = true;
    }
    pdl_wait();
    for (; c < c1; c += 256 * UNR) {
        if (!held) gemv_load<UNR, PAIR>(rw, ru, w, wu, c, c1);
        held = false;
#pragma unroll
        for (int k = 0; k < UNR; k++) {
            int cc = c + k * 256;
            if (cc < c1) {
                gemv_fma<NN>(acc, rw[k], x, C, cc);
                if (PAIR) gemv_fma<NN>(acc + NN, ru[k], x, C, cc);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < NA * NN; n++) {
        float v = acc[n];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        acc[n] = v;
    }
    if (KS > 1) {
        if (lane == 0)
#pragma unroll
            for (int n = 0; n < NA * NN; n++) red[warp][n] = acc[n];
        __syncthreads();
        if (!NORM && (kp != 0 || row >= total)) return;
        if (kp == 0 && row < total)
            for (int k = 1; k < KS; k++)
#pragma unroll
                for (int n = 0; n < NA * NN; n++) acc[n] += red[warp + k][n];
    }
    if (row < total && lane < NN && (KS == 1 || kp == 0)) {
        int sg = row >= a.start[1] ? (row >= a.start[2] ? 2 : 1) : 0;
        int r = row - (sg == 0 ? 0 : sg == 1 ? a.start[1] : a.start[2]);
        int OC = sg == 0 ? a.OC[0] : sg == 1 ? a.OC[1] : a.OC[2];
        float *o = sg == 0 ? a.out[0] : sg == 1 ? a.out[1] : a.out[2];
        float v = acc[0];   /* lane n writes row n of x's output (a register array indexed at compile time) */
#pragma unroll
        for (int n = 1; n < NN; n++)
            if (lane == n) v = acc[n];
        if (PAIR) {
            float u = acc[NN];
#pragma unroll
            for (int n = 1; n < NN; n++)
                if (lane == n) u = acc[NN + n];
            v = v / (1.0f + expf(-v)) * u;   /* silu(gate) * up, as k_swiglu_fwd */
        }
        o[(size_t)lane * OC + r] = v;
        if (NORM) __threadfence();   /* the output seen by the last block before this block's ticket */
    }
    if (!NORM) return;
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&g_gemv_ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int C1 = a.OC[0];
    for (int n = 0; n < NN; n++)
        gemv_add_rmsnorm_row(a.nx + (size_t)n * C1, a.out[0] + (size_t)n * C1, a.nout + (size_t)n * C1, a.nw, C1, a.eps);
    if (threadIdx.x == 0) g_gemv_ticket = 0;
}

/* 0: chosen per shape (gemv_split); 1, 2, 4, 8: forced (the benchmark's sweep; ZB_GEMV_SPLIT=N in
 * the environment); 16: the S6 rule at every row count (ZB_GEMV_SPLIT=auto); -1: not read yet */
static int g_gemv_split = -1;
extern "C" void zb_cuda_gemv_set_split(int ks) {
    g_gemv_split = ks == 1 || ks == 2 || ks == 4 || ks == 8 || ks == 16 ? ks : 0;
}

extern "C" int zb_cuda_gemv_ok(const void *x, const void *W, int N, int C) {
    return N >= 1 && N <= GEMV_MAXN && C % 8 == 0 && !(((uintptr_t)x | (uintptr_t)W) & 15);
}

/* split-K. One row (batch-1 decode) over at least 1024 columns: 2 warps a row (S7R1: Llama-3.1-8B's
 * step 4.985 -> 4.789 ms with every GEMV at 2 against the rule below, which gave q|k|v 2, o 4,
 * gate|up 1, down 4; Zebra-8B 5.405 -> 5.197; S6R2's chain: 4.953 -> 4.839). Otherwise the S6 rule:
 * enough warps to fill the GPU (about 64 per SM) when the matrices have few rows, while each warp
 * keeps at least two sweeps of 256 columns. */
static int gemv_split(int rows, int C, int N) {
    if (g_gemv_split < 0) {
        const char *e = getenv("ZB_GEMV_SPLIT");
        zb_cuda_gemv_set_split(e && !strcmp(e, "auto") ? 16 : e ? atoi(e) : 0);
    }
    if (g_gemv_split && g_gemv_split != 16) return g_gemv_split;
    if (N == 1 && C >= 1024 && g_gemv_split != 16) return 2;
    int target = zb_cuda_sm_count() * 64, ks = 1;
    while (ks < 8 && (long long)rows * ks < target && C / (ks * 2) >= 512) ks *= 2;
    return ks;
}

/* the GEMVs launched with PDL (cudaLaunchAttributeProgrammaticStreamSerialization; kept as
 * programmatic edges in the decode step's graph): on unless ZB_DEC_PDL=0 */
static int g_dec_pdl = -1;
extern "C" void zb_cuda_dec_pdl_set(int on) { g_dec_pdl = on < 0 ? -1 : on != 0; }
extern "C" int zb_cuda_dec_pdl(void) {
    if (g_dec_pdl < 0) {
        const char *e = getenv("ZB_DEC_PDL");
        g_dec_pdl = !(e && !strcmp(e, "0"));
    }
    return g_dec_pdl;
}

/* loads in flight per lane at one row (batch 1: a small matrix's warps run in one wave, each a
 * chain of C / (256 UNR) load rounds, so the rounds' latency rather than the bandwidth bounds it):
 * 4 or 8; 9 = 8 for the single matrices (q|k|v, o, down, the head) and 4 for the gate|up pair (at 8
 * the pair's kernel takes 114 registers: S6R2's chain row "8 loads in flight" lost 6.6%); 0 =
 * ZB_GEMV_UNROLL from the environment (4 the default, 8, or 8s for 9) */
static int g_gemv_unroll = 0;
extern "C" void zb_cuda_gemv_set_unroll(int u) { g_gemv_unroll = u == 4 || u == 8 || u == 9 ? u : 0; }
static int gemv_unroll(bool pair) {
    if (!g_gemv_unroll) {
        const char *e = getenv("ZB_GEMV_UNROLL");
        g_gemv_unroll = e && !strcmp(e, "8s") ? 9 : e && atoi(e) == 8 ? 8 : 4;
    }
    return g_gemv_unroll == 8 || (g_gemv_unroll == 9 && !pair) ? 8 : 4;
}

template <int NN, bool PAIR, bool NORM>
static void gemv_go(dim3 grid, const gemv_args &a, const float *x, int C, int ks, int rows) {
    if (NN == 1 && gemv_unroll(PAIR) == 8)
        pdl_go(k_gemv<1, PAIR, 8, NORM>, grid, dim3(GEMV_THREADS), 0, zb_cuda_stream(), a, x, C, ks, rows);
    else pdl_go(k_gemv<NN, PAIR, GEMV_UNROLL, NORM>, grid, dim3(GEMV_THREADS), 0, zb_cuda_stream(), a, x, C, ks, rows);
}

/* bytes of a GEMV's weights fetched into the L2 before its PDL wait (a share of every row, at least
 * each lane's first round of loads): ZB_GEMV_PREFETCH_MB, default 0 = none (S5R1: the first round
 * prefetched cost the kernel ~5% when it had nothing to overlap: 0.128 -> 0.135 ms per layer's
 * four GEMVs without PDL, 0.130 with); -2 in the setter: the first round only */
static long long g_gemv_pf = -1;
extern "C" void zb_cuda_gemv_set_prefetch(long long bytes) { g_gemv_pf = bytes; }
static long long gemv_pf_bytes(void) {
    if (g_gemv_pf == -1) {
        const char *e = getenv("ZB_GEMV_PREFETCH_MB");
        g_gemv_pf = (long long)((e ? atof(e) : 0.0) * 1048576.0);
        if (g_gemv_pf < 0) g_gemv_pf = 0;
    }
    return g_gemv_pf;
}

/* The first round of weight loads issued before the PDL wait (k_gemv's a.pre): only while a decode
 * step is recorded (zb_cuda_recording: generation's steps, the benchmark's chain), where every
 * kernel before a GEMV reads the weights and none writes them (a load before the wait would not
 * see the writes of the kernel before, e.g. a conversion of the weights). Off unless
 * ZB_GEMV_PRELOAD=1 (S7R1: Llama-3.1-8B's step 4.915 ms without, 4.985 with; the chain 5.056 /
 * 5.100); zb_cuda_gemv_set_preload(1 / 0) forces it on (while recording) / off, (-1) reads the
 * environment again. */
static int g_gemv_pre = -1;
extern "C" void zb_cuda_gemv_set_preload(int on) { g_gemv_pre = on < 0 ? -1 : on != 0; }
extern "C" int zb_cuda_gemv_preload(void) {
    return zb_cuda_env_opt_in(&g_gemv_pre, "ZB_GEMV_PRELOAD") && zb_cuda_recording() && zb_cuda_dec_pdl();
}

template <bool PAIR, bool NORM = false>
static void gemv_launch(const gemv_args &a0, const float *x, int N, int C) {
    gemv_args a = a0;
    int rows = a.start[a.nseg], ks = gemv_split(rows, C, N), rb = (GEMV_THREADS / 32) / ks;
    dim3 grid((rows + rb - 1) / rb);
    long long pfb = gemv_pf_bytes(), cols = pfb > 0 ? pfb / ((long long)rows * 2 * (PAIR ? 2 : 1)) : 0;
    int slice = (C + ks - 1) / ks, first = 256 * (N == 1 ? gemv_unroll(PAIR) : GEMV_UNROLL);
    a.pf = (int)(cols / ks > slice ? slice : cols / ks);
    if ((pfb > 0 || pfb == -2) && a.pf < first) a.pf = first;
    if (!zb_cuda_dec_pdl()) a.pf = 0;   /* nothing to overlap */
    a.pre = zb_cuda_gemv_preload();
    switch (N) {
    case 1: gemv_go<1, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    case 2: gemv_go<2, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    case 3: gemv_go<3, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    case 4: gemv_go<4, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    case 5: gemv_go<5, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    case 6: gemv_go<6, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    case 7: gemv_go<7, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    default: gemv_go<8, PAIR, NORM>(grid, a, x, C, ks, rows); break;
    }
    ZB_CUDA_LAUNCHED(NORM ? "gemv_bf16 add_rmsnorm" : PAIR ? "gemv_bf16 swiglu" : "gemv_bf16");
}

extern "C" void zb_cuda_gemv_bf16(float *out, const float *x, const uint16_t *W, int N, int C, int OC) {
    zb_gemv_seg s = {W, out, OC};
    zb_cuda_gemv_bf16_multi(x, N, C, 1, &s);
}

extern "C" void zb_cuda_gemv_bf16_multi(const float *x, int N, int C, int nseg, const zb_gemv_seg *segs) {
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.nseg = 0;
    for (int s = 0; s < nseg && s < 3; s++) {
        if (segs[s].OC <= 0) continue;
        a.W[a.nseg] = (const bf16 *)segs[s].W;
        a.out[a.nseg] = segs[s].out;
        a.OC[a.nseg] = segs[s].OC;
        a.start[a.nseg + 1] = a.start[a.nseg] + segs[s].OC;
        a.nseg++;
    }
    if (!a.nseg) return;
    for (int s = a.nseg + 1; s < 4; s++) a.start[s] = a.start[a.nseg];
    gemv_launch<false>(a, x, N, C);
}

/* the residual step and the next norm done by the GEMV's last block: off unless ZB_GEMV_NORM=1 (S7R2, one
 * H200: Llama-3.1-8B batch 1 5.298 ms a step with it, 4.774 without; the 32-layer chain 5.130 vs 4.714 ms: the
 * last block's serial norm costs more than the separate launch it saves) */
static int g_gemv_norm = -1;
extern "C" void zb_cuda_gemv_norm_set(int on) { g_gemv_norm = on < 0 ? -1 : on != 0; }
extern "C" int zb_cuda_gemv_norm_on(void) { return zb_cuda_env_opt_in(&g_gemv_norm, "ZB_GEMV_NORM"); }

extern "C" int zb_cuda_gemv_bf16_add_rmsnorm(float *out, const float *x, const uint16_t *W, int N, int C, int OC,
                                             float *nx, float *ln, const float *nw, float eps) {
    if (!zb_cuda_gemv_norm_on() || !zb_cuda_gemv_ok(x, W, N, C) || OC <= 128) return 0;
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.W[0] = (const bf16 *)W;
    a.out[0] = out;
    a.OC[0] = OC;
    a.nseg = 1;
    a.start[1] = a.start[2] = a.start[3] = OC;
    a.nx = nx;
    a.nout = ln;
    a.nw = nw;
    a.eps = eps;
    gemv_launch<false, true>(a, x, N, C);
    return 1;
}

extern "C" void zb_cuda_gemv_bf16_swiglu(float *h, const float *x, const uint16_t *Wg, const uint16_t *Wu, int N,
                                         int C, int F) {
    if (F <= 0) return;
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.W[0] = (const bf16 *)Wg;
    a.Wu = (const bf16 *)Wu;
    a.out[0] = h;
    a.OC[0] = F;
    a.nseg = 1;
    a.start[1] = a.start[2] = a.start[3] = F;
    gemv_launch<true>(a, x, N, C);
}

/* ---- flash-decoding -------------------------------------------------------------------------------- */

#define DEC_THREADS 128
#define DEC_MAXREP 64

__device__ static inline float ldc(const void *c, int bf, long long i) {
    return bf ? __bfloat162float(((const bf16 *)c)[i]) : ((const float *)c)[i];
}

/* One block: sequence i (slot seq[i], key positions 0..pos[i]), KV group g, positions
 * [sp*CH, sp*CH + CH). part row (i, g, sp, j) of dv + 2 floats: weighted values, max, sum. */
__global__ void __launch_bounds__(DEC_THREADS) k_decode_part(
    float *__restrict__ part, const float *__restrict__ q, const void *kc, const void *vc, const int *seq,
    const int *pos, int H, int Hkv, int dqk, int dv, long long seq_stride, long long group_stride,
    long long row_stride, float scale, int bf, int CH, int nsplit) {
    extern __shared__ float dsm[];
    const int sp = blockIdx.x, g = blockIdx.y, i = blockIdx.z, rep = H / Hkv;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    float *qs = dsm, *sc = dsm + rep * dqk, *ml = sc + rep * CH;   /* q [rep][dqk], scores [rep][CH], m / l */
    const int L = pos[i] + 1, u0 = sp * CH, u1 = min(L, u0 + CH), n = u1 - u0;
    float *pr = part + ((((size_t)i * Hkv + g) * nsplit + sp) * rep) * (dv + 2);
    if (n <= 0) {   /* past this sequence's length: an empty chunk */
        for (int j = tid; j < rep; j += DEC_THREADS) { pr[(size_t)j * (dv + 2) + dv] = -INFINITY; pr[(size_t)j * (dv + 2) + dv + 1] = 0.0f; }
        return;
    }
    const float *qi = q + (size_t)i * H * dqk + (size_t)g * rep * dqk;
    for (int e = tid; e < rep * dqk; e += DEC_THREADS) qs[e] = qi[e] * scale;
    __syncthreads();
    const long long base = (long long)seq[i] * seq_stride + (long long)g * group_stride;
    /* scores: a warp per position, the heads of the group in registers, 8 at a time */
    for (int u = u0 + warp; u < u1; u += DEC_THREADS / 32) {
        long long ro = base + (long long)u * row_stride;
        for (int j0 = 0; j0 < rep; j0 += 8) {
            float acc[8];
#pragma unroll
            for (int j = 0; j < 8; j++) acc[j] = 0.0f;
            for (int d = lane; d < dqk; d += 32) {
                float kv = ldc(kc, bf, ro + d);
#pragma unroll
                for (int j = 0; j < 8; j++)
                    if (j0 + j < rep) acc[j] += qs[(j0 + j) * dqk + d] * kv;
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float v = acc[j];
                for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == 0 && j0 + j < rep) sc[(j0 + j) * CH + (u - u0)] = v;
            }
        }
    }
    __syncthreads();
    /* the chunk's softmax per head: a warp per head */
    for (int j = warp; j < rep; j += DEC_THREADS / 32) {
        float *s = sc + j * CH, mx = -INFINITY;
        for (int u = lane; u < n; u += 32) mx = fmaxf(mx, s[u]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float l = 0;
        for (int u = lane; u < n; u += 32) { float p = expf(s[u] - mx); s[u] = p; l += p; }
        for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
        if (lane == 0) { ml[2 * j] = mx; ml[2 * j + 1] = l; }
    }
    __syncthreads();
    /* values: a thread per output column, 4 heads of the group at a time in registers (the
     * chunk's value column is re-read from L1 for the next 4) */
    for (int d = tid; d < dv; d += DEC_THREADS)
        for (int j0 = 0; j0 < rep; j0 += 4) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const float *s0 = sc + j0 * CH;
            int nj = rep - j0 < 4 ? rep - j0 : 4;
            if (nj == 4) {
                for (int u = 0; u < n; u++) {
                    float vv = ldc(vc, bf, base + (long long)(u0 + u) * row_stride + d);
                    acc[0] += s0[u] * vv;
                    acc[1] += s0[CH + u] * vv;
                    acc[2] += s0[2 * CH + u] * vv;
                    acc[3] += s0[3 * CH + u] * vv;
                }
            } else {
                for (int u = 0; u < n; u++) {
                    float vv = ldc(vc, bf, base + (long long)(u0 + u) * row_stride + d);
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        if (j < nj) acc[j] += s0[j * CH + u] * vv;
                }
            }
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (j < nj) pr[(size_t)(j0 + j) * (dv + 2) + d] = acc[j];
        }
    for (int j = tid; j < rep; j += DEC_THREADS) {
        pr[(size_t)j * (dv + 2) + dv] = ml[2 * j];
        pr[(size_t)j * (dv + 2) + dv + 1] = ml[2 * j + 1];
    }
}


/* The GQA fast path: D = dqk = dv (64, 128 or 256), R heads per group (1, 2, 4, 8). A row of D
 * values is D / 8 lanes of 8 (16 bytes of bf16, 32 of float32), so a warp reads 32 / (D / 8)
 * consecutive rows per load; each group of D / 8 lanes ("slot") keeps its heads' running max, sum
 * and weighted values (online softmax) over its rows, DEC_P rows of K and V in flight per lane;
 * the block's slots are merged through shared memory into one part row per head (the format of
 * k_decode_part). k_decode_gqa reads a bf16 cache that the kernels before wrote; k_decode_fused
 * (after k_decode_merge) does their work and the merge too. */
#define DEC_P 4

/* 8 values of a cache row: one 16-byte load of bf16, two of float32 */
template <typename T> struct row8;
template <> struct row8<bf16> { uint4 a; };
template <> struct row8<float> { uint4 a, b; };
__device__ static inline void ld_row(row8<bf16> &r, const bf16 *p) { r.a = ld_stream(p); }
__device__ static inline void ld_row(row8<float> &r, const float *p) {
    r.a = ld_stream((const bf16 *)p);
    r.b = ld_stream((const bf16 *)(p + 4));
}
__device__ static inline void row_f(const row8<bf16> &r, float *f) {
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&r.a;
#pragma unroll
    for (int e = 0; e < 4; e++) { float2 x = __bfloat1622float2(h[e]); f[2 * e] = x.x; f[2 * e + 1] = x.y; }
}
__device__ static inline void row_f(const row8<float> &r, float *f) {
    f[0] = __uint_as_float(r.a.x); f[1] = __uint_as_float(r.a.y); f[2] = __uint_as_float(r.a.z); f[3] = __uint_as_float(r.a.w);
    f[4] = __uint_as_float(r.b.x); f[5] = __uint_as_float(r.b.y); f[6] = __uint_as_float(r.b.z); f[7] = __uint_as_float(r.b.w);
}

template <int D, int R> struct gqa_sm {
    static constexpr int SL = (DEC_THREADS / 32) * (32 / (D / 8));   /* slots per block */
    float acc[SL][R][D], m[SL][R], l[SL][R];
};

/* One slot's rows of [u0, u1) (lane l of the slot's D / 8, the warp's rows from u0 + warp * RPW
 * on): the running (m, ls, acc) of the R heads. Row pn (the new token's; -1: none) is taken from
 * kn / vn (D values each, as the cache holds them) instead of the cache, which the fused kernel
 * writes while it runs. */
template <int D, int R, typename T>
__device__ static inline void gqa_rows(const float (&qr)[R][8], const T *kc, const T *vc, long long base, long long rs,
                                       int u0, int u1, int warp, int sub, int l, int pn, const float *kn,
                                       const float *vn, float (&m)[R], float (&ls)[R], float (&acc)[R][8]) {
    constexpr int LPR = D / 8, RPW = 32 / LPR, SL = (DEC_THREADS / 32) * RPW;
    /* the warp's rows: warp-uniform loop (the shuffles need every lane), rows past u1 masked */
    for (int ub = u0 + warp * RPW; ub < u1; ub += SL * DEC_P) {
        row8<T> kr[DEC_P], vr[DEC_P];
#pragma unroll
        for (int p = 0; p < DEC_P; p++) {
            int u = min(ub + sub + p * SL, u1 - 1);
            ld_row(kr[p], kc + base + (long long)u * rs);
            ld_row(vr[p], vc + base + (long long)u * rs);
        }
        float s[DEC_P][R];
#pragma unroll
        for (int p = 0; p < DEC_P; p++) {
            float kf[8];
            row_f(kr[p], kf);
            if (min(ub + sub + p * SL, u1 - 1) == pn)
#pragma unroll
                for (int e = 0; e < 8; e++) kf[e] = kn[l * 8 + e];
#pragma unroll
            for (int j = 0; j < R; j++) {
                float v = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) v += qr[j][e] * kf[e];
#pragma unroll
                for (int o = LPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                s[p][j] = ub + sub + p * SL < u1 ? v : -INFINITY;
            }
        }
        float vf[DEC_P][8];
#pragma unroll
        for (int p = 0; p < DEC_P; p++) {
            row_f(vr[p], vf[p]);
            if (min(ub + sub + p * SL, u1 - 1) == pn)
#pragma unroll
                for (int e = 0; e < 8; e++) vf[p][e] = vn[l * 8 + e];
        }
#pragma unroll
        for (int j = 0; j < R; j++) {
            float mx = m[j];
#pragma unroll
            for (int p = 0; p < DEC_P; p++) mx = fmaxf(mx, s[p][j]);
            float ms = mx == -INFINITY ? 0.0f : mx;   /* no row yet: everything stays 0 */
            float corr = expf(m[j] - ms);
            ls[j] *= corr;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[j][e] *= corr;
#pragma unroll
            for (int p = 0; p < DEC_P; p++) {
                float w = expf(s[p][j] - ms);
                ls[j] += w;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[j][e] += w * vf[p][e];
            }
            m[j] = mx;
        }
    }
}

/* The slots' (m, ls, acc) merged into the chunk's part rows (pr, one of D + 2 per head), or (out
 * != NULL: the chunk is the sequence's only one) into the output rows out[j * D + d] = num / den:
 * what k_decode_merge makes of a single chunk (its weight e^0 = 1), so the same values. */
template <int D, int R>
__device__ static inline void gqa_slots(gqa_sm<D, R> &sm, int slot, int l, const float (&m)[R], const float (&ls)[R],
                                        const float (&acc)[R][8], float *pr, float *out) {
    constexpr int SL = gqa_sm<D, R>::SL;
#pragma unroll
    for (int j = 0; j < R; j++) {
#pragma unroll
        for (int e = 0; e < 8; e++) sm.acc[slot][j][l * 8 + e] = acc[j][e];
        if (l == 0) { sm.m[slot][j] = m[j]; sm.l[slot][j] = ls[j]; }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < R * D; e += DEC_THREADS) {
        int j = e / D, d = e % D;
        float M = -INFINITY;
        for (int t = 0; t < SL; t++) M = fmaxf(M, sm.m[t][j]);
        float num = 0.0f, den = 0.0f;
        for (int t = 0; t < SL; t++) {
            float w = expf(sm.m[t][j] - M);   /* 0 for a slot without rows (m = -inf, acc = 0) */
            num += w * sm.acc[t][j][d];
            den += w * sm.l[t][j];
        }
        if (out) out[(size_t)j * D + d] = num / den;
        else {
            pr[(size_t)j * (D + 2) + d] = num;
            if (d == 0) { pr[(size_t)j * (D + 2) + D] = M; pr[(size_t)j * (D + 2) + D + 1] = den; }
        }
    }
}

template <int D, int R>
__global__ void __launch_bounds__(DEC_THREADS) k_decode_gqa(float *__restrict__ part, const float *__restrict__ q,
                                                            const bf16 *__restrict__ kc, const bf16 *__restrict__ vc,
                                                            const int *seq, const int *pos, int H, int Hkv,
                                                            long long ss, long long gs, long long rs, float scale,
                                                            int CH, int nsplit) {
    constexpr int LPR = D / 8, RPW = 32 / LPR;
    __shared__ gqa_sm<D, R> sm;
    pdl_launch();
    pdl_wait();   /* the cache rows and q of the kernel before */
    const int sp = blockIdx.x, g = blockIdx.y, i = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int sub = lane / LPR, l = lane % LPR, slot = warp * RPW + sub;
    const int L = pos[i] + 1, u0 = sp * CH, u1 = min(L, u0 + CH);
    float *pr = part + ((((size_t)i * Hkv + g) * nsplit + sp) * R) * (D + 2);
    if (u1 <= u0) {   /* past this sequence's length: an empty chunk */
        if (tid < R) { pr[(size_t)tid * (D + 2) + D] = -INFINITY; pr[(size_t)tid * (D + 2) + D + 1] = 0.0f; }
        return;
    }
    float qr[R][8], m[R], ls[R], acc[R][8];
    const float *qi = q + (size_t)i * H * D + (size_t)g * R * D + l * 8;
#pragma unroll
    for (int j = 0; j < R; j++) {
        float4 a = *(const float4 *)(qi + j * D), b = *(const float4 *)(qi + j * D + 4);
        qr[j][0] = a.x * scale; qr[j][1] = a.y * scale; qr[j][2] = a.z * scale; qr[j][3] = a.w * scale;
        qr[j][4] = b.x * scale; qr[j][5] = b.y * scale; qr[j][6] = b.z * scale; qr[j][7] = b.w * scale;
        m[j] = -INFINITY;
        ls[j] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[j][e] = 0.0f;
    }
    const long long base = (long long)seq[i] * ss + (long long)g * gs + l * 8;
    gqa_rows<D, R, bf16>(qr, kc, vc, base, rs, u0, u1, warp, sub, l, -1, NULL, NULL, m, ls, acc);
    gqa_slots<D, R>(sm, slot, l, m, ls, acc, pr, NULL);
}

/* merge the chunks of (sequence i, head h): one block of MERGE_THREADS per row; the chunks'
 * weights e^(m_c - M) in shared memory; each warp sums every 8th chunk over the columns (a lane
 * holds up to 4 columns, 32 apart: coalesced loads, a warp's chunks in flight together), the
 * warps' sums added through shared memory. An empty chunk (l = 0: past the sequence) has weight
 * 0 and is skipped: its values were never written. */
#define MERGE_THREADS 256
/* MLA's value product after the merge (uv != NULL, the fused decode): the merged latent row c of
 * head h (dv = kv_lora_rank values, in shared memory) times W_UV of its kv group, rows dn..dn+dvo-1
 * of kv_b [groups][dn + dvo][dv] (bf16 or float32): out row (i, h) of dvo values, out[e] =
 * sum_c W_UV[e][c] c[c] (a warp per e, lanes over c). */
typedef struct { const void *w; int bf, rep, dn, dvo; } merge_uv;

__global__ void __launch_bounds__(MERGE_THREADS) k_decode_merge(float *out, const float *part, int H, int Hkv, int dv,
                                                                int nsplit, merge_uv uv) {
    extern __shared__ float wsm[];   /* [nsplit] chunk weights, then (uv) the merged row [dv] */
    pdl_launch();   /* the output projection's GEMV may start streaming its weights */
    pdl_wait();     /* the parts */
    __shared__ float red[MERGE_THREADS / 32][128];
    const int row = blockIdx.x, i = row / H, h = row % H, rep = H / Hkv, g = h / rep, j = h % rep;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, NW = MERGE_THREADS / 32;
    const float *p0 = part + (((size_t)i * Hkv + g) * nsplit * rep + j) * (dv + 2);
    const size_t st = (size_t)rep * (dv + 2);   /* from one chunk to the next */
    float M = -INFINITY;
    for (int s = threadIdx.x; s < nsplit; s += blockDim.x) M = fmaxf(M, p0[s * st + dv]);
    M = zb_block_max_f(M);
    double den = 0;
    for (int s = threadIdx.x; s < nsplit; s += blockDim.x) {
        float l = p0[s * st + dv + 1], w = l > 0 ? expf(p0[s * st + dv] - M) : 0.0f;
        wsm[s] = w;
        den += (double)w * l;
    }
    const float dn = (float)zb_block_sum_d(den);   /* its barriers also publish wsm */
    for (int d0 = 0; d0 < dv; d0 += 128) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 2
        for (int s = warp; s < nsplit; s += NW) {
            float w = wsm[s];
            if (w == 0.0f) continue;
            const float *ps = p0 + s * st + d0 + lane;
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (d0 + lane + 32 * k < dv) acc[k] += w * ps[32 * k];
        }
#pragma unroll
        for (int k = 0; k < 4; k++) red[warp][lane + 32 * k] = acc[k];
        __syncthreads();
        if (threadIdx.x < 128 && d0 + threadIdx.x < dv) {
            float num = 0.0f;
            for (int w = 0; w < NW; w++) num += red[w][threadIdx.x];
            if (uv.w) wsm[nsplit + d0 + threadIdx.x] = num / dn;
            else out[(size_t)row * dv + d0 + threadIdx.x] = num / dn;
        }
        __syncthreads();
    }
    if (!uv.w) return;
    const float *cs = wsm + nsplit;
    const size_t gbase = (size_t)(h / uv.rep) * (uv.dn + uv.dvo) * dv + (size_t)uv.dn * dv;
    for (int e = warp; e < uv.dvo; e += NW) {
        float acc = 0.0f;
        const size_t wr = gbase + (size_t)e * dv;
        for (int c = lane; c < dv; c += 32)
            acc += (uv.bf ? __bfloat162float(((const bf16 *)uv.w)[wr + c]) : ((const float *)uv.w)[wr + c]) * cs[c];
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) out[(size_t)row * uv.dvo + e] = acc;
    }
}

/* ---- the attention of a decode step in one kernel ------------------------------------------------
 * k_decode_fused: per (chunk sp of CH positions, KV group g, sequence i) one block of the GQA fast
 * path (D = dqk = dv, R heads per group) that also does what k_decode_qkv_prep and k_decode_merge
 * did around it, so one launch per layer instead of three (S6R2's ncu: 17 us of kernels a layer at
 * 136 positions, a few hundred KB of cache):
 * - each block ropes its R query heads in registers (lane l's 8 columns and, by a shuffle, their
 *   rotate-half partners; k_rope's arithmetic) and reads the slot s = seq[i] at p = pos[s];
 * - the block whose chunk holds p (the last one) ropes the new key row, rounds it and the value
 *   row to the cache's type, stores both into the cache (slot s, row p) and uses those values for
 *   row p (the cache rows it reads through the non-coherent path are the earlier steps');
 * - the chunks of (i, g) are merged by the last of their blocks to finish (a counter per (i, g)
 *   in device memory, atomicAdd after __threadfence; that block sets it back to 0, so a replayed
 *   CUDA graph finds it at 0), with k_decode_merge's arithmetic; a sequence of one chunk (p < CH)
 *   writes its output directly (what the merge makes of one chunk). Past ZB_DEC_ATTN_MERGE_MAX
 *   chunks (16) k_decode_merge runs after the kernel instead (ticket NULL): two kernels a layer.
 * - before its PDL wait, each block fetches its chunk's K and V rows into the L2 (prefetch: safe on
 *   any contents), so that its loads after the wait meet the L2 (ZB_DEC_ATTN_PF=0: not);
 * The query buffer is left unroped (nothing reads it after the attention); posi[i] = p as
 * k_decode_qkv_prep. Same values as the three kernels where they compute in the same order: bf16
 * caches at the same chunking (the merge's double sum of the chunks' weights aside, float32
 * anyway); float32 caches took the general kernel k_decode_part before (another order). */
/* the rotation of a pair with its roundings spelled out (one product rounded, then an FMA), so that
 * every kernel that ropes (k_decode_qkv_prep, k_mla_dec_prep, k_decode_fused) gets the same bits:
 * nvcc's contraction of x1 c - x2 s differs from one kernel to the next */
__device__ static inline float rope_lo(float x1, float x2, float c, float s) { return fmaf(x1, c, __fmul_rn(-x2, s)); }
__device__ static inline float rope_hi(float x1, float x2, float c, float s) { return fmaf(x2, c, __fmul_rn(x1, s)); }
__device__ static inline void out_st(float *p, float v) { *p = v; }
__device__ static inline void out_st(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }
__device__ static inline float as_cached(float x, const float *) { return x; }
__device__ static inline float as_cached(float x, const bf16 *) { return __bfloat162float(__float2bfloat16_rn(x)); }

/* lane l's 8 columns of a float32 head h roped: column c < half pairs with c + half (lane
 * src = l + half / 8 of the same row's lanes, or l - half / 8), at the angles' cos / sin cs, sn;
 * columns past the rotary dim copied. Every lane of the warp calls it (shuffles). */
__device__ static inline void rope8(float *y, const float *h, int l, int src, int half, int dim, const float *cs,
                                    const float *sn) {
    float4 a = *(const float4 *)(h + l * 8), b = *(const float4 *)(h + l * 8 + 4);
    const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int e = 0; e < 8; e++) {
        float xp = __shfl_sync(0xffffffffu, x[e], src);
        int c = l * 8 + e;
        y[e] = c < half ? rope_lo(x[e], xp, cs[e], sn[e]) : c < dim ? rope_hi(xp, x[e], cs[e], sn[e]) : x[e];
    }
}

template <int D, int R, typename T>
__global__ void __launch_bounds__(DEC_THREADS) k_decode_fused(
    zb_rope r, float *__restrict__ out, float *__restrict__ part, int *ticket, const float *__restrict__ q,
    const float *__restrict__ k, const float *__restrict__ v, T *kc, T *vc, const int *seq, const int *pos, int *posi,
    int H, int Hkv, long long ss, long long gs, long long rs, float scale, int CH, int nsplit, int max_T, int pf) {
    constexpr int LPR = D / 8, RPW = 32 / LPR, NW = DEC_THREADS / 32;
    __shared__ gqa_sm<D, R> sm;
    __shared__ float s_new[2][D], s_den[R];
    __shared__ int s_last;
    pdl_launch();   /* the output projection's GEMV may start streaming its weights */
    const int sp = blockIdx.x, g = blockIdx.y, i = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (pf) {   /* the chunk's K and V rows fetched into the L2 while the GEMV before ends: harmless whatever
                 * they hold (the L2 is where the writes of every SM meet), so before the wait */
        constexpr int LN = D * (int)sizeof(T) / 128;   /* 128-byte lines per row */
        const long long b0 = (long long)(seq ? seq[i] : i) * ss + (long long)g * gs;
        const int n = (min(max_T, sp * CH + CH) - sp * CH) * LN;
        for (int e = tid; e < n; e += DEC_THREADS) {
            const long long o = b0 + (long long)(sp * CH + e / LN) * rs + (e % LN) * (128 / (int)sizeof(T));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(kc + o));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(vc + o));
        }
    }
    pdl_wait();     /* q, k, v of the GEMV before */
    const int sub = lane / LPR, l = lane % LPR, slot = warp * RPW + sub;
    const int s = seq ? seq[i] : i, pn = pos[s], L = pn + 1, nz = (L + CH - 1) / CH;
    if (posi && sp == 0 && g == 0 && tid == 0) posi[i] = pn;
    if (sp >= nz) {   /* past this sequence's length (the last block's merge counts nz blocks) */
        if (!ticket && tid < R) {   /* k_decode_merge after this kernel: an empty chunk */
            float *pr = part + ((((size_t)i * Hkv + g) * nsplit + sp) * R + tid) * (D + 2);
            pr[D] = -INFINITY;
            pr[D + 1] = 0.0f;
        }
        return;
    }
    const int u0 = sp * CH, u1 = min(L, u0 + CH);
    /* this lane's angles at position pn: k_rope's arithmetic */
    const int half = r.dim / 2, h8 = half / 8, src = lane + (l < h8 ? h8 : l < 2 * h8 ? -h8 : 0);
    float cs[8], sn[8];
#pragma unroll
    for (int e = 0; e < 8; e++) {
        int c = l * 8 + e, f = c < half ? c : c - half;
        float a = (float)pn * r.inv_freq[f < half ? f : 0];
        cs[e] = cosf(a) * r.mscale;
        sn[e] = sinf(a) * r.mscale;
    }
    float qr[R][8], m[R], ls[R], acc[R][8];
    const float *qi = q + (size_t)i * H * D + (size_t)g * R * D;
#pragma unroll
    for (int j = 0; j < R; j++) {
        float y[8];
        rope8(y, qi + j * D, l, src, half, r.dim, cs, sn);
#pragma unroll
        for (int e = 0; e < 8; e++) { qr[j][e] = y[e] * scale; acc[j][e] = 0.0f; }
        m[j] = -INFINITY;
        ls[j] = 0.0f;
    }
    const long long base = (long long)s * ss + (long long)g * gs + l * 8;
    const bool own = sp == nz - 1;
    if (own && warp == 0) {   /* the new row: k roped, both rounded as the cache holds them */
        float y[8];
        rope8(y, k + ((size_t)i * Hkv + g) * D, l, src, half, r.dim, cs, sn);
        const float *vi = v + ((size_t)i * Hkv + g) * D + l * 8;
        float4 a = *(const float4 *)vi, b = *(const float4 *)(vi + 4);
        const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        if (sub == 0) {
            T *kd = kc + base + (long long)pn * rs, *vd = vc + base + (long long)pn * rs;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                out_st(kd + e, y[e]);
                out_st(vd + e, x[e]);
                s_new[0][l * 8 + e] = as_cached(y[e], kc);
                s_new[1][l * 8 + e] = as_cached(x[e], vc);
            }
        }
    }
    __syncthreads();
    gqa_rows<D, R, T>(qr, kc, vc, base, rs, u0, u1, warp, sub, l, own ? pn : -1, s_new[0], s_new[1], m, ls, acc);
    float *og = out + ((size_t)i * H + (size_t)g * R) * D;
    if (nz == 1 && ticket) {
        gqa_slots<D, R>(sm, slot, l, m, ls, acc, NULL, og);
        return;
    }
    const float *p0 = part + ((size_t)i * Hkv + g) * nsplit * R * (D + 2);
    const size_t st = (size_t)R * (D + 2);   /* from one chunk to the next */
    gqa_slots<D, R>(sm, slot, l, m, ls, acc, (float *)p0 + sp * st, NULL);
    if (!ticket) return;   /* k_decode_merge merges */
    /* the last block of (i, g) to get here merges (threadFenceReduction, CUDA samples) */
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        int *t = ticket + (size_t)i * Hkv + g;
        s_last = atomicAdd(t, 1) == nz - 1;
        if (s_last) *t = 0;   /* every block of (i, g) has counted: ready for the next call */
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    /* k_decode_merge's arithmetic per head j: chunk weights e^(m_c - M) (0 for l = 0), the sum of
     * the weighted l in double, the columns summed over the chunks c = w, w + 8, ... per w < 8,
     * those 8 sums added in order. The other blocks' part rows read from the L2 (__ldcg). */
    float *wsm = &sm.acc[0][0][0];   /* [R][nz]: the slots' values are no longer needed */
    for (int j = warp; j < R; j += NW) {
        const float *pj = p0 + (size_t)j * (D + 2);
        float M = -INFINITY;
        for (int c = lane; c < nz; c += 32) M = fmaxf(M, __ldcg(pj + c * st + D));
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        double den = 0;
        for (int c = lane; c < nz; c += 32) {
            float lc = __ldcg(pj + c * st + D + 1), w = lc > 0 ? expf(__ldcg(pj + c * st + D) - M) : 0.0f;
            wsm[j * nz + c] = w;
            den += (double)w * lc;
        }
        for (int o = 16; o > 0; o >>= 1) den += __shfl_xor_sync(0xffffffffu, den, o);
        if (lane == 0) s_den[j] = (float)den;
    }
    __syncthreads();
    static_assert(MERGE_THREADS / 32 == 8, "k_decode_merge sums its chunks in 8 classes");
    /* the columns: 4 outputs (j, d) a thread, the chunks 8 at a time (c0 + t: chunk t of k_decode_merge's
     * warp t's sequence), the 32 loads of a round issued before their sums, each class summed in
     * increasing c: the merge's order */
    for (int e0 = tid; e0 < R * D; e0 += 4 * DEC_THREADS) {
        float a[4][8], v[4][8];
#pragma unroll
        for (int k = 0; k < 4; k++)
#pragma unroll
            for (int t = 0; t < 8; t++) a[k][t] = 0.0f;
        for (int c0 = 0; c0 < nz; c0 += 8) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int e = e0 + k * DEC_THREADS;
                const float *pe = p0 + (size_t)(e / D) * (D + 2) + e % D;
#pragma unroll
                for (int t = 0; t < 8; t++) v[k][t] = e < R * D && c0 + t < nz ? __ldcg(pe + (c0 + t) * st) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int e = e0 + k * DEC_THREADS;
                const float *wj = wsm + (e / D) * nz;
#pragma unroll
                for (int t = 0; t < 8; t++)
                    if (e < R * D && c0 + t < nz) {
                        const float wc = wj[c0 + t];
                        if (wc != 0.0f) a[k][t] += wc * v[k][t];
                    }
            }
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int e = e0 + k * DEC_THREADS;
            if (e >= R * D) continue;
            float num = 0.0f;
#pragma unroll
            for (int t = 0; t < 8; t++) num += a[k][t];
            og[(size_t)(e / D) * D + e % D] = num / s_den[e / D];
        }
    }
}

/* ZB_DEC_ATTN=old in the environment: the three kernels (qkv_prep, the chunks, the merge) */
static int g_dec_attn = -1;
extern "C" void zb_cuda_decode_attn_fused_set(int on) { g_dec_attn = on < 0 ? -1 : on != 0; }
static int dec_attn_fused_on(void) {
    if (g_dec_attn < 0) {
        const char *e = getenv("ZB_DEC_ATTN");
        g_dec_attn = !(e && !strcmp(e, "old"));
    }
    return g_dec_attn && zb_cuda_dec_fuse();
}

static int g_dec_chunk = 0;   /* 0: chosen per call; else forced positions per block (the benchmark's sweep) */
extern "C" void zb_cuda_decode_set_chunk(int ch) { g_dec_chunk = ch >= 32 ? ch : 0; }

/* positions per block of the fast path: enough blocks for two per SM, at most 512 positions each
 * (ZB_DEC_CHUNK=n in the environment forces n >= 32, for measurements) */
static int gqa_chunk(int nb, int Hkv, int max_T) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("ZB_DEC_CHUNK");
        env = e && atoi(e) >= 32 ? atoi(e) : 0;
    }
    if (env && !g_dec_chunk) return env;
    int CH = 512;
    while (CH > 64 && (long long)nb * Hkv * ((max_T + CH - 1) / CH) < 2LL * zb_cuda_sm_count()) CH /= 2;
    while ((max_T + CH - 1) / CH > 16384) CH *= 2;
    return g_dec_chunk ? g_dec_chunk : CH;
}

static int g_merge_max = -1;
extern "C" void zb_cuda_decode_attn_set_merge_max(int n) { g_merge_max = n; }

extern "C" int zb_cuda_decode_attn_fused(const zb_rope *r, float *out, const float *q, const float *k, const float *v,
                                         void *kc, void *vc, const int *seq_dev, const int *pos_dev, int *posi,
                                         int nb, int max_T, const zb_cuda_cache_attn *a) {
    const int D = a->dqk, rep = a->H / a->Hkv;
    if (!dec_attn_fused_on() || nb <= 0 || max_T <= 0 || a->Hkv <= 0 || a->H % a->Hkv || D != a->dv ||
        (D != 64 && D != 128 && D != 256) || (rep != 1 && rep != 2 && rep != 4 && rep != 8) || r->dim % 16 ||
        r->dim > D || a->row_stride % 8 || a->seq_stride % 8 || a->group_stride % 8 ||
        (((uintptr_t)out | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)kc | (uintptr_t)vc) & 15))
        return 0;
    const int CH = gqa_chunk(nb, a->Hkv, max_T), nsplit = (max_T + CH - 1) / CH;
    if (nsplit > 1024) return 0;   /* the merge's chunk weights in the block's 32 KB */
    /* the chunks merged by the last block of each (sequence, group) up to ZB_DEC_ATTN_MERGE_MAX
     * chunks (default 16), by k_decode_merge after the kernel past it (its 256 threads a head keep
     * more of a long cache's part rows in flight) */
    if (g_merge_max < 0) {
        const char *e = getenv("ZB_DEC_ATTN_MERGE_MAX");
        g_merge_max = e && *e ? atoi(e) : 16;
        if (g_merge_max < 0) g_merge_max = 0;
    }
    const int inblock = nsplit <= g_merge_max;
    float *part = (float *)zb_cuda_scratch(ZB_WS_ATTN2, (size_t)nb * a->H * nsplit * (D + 2) * sizeof(float));
    int *ticket = inblock ? (int *)zb_cuda_scratch_zeroed(ZB_WS_TICKET, (size_t)nb * a->Hkv * sizeof(int)) : NULL;
    if (!part || (inblock && !ticket)) return 1;   /* the error is recorded */
    dim3 grid(nsplit, a->Hkv, nb);
    cudaStream_t st = zb_cuda_stream();
    static int pf = -1;   /* ZB_DEC_ATTN_PF=0: no L2 prefetch of the chunks before the PDL wait */
    if (pf < 0) {
        const char *e = getenv("ZB_DEC_ATTN_PF");
        pf = !(e && !strcmp(e, "0"));
    }
#define ZB_FUSED(DD, RR, TT)                                                                                       \
    pdl_go(k_decode_fused<DD, RR, TT>, grid, dim3(DEC_THREADS), 0, st, *r, out, part, ticket, q, k, v, (TT *)kc,    \
           (TT *)vc, seq_dev, pos_dev, posi, a->H, a->Hkv, a->seq_stride, a->group_stride, a->row_stride, a->scale, \
           CH, nsplit, max_T, pf)
#define ZB_FUSED_R(DD, TT)                                                                                         \
    switch (rep) {                                                                                                 \
    case 1: ZB_FUSED(DD, 1, TT); break;                                                                            \
    case 2: ZB_FUSED(DD, 2, TT); break;                                                                            \
    case 4: ZB_FUSED(DD, 4, TT); break;                                                                            \
    default: ZB_FUSED(DD, 8, TT); break;                                                                           \
    }
#define ZB_FUSED_D(TT)                                                                                             \
    if (D == 64) { ZB_FUSED_R(64, TT) }                                                                            \
    else if (D == 128) { ZB_FUSED_R(128, TT) }                                                                     \
    else { ZB_FUSED_R(256, TT) }
    if (a->cache_bf16) { ZB_FUSED_D(bf16) }
    else { ZB_FUSED_D(float) }
#undef ZB_FUSED_D
#undef ZB_FUSED_R
#undef ZB_FUSED
    ZB_CUDA_LAUNCHED("decode attention (fused)");
    if (!inblock) {
        merge_uv none = {NULL, 0, 1, 0, 0};
        pdl_go(k_decode_merge, dim3(nb * a->H), dim3(MERGE_THREADS), (size_t)nsplit * sizeof(float), st, out,
               (const float *)part, a->H, a->Hkv, D, nsplit, none);
        ZB_CUDA_LAUNCHED("decode attention merge");
    }
    return 1;
}

/* the kernel's limits: heads per group, and the queries and 32 scores per head in 96 KB */
extern "C" int zb_cuda_decode_attn_ok(int H, int Hkv, int dqk) {
    return Hkv > 0 && H % Hkv == 0 && H / Hkv <= DEC_MAXREP && (size_t)(H / Hkv) * (dqk + 32 + 2) * 4 <= 96 * 1024;
}


template <int D>
static void gqa_launch(dim3 grid, float *part, const float *q, const void *kc, const void *vc, const int *seq,
                       const int *pos, const zb_cuda_cache_attn *a, int CH, int nsplit) {
    const bf16 *k = (const bf16 *)kc, *v = (const bf16 *)vc;
    cudaStream_t st = zb_cuda_stream();
#define ZB_GQA(R)                                                                                              \
    pdl_go(k_decode_gqa<D, R>, grid, dim3(DEC_THREADS), 0, st, part, q, k, v, seq, pos, a->H, a->Hkv,          \
           a->seq_stride, a->group_stride, a->row_stride, a->scale, CH, nsplit)
    switch (a->H / a->Hkv) {
    case 1: ZB_GQA(1); break;
    case 2: ZB_GQA(2); break;
    case 4: ZB_GQA(4); break;
    default: ZB_GQA(8); break;
    }
#undef ZB_GQA
}

/* the fast path's shapes: bf16 caches, K and V rows of the same width, 16-byte aligned rows */
static int gqa_fast(const float *q, const void *kc, const void *vc, const zb_cuda_cache_attn *a) {
    int rep = a->H / a->Hkv, D = a->dqk;
    return a->cache_bf16 && D == a->dv && (D == 64 || D == 128 || D == 256) &&
           (rep == 1 || rep == 2 || rep == 4 || rep == 8) && a->row_stride % 8 == 0 && a->seq_stride % 8 == 0 &&
           a->group_stride % 8 == 0 && !(((uintptr_t)q | (uintptr_t)kc | (uintptr_t)vc) & 15);
}

/* out [nb, H*dv] for one new token per sequence (position pos[i], already in the cache); the
 * caches as in zb_cuda_cache_attn; max_T bounds the positions (the number of chunks). */
extern "C" void zb_cuda_decode_attn(float *out, const float *q, const void *kc, const void *vc, const int *seq_dev,
                                    const int *pos_dev, int nb, int max_T, const zb_cuda_cache_attn *a) {
    if (nb <= 0 || max_T <= 0) return;
    int rep = a->H / a->Hkv, dqk = a->dqk, fast = gqa_fast(q, kc, vc, a), CH;
    size_t smem = 0;
    if (fast) CH = gqa_chunk(nb, a->Hkv, max_T);
    else {   /* positions per block, fewer when the heads' scores and queries would not fit */
        CH = 256;
        while (CH > 32 && (size_t)rep * (dqk + CH) * 4 > 96 * 1024) CH /= 2;
        smem = ((size_t)rep * (dqk + CH) + 2 * rep) * sizeof(float);
    }
    static int attr = 0;
    if (!attr) {
        cudaFuncSetAttribute(k_decode_part, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
        cudaFuncSetAttribute(k_decode_merge, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
        attr = 1;
    }
    int nsplit = (max_T + CH - 1) / CH;
    if ((size_t)nsplit * sizeof(float) > 96 * 1024) {
        zb_cuda_note_error2("decode attention", "more chunks than the merge holds (max_T too long)", __FILE__, __LINE__);
        return;
    }
    float *part = (float *)zb_cuda_scratch(ZB_WS_ATTN2, (size_t)nb * a->H * nsplit * (a->dv + 2) * sizeof(float));
    if (!part) return;
    dim3 grid(nsplit, a->Hkv, nb);
    if (fast) {
        if (dqk == 64) gqa_launch<64>(grid, part, q, kc, vc, seq_dev, pos_dev, a, CH, nsplit);
        else if (dqk == 128) gqa_launch<128>(grid, part, q, kc, vc, seq_dev, pos_dev, a, CH, nsplit);
        else gqa_launch<256>(grid, part, q, kc, vc, seq_dev, pos_dev, a, CH, nsplit);
    } else {
        k_decode_part<<<grid, DEC_THREADS, smem, zb_cuda_stream()>>>(part, q, kc, vc, seq_dev, pos_dev, a->H, a->Hkv, dqk,
                                                                      a->dv, a->seq_stride, a->group_stride,
                                                                      a->row_stride, a->scale, a->cache_bf16, CH, nsplit);
    }
    ZB_CUDA_LAUNCHED("decode attention");
    merge_uv none = {NULL, 0, 1, 0, 0};
    pdl_go(k_decode_merge, dim3(nb * a->H), dim3(MERGE_THREADS), (size_t)nsplit * sizeof(float), zb_cuda_stream(), out,
           (const float *)part, a->H, a->Hkv, a->dv, nsplit, none);
    ZB_CUDA_LAUNCHED("decode attention merge");
}

/* ---- MLA decode over the latent cache: one fused tensor-core pass -------------------------------
 * MLA's absorbed decode attends with all H heads of a token to ONE latent row per position (kv
 * group of width dqk = kv_lora_rank + rope), and its values are the first dv columns of the same
 * row. Per (sequence, chunk of CH positions) one block keeps the H (padded to 16) bf16 queries in
 * shared memory and walks the chunk in tiles of MLA_TN rows: the tile is read from the cache once
 * (16-byte streamed loads; the next tile's loads are issued before the current one's products),
 * S = Q K^T on the tensor cores (bf16 in, float32 sums), the online softmax per head (float32;
 * the probabilities rounded to bf16 for the product, as the cuBLAS form), O = O corr + P V on the
 * tensor cores over the same rows. The chunk's (O, max, sum) per head go to k_decode_merge's part
 * format (Hkv = 1). Fragments pass through shared memory (load/store_matrix_sync), so no
 * register layout of the fragments is assumed. */
#include <mma.h>

#define MLA_TN 64          /* cache rows per tile */
#define MLA_THREADS 256    /* 8 warps */
#define MLA_MAXD 256       /* dqk (the row width) at most */
#define MLA_PRE ((MLA_TN * (MLA_MAXD / 8) + MLA_THREADS - 1) / MLA_THREADS)   /* 16-byte loads per thread per tile */

typedef struct { int Hp, ldq, lds, ldp, ldo; size_t q, k, s, p, o, ml, bytes; } mla_smem;

/* the shared-memory plan: every operand 128-byte aligned, leading dimensions as wmma needs them
 * (multiples of 8 bf16 / 4 floats, tile starts 32-byte aligned) */
static __host__ __device__ mla_smem mla_plan(int H, int dqk, int dv) {
    mla_smem p;
    p.Hp = (H + 15) / 16 * 16;
    p.ldq = dqk + 8;            /* bf16 rows of Q and of the tile */
    p.lds = MLA_TN + 4;         /* float32 scores */
    p.ldp = MLA_TN + 8;         /* bf16 probabilities */
    p.ldo = dv + 4;             /* float32 outputs */
    size_t off = 0;
#define MLA_TAKE(f, n) do { p.f = off; off += ((size_t)(n) + 127) / 128 * 128; } while (0)
    MLA_TAKE(q, (size_t)p.Hp * p.ldq * 2);
    MLA_TAKE(k, (size_t)MLA_TN * p.ldq * 2);
    MLA_TAKE(s, (size_t)p.Hp * p.lds * 4);
    MLA_TAKE(p, (size_t)p.Hp * p.ldp * 2);
    MLA_TAKE(o, (size_t)p.Hp * p.ldo * 4);
    MLA_TAKE(ml, (size_t)3 * p.Hp * 4);
#undef MLA_TAKE
    p.bytes = off;
    return p;
}

/* the tile of rows [t0, t0 + MLA_TN) into registers: zeros past u1 (no stale value reaches a
 * product: a probability 0 times a NaN would be NaN) */
__device__ static inline void mla_fetch(uint4 *pre, const bf16 *cache, long long base, long long rs, int t0, int u1,
                                        int nvec) {
#pragma unroll
    for (int k = 0; k < MLA_PRE; k++) {
        int e = threadIdx.x + k * MLA_THREADS, r = e / nvec, c = e % nvec;
        uint4 z = make_uint4(0u, 0u, 0u, 0u);
        if (r < MLA_TN && t0 + r < u1) z = ld_stream(cache + base + (long long)(t0 + r) * rs + c * 8);
        pre[k] = z;
    }
}

__global__ void __launch_bounds__(MLA_THREADS) k_decode_mla(float *__restrict__ part, const float *__restrict__ q,
                                                            const bf16 *__restrict__ cache, const int *seq,
                                                            const int *pos, int H, int dqk, int dv, long long ss,
                                                            long long rs, float scale, int CH, int nsplit) {
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char msm[];
    const mla_smem P = mla_plan(H, dqk, dv);
    bf16 *Qs = (bf16 *)(msm + P.q), *Ks = (bf16 *)(msm + P.k), *Ps = (bf16 *)(msm + P.p);
    float *Ss = (float *)(msm + P.s), *Os = (float *)(msm + P.o), *Ms = (float *)(msm + P.ml);
    float *Ls = Ms + P.Hp, *Cs = Ls + P.Hp;
    const int sp = blockIdx.x, i = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int L = pos[i] + 1, u0 = sp * CH, u1 = min(L, u0 + CH), Hp = P.Hp, nvec = dqk / 8;
    float *pr = part + ((size_t)i * nsplit + sp) * H * (dv + 2);
    if (u1 <= u0) {   /* past this sequence's length: an empty chunk (weight 0 in the merge) */
        for (int j = tid; j < H; j += MLA_THREADS) { pr[(size_t)j * (dv + 2) + dv] = -INFINITY; pr[(size_t)j * (dv + 2) + dv + 1] = 0.0f; }
        return;
    }
    const long long base = (long long)seq[i] * ss;
    uint4 pre[MLA_PRE];
    mla_fetch(pre, cache, base, rs, u0, u1, nvec);
    const float *qi = q + (size_t)i * H * dqk;
    for (int e = tid; e < Hp * dqk; e += MLA_THREADS) {
        int h = e / dqk, c = e % dqk;
        Qs[(size_t)h * P.ldq + c] = __float2bfloat16_rn(h < H ? qi[(size_t)h * dqk + c] : 0.0f);
    }
    for (int e = tid; e < Hp * dv; e += MLA_THREADS) Os[(size_t)(e / dv) * P.ldo + e % dv] = 0.0f;
    for (int h = tid; h < Hp; h += MLA_THREADS) { Ms[h] = -INFINITY; Ls[h] = 0.0f; }
    const int mt = Hp / 16, st_tiles = mt * (MLA_TN / 16), ot_tiles = mt * (dv / 16);
    for (int t0 = u0; t0 < u1; t0 += MLA_TN) {
        __syncthreads();   /* the previous tile's products are done with Ks and Ps */
#pragma unroll
        for (int k = 0; k < MLA_PRE; k++) {
            int e = tid + k * MLA_THREADS, r = e / nvec, c = e % nvec;
            if (r < MLA_TN) *(uint4 *)(Ks + (size_t)r * P.ldq + c * 8) = pre[k];
        }
        __syncthreads();
        if (t0 + MLA_TN < u1) mla_fetch(pre, cache, base, rs, t0 + MLA_TN, u1, nvec);   /* in flight meanwhile */
        /* S = Q K^T: a 16 x 16 tile per warp at a time */
        for (int t = warp; t < st_tiles; t += MLA_THREADS / 32) {
            int mi = t / (MLA_TN / 16), nj = t % (MLA_TN / 16);
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int k0 = 0; k0 < dqk; k0 += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, Qs + (size_t)mi * 16 * P.ldq + k0, P.ldq);
                wmma::load_matrix_sync(fb, Ks + (size_t)nj * 16 * P.ldq + k0, P.ldq);   /* K^T: column n = row n of K */
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(Ss + (size_t)mi * 16 * P.lds + nj * 16, acc, P.lds, wmma::mem_row_major);
        }
        __syncthreads();
        /* online softmax: a warp per head row, two columns per lane (MLA_TN == 64) */
        for (int h = warp; h < Hp; h += MLA_THREADS / 32) {
            const float *s = Ss + (size_t)h * P.lds;
            float s0 = t0 + lane < u1 ? s[lane] * scale : -INFINITY;
            float s1 = t0 + lane + 32 < u1 ? s[lane + 32] * scale : -INFINITY;
            float mx = fmaxf(s0, s1);
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float mold = Ms[h], mnew = fmaxf(mold, mx);   /* finite: row t0 < u1 is in the tile */
            float p0 = expf(s0 - mnew), p1 = expf(s1 - mnew), sum = p0 + p1;
            Ps[(size_t)h * P.ldp + lane] = __float2bfloat16_rn(p0);
            Ps[(size_t)h * P.ldp + lane + 32] = __float2bfloat16_rn(p1);
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane == 0) {
                float corr = expf(mold - mnew);   /* 0 on the first tile (mold = -inf) */
                Ls[h] = Ls[h] * corr + sum;
                Ms[h] = mnew;
                Cs[h] = corr;
            }
        }
        __syncthreads();
        for (int e = tid; e < Hp * dv; e += MLA_THREADS) Os[(size_t)(e / dv) * P.ldo + e % dv] *= Cs[e / dv];
        __syncthreads();
        /* O += P V, V = the first dv columns of the same rows */
        for (int t = warp; t < ot_tiles; t += MLA_THREADS / 32) {
            int mi = t / (dv / 16), nj = t % (dv / 16);
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            float *op = Os + (size_t)mi * 16 * P.ldo + nj * 16;
            wmma::load_matrix_sync(acc, op, P.ldo, wmma::mem_row_major);
#pragma unroll
            for (int k0 = 0; k0 < MLA_TN; k0 += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, Ps + (size_t)mi * 16 * P.ldp + k0, P.ldp);
                wmma::load_matrix_sync(fb, Ks + (size_t)k0 * P.ldq + nj * 16, P.ldq);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(op, acc, P.ldo, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int e = tid; e < H * dv; e += MLA_THREADS) {
        int h = e / dv, c = e % dv;
        pr[(size_t)h * (dv + 2) + c] = Os[(size_t)h * P.ldo + c];
    }
    for (int h = tid; h < H; h += MLA_THREADS) {
        pr[(size_t)h * (dv + 2) + dv] = Ms[h];
        pr[(size_t)h * (dv + 2) + dv + 1] = Ls[h];
    }
}

/* ---- MLA decode with the scores and the output in registers (mma.sync) --------------------------
 * The wmma kernel above passes every product through shared memory (scores, probabilities, and
 * the output rescaled there each tile) behind four barriers per 64-row tile: at batch 48 it ran
 * at ~20 TFLOP/s, slower than the cache's read time by 5x. This one keeps each warp's scores,
 * probabilities and output in registers in the fragment layouts that the PTX ISA documents for
 * mma.sync.m16n8k16 (section "Matrix Fragments for mma.m16n8k16"): warp (ht, pg) of a block owns
 * heads [16 ht, 16 ht + 16) and rows [32 pg, 32 pg + 32) of every 64-row tile; the tiles come
 * through a ring of MM_ST stages filled by cp.async (one barrier per tile, the next tiles' loads in
 * flight during the products); the score accumulators become the A operand of P V directly (the
 * accumulator layout of two n8 tiles is the A layout of one k16 step, as in flash-attention 2);
 * the two row groups of a head tile are merged through shared memory at the end. Same part
 * format and merge as the other decode kernels. */
#define MM_TN 64   /* cache rows per tile: two row groups of 32 */
#define MM_ST 3    /* stages of the ring */
#define MM_QV 8    /* float4 query loads in flight per thread */

typedef struct { int WH, ldk; size_t k, bytes; } mm_smem;

/* Q [16 WH, ldk] bf16 at 0, the ring (reused by the final merge) after it; ldk = dqk + 8 makes a
 * row an odd number of 16-byte units, so the 8 rows an ldmatrix reads fall on distinct banks */
static __host__ __device__ mm_smem mm_plan(int H, int dqk, int dv) {
    mm_smem p;
    p.WH = (H + 15) / 16;
    p.ldk = dqk + 8;
    p.k = ((size_t)p.WH * 16 * p.ldk * 2 + 127) / 128 * 128;
    size_t ring = (size_t)MM_ST * MM_TN * p.ldk * 2, mrg = (size_t)p.WH * (16 * ((size_t)dv + 4) + 32) * 4;
    p.bytes = p.k + (ring > mrg ? ring : mrg);
    return p;
}

__device__ static inline void cp_async16(void *smem, const void *gmem, int bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
}
__device__ static inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ static inline void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
/* four 8x8 bf16 matrices from shared memory (TR: transposed), addresses from lanes 8i..8i+7 */
template <bool TR> __device__ static inline void ldsm_x4(unsigned *r, const bf16 *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    if (TR)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s) : "memory");
}
/* c[16 x 8] += a[16 x 16] b[16 x 8], bf16 in, float32 sums */
__device__ static inline void mma_bf16(float *c, const unsigned *a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ static inline unsigned bf2_bits(__nv_bfloat162 v) {
    unsigned r;
    memcpy(&r, &v, 4);
    return r;
}

/* tile rows [t0, t0 + MM_TN) of the chunk into the ring: 16-byte pieces, zeros past u1 (a
 * probability 0 times a stale NaN would be NaN) */
__device__ static inline void mm_load(bf16 *dst, const bf16 *cache, long long base, long long rs, int t0, int u1,
                                      int nvec, int ldk) {
    /* piece e = threadIdx.x + k blockDim.x is (row e / nvec, column e % nvec): stepped, no division */
    const int dr = blockDim.x / nvec, dc = blockDim.x - dr * nvec;
    int r = threadIdx.x / nvec, c = threadIdx.x - r * nvec;
    for (; r < MM_TN; r += dr, c += dc) {
        if (c >= nvec) { c -= nvec; r++; if (r >= MM_TN) break; }
        int ok = t0 + r < u1;
        cp_async16(dst + (size_t)r * ldk + c * 8, cache + base + (long long)(ok ? t0 + r : t0) * rs + c * 8, ok ? 16 : 0);
    }
}

/* KTM: the most k16 steps of a row (dqk / 16), NTM: the most n8 tiles of the values (dv / 8, even);
 * the loops over them are unrolled and guarded by the call's KT, NT, so the arrays stay in registers */
template <int KTM, int NTM>
__global__ void __launch_bounds__(256) k_decode_mla_mma(float *__restrict__ part, const float *__restrict__ q,
                                                        const bf16 *__restrict__ cache, const int *seq, const int *pos,
                                                        int H, int dqk, int dv, long long ss, long long rs, float scale,
                                                        int CH, int nsplit) {
    extern __shared__ __align__(128) unsigned char msm[];
    const mm_smem P = mm_plan(H, dqk, dv);
    pdl_launch();
    pdl_wait();   /* the cache row and queries of the prep kernel */
    bf16 *Qs = (bf16 *)msm, *Ks = (bf16 *)(msm + P.k);
    const int sp = blockIdx.x, i = blockIdx.y, tid = threadIdx.x, nthr = blockDim.x;
    const int warp = tid >> 5, lane = tid & 31, ht = warp >> 1, pg = warp & 1, g = lane >> 2, t4 = lane & 3;
    const int L = pos[i] + 1, u0 = sp * CH, u1 = min(L, u0 + CH), ldk = P.ldk, nvec = dqk / 8;
    const int KT = dqk / 16, NT = dv / 8;
    float *pr = part + ((size_t)i * nsplit + sp) * H * (dv + 2);
    if (u1 <= u0) {   /* past this sequence's length: an empty chunk (weight 0 in the merge) */
        for (int j = tid; j < H; j += nthr) { pr[(size_t)j * (dv + 2) + dv] = -INFINITY; pr[(size_t)j * (dv + 2) + dv + 1] = 0.0f; }
        return;
    }
    const long long base = (long long)seq[i] * ss;
    const int ntile = (u1 - u0 + MM_TN - 1) / MM_TN;
#pragma unroll
    for (int s = 0; s < MM_ST - 1; s++) {
        if (s < ntile) mm_load(Ks + (size_t)s * MM_TN * ldk, cache, base, rs, u0 + s * MM_TN, u1, nvec, ldk);
        cp_async_commit();   /* empty groups too: the waits below count groups */
    }
    /* the queries to bf16 in shared memory: float4 pieces, MM_QV loads in flight per thread before
     * their stores (a load then a store per element waited a whole load latency each: ~17 us a
     * block in S4R1) */
    {
        const float *qi = q + (size_t)i * H * dqk;
        const int nq4 = dqk / 4, tot = P.WH * 16 * nq4;
        for (int e0 = tid; e0 < tot; e0 += MM_QV * nthr) {
            float4 v[MM_QV];
#pragma unroll
            for (int k = 0; k < MM_QV; k++) {
                int e = e0 + k * nthr, h = e / nq4;
                v[k] = e < tot && h < H ? *(const float4 *)(qi + (size_t)h * dqk + (e - h * nq4) * 4)
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int k = 0; k < MM_QV; k++) {
                int e = e0 + k * nthr, h = e / nq4;
                if (e < tot) {
                    bf16 *d = Qs + (size_t)h * ldk + (e - h * nq4) * 4;
                    *(__nv_bfloat162 *)d = __floats2bfloat162_rn(v[k].x, v[k].y);
                    *(__nv_bfloat162 *)(d + 2) = __floats2bfloat162_rn(v[k].z, v[k].w);
                }
            }
        }
    }
    float o[NTM][4];
#pragma unroll
    for (int n = 0; n < NTM; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;   /* rows g and g + 8 of the head tile */
    /* ldmatrix addresses: A (Q) rows lane % 16, column half lane / 16; B = K^T (rows of the tile,
     * non-transposed: n = row) rows (lane & 7) + 8 (lane >> 4), column half (lane >> 3) & 1; V
     * (transposed: k = row) rows (lane & 7) + 8 ((lane >> 3) & 1), column half lane >> 4 */
    const bf16 *qa = Qs + (size_t)(ht * 16 + (lane & 15)) * ldk + (lane >> 4) * 8;
    const int kro = (lane & 7) + ((lane >> 4) << 3), kco = ((lane >> 3) & 1) * 8;
    const int vro = (lane & 7) + (((lane >> 3) & 1) << 3), vco = (lane >> 4) * 8;
    for (int t = 0; t < ntile; t++) {
        cp_async_wait<MM_ST - 2>();   /* this thread's pieces of tile t have landed */
        __syncthreads();              /* everyone's; and tile t - 1's stage is free again */
        if (t + MM_ST - 1 < ntile)
            mm_load(Ks + (size_t)((t + MM_ST - 1) % MM_ST) * MM_TN * ldk, cache, base, rs, u0 + (t + MM_ST - 1) * MM_TN,
                    u1, nvec, ldk);
        cp_async_commit();
        const bf16 *Kt = Ks + ((size_t)(t % MM_ST) * MM_TN + pg * 32) * ldk;
        const int r0 = u0 + t * MM_TN + pg * 32;   /* the position of the warp's first row */
        if (r0 >= u1) continue;                    /* warp-uniform: all its rows past the chunk */
        /* S = Q K^T over the warp's 32 rows: s[j] = rows 8j..8j+7 (c0 c1: head g, rows 2 t4 + 0/1;
         * c2 c3: head g + 8) */
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        const bf16 *kb = Kt + (size_t)kro * ldk + kco;
#pragma unroll
        for (int kt = 0; kt < KTM; kt++) {
            if (kt < KT) {
                unsigned a[4], b[4], c[4];
                ldsm_x4<false>(a, qa + kt * 16);
                ldsm_x4<false>(b, kb + kt * 16);
                ldsm_x4<false>(c, kb + (size_t)16 * ldk + kt * 16);
                mma_bf16(s[0], a, b[0], b[1]);
                mma_bf16(s[1], a, b[2], b[3]);
                mma_bf16(s[2], a, c[0], c[1]);
                mma_bf16(s[3], a, c[2], c[3]);
            }
        }
        /* online softmax: a row's max over the quad of lanes holding it */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                bool ok = r0 + 8 * j + 2 * t4 + e < u1;
                s[j][e] = ok ? s[j][e] * scale : -INFINITY;
                s[j][2 + e] = ok ? s[j][2 + e] * scale : -INFINITY;
                mx0 = fmaxf(mx0, s[j][e]);
                mx1 = fmaxf(mx1, s[j][2 + e]);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);   /* finite: row r0 < u1 is scored */
        const float b0 = n0 == -INFINITY ? 0.0f : n0, b1 = n1 == -INFINITY ? 0.0f : n1;
        const float c0 = expf(m0 - b0), c1 = expf(m1 - b1);     /* 0 on the warp's first tile */
        m0 = n0;
        m1 = n1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int n = 0; n < NTM; n++) {
            o[n][0] *= c0; o[n][1] *= c0;
            o[n][2] *= c1; o[n][3] *= c1;
        }
        /* probabilities rounded to bf16 (the product's operand; the sums l take the same rounded
         * values): pa[kk] = the A fragment of rows 16 kk..16 kk + 15 = s tiles 2 kk, 2 kk + 1 */
        unsigned pa[2][4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            __nv_bfloat162 p01 = __floats2bfloat162_rn(expf(s[j][0] - b0), expf(s[j][1] - b0));
            __nv_bfloat162 p23 = __floats2bfloat162_rn(expf(s[j][2] - b1), expf(s[j][3] - b1));
            float2 f01 = __bfloat1622float2(p01), f23 = __bfloat1622float2(p23);
            l0 += f01.x + f01.y;
            l1 += f23.x + f23.y;
            pa[j >> 1][(j & 1) * 2] = bf2_bits(p01);
            pa[j >> 1][(j & 1) * 2 + 1] = bf2_bits(p23);
        }
        /* O += P V, V = the first dv columns of the same rows, two n8 tiles per ldmatrix */
        const bf16 *vb = Kt + (size_t)vro * ldk + vco;
#pragma unroll
        for (int kk = 0; kk < 2; kk++)
#pragma unroll
            for (int np = 0; np < NTM / 2; np++) {
                if (2 * np < NT) {
                    unsigned b[4];
                    ldsm_x4<true>(b, vb + (size_t)kk * 16 * ldk + np * 16);
                    mma_bf16(o[2 * np], pa[kk], b[0], b[1]);
                    mma_bf16(o[2 * np + 1], pa[kk], b[2], b[3]);
                }
            }
    }
    cp_async_wait<0>();
    /* the quad's partial sums (the max is the quad's already) */
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    __syncthreads();   /* the ring is free: the merge's space */
    const int ldo = dv + 4;
    float *Mo = (float *)(msm + P.k) + (size_t)ht * (16 * ldo + 32), *Mm = Mo + 16 * ldo, *Ml = Mm + 16;
    if (pg == 1) {
#pragma unroll
        for (int n = 0; n < NTM; n++)
            if (n < NT) {
                int c = n * 8 + 2 * t4;
                Mo[g * ldo + c] = o[n][0]; Mo[g * ldo + c + 1] = o[n][1];
                Mo[(g + 8) * ldo + c] = o[n][2]; Mo[(g + 8) * ldo + c + 1] = o[n][3];
            }
        if (t4 == 0) { Mm[g] = m0; Mm[g + 8] = m1; Ml[g] = l0; Ml[g + 8] = l1; }
    }
    __syncthreads();
    if (pg == 0) {
        const float p0 = Mm[g], p1 = Mm[g + 8];
        const float M0 = fmaxf(m0, p0), M1 = fmaxf(m1, p1);   /* finite: the chunk's first row is group 0's */
        const float wa0 = m0 == -INFINITY ? 0.0f : expf(m0 - M0), wb0 = p0 == -INFINITY ? 0.0f : expf(p0 - M0);
        const float wa1 = m1 == -INFINITY ? 0.0f : expf(m1 - M1), wb1 = p1 == -INFINITY ? 0.0f : expf(p1 - M1);
        const int h0 = ht * 16 + g, h1 = h0 + 8;
#pragma unroll
        for (int n = 0; n < NTM; n++)
            if (n < NT) {
                int c = n * 8 + 2 * t4;
                if (h0 < H)
                    *(float2 *)(pr + (size_t)h0 * (dv + 2) + c) =
                        make_float2(o[n][0] * wa0 + Mo[g * ldo + c] * wb0, o[n][1] * wa0 + Mo[g * ldo + c + 1] * wb0);
                if (h1 < H)
                    *(float2 *)(pr + (size_t)h1 * (dv + 2) + c) = make_float2(
                        o[n][2] * wa1 + Mo[(g + 8) * ldo + c] * wb1, o[n][3] * wa1 + Mo[(g + 8) * ldo + c + 1] * wb1);
            }
        if (t4 == 0) {
            if (h0 < H) { pr[(size_t)h0 * (dv + 2) + dv] = M0; pr[(size_t)h0 * (dv + 2) + dv + 1] = l0 * wa0 + Ml[g] * wb0; }
            if (h1 < H) { pr[(size_t)h1 * (dv + 2) + dv] = M1; pr[(size_t)h1 * (dv + 2) + dv + 1] = l1 * wa1 + Ml[g + 8] * wb1; }
        }
    }
}

/* which kernel: -1 not yet read from ZB_MLA_DECODE ("wmma": the shared-memory kernel above; else
 * the register kernel where it takes the shape), 0 the register kernel, 1 the wmma kernel */
static int g_mla_kernel = -1;
extern "C" void zb_cuda_decode_mla_set_kernel(int k) { g_mla_kernel = k == 0 || k == 1 ? k : -1; }

/* the register kernel's shapes: dqk <= 256, dv <= 160 (its output fragments), H <= 64 */
static int mla_mma_ok(const zb_cuda_cache_attn *a) {
    return a->dqk <= 256 && a->dv <= 160 && a->H <= 64 && mm_plan(a->H, a->dqk, a->dv).bytes <= 200 * 1024;
}

extern "C" int zb_cuda_decode_mla_ok(const void *kc, const void *vc, const zb_cuda_cache_attn *a) {
    return a->cache_bf16 && kc == vc && a->Hkv == 1 && a->H >= 1 && a->H <= 64 && a->dqk % 16 == 0 &&
           a->dqk <= MLA_MAXD && a->dv % 16 == 0 && a->dv >= 16 && a->dv <= a->dqk && a->group_stride == 0 &&
           a->row_stride % 8 == 0 && a->seq_stride % 8 == 0 && !((uintptr_t)kc & 15) &&
           mla_plan(a->H, a->dqk, a->dv).bytes <= 200 * 1024;
}

static void decode_mla(float *out, const float *q, const void *cache, const int *seq_dev, const int *pos_dev, int nb,
                       int max_T, const zb_cuda_cache_attn *a, merge_uv uv) {
    if (nb <= 0 || max_T <= 0) return;
    if (!zb_cuda_decode_mla_ok(cache, cache, a)) {
        zb_cuda_note_error2("MLA decode attention", "shape outside the fused kernel's", __FILE__, __LINE__);
        return;
    }
    if (g_mla_kernel < 0) {
        const char *e = getenv("ZB_MLA_DECODE");
        g_mla_kernel = e && !strcmp(e, "wmma") ? 1 : 0;
    }
    const int mma = g_mla_kernel == 0 && mla_mma_ok(a) && !((uintptr_t)q & 15);   /* float4 query loads */
    int CH = 512;
    if (mma) {
        /* positions per block: 512 while the batch fills the GPU (batch 48 at 8k: 768 blocks, two
         * per SM), fewer for small batches so that the chunks still spread over the SMs (batch 1
         * at 8k: 64 blocks of 128); a multiple of the tile */
        while (CH > 2 * MM_TN && (long long)nb * ((max_T + CH - 1) / CH) < zb_cuda_sm_count()) CH /= 2;
        while ((max_T + CH - 1) / CH > 16384) CH *= 2;
        if (g_dec_chunk) CH = (g_dec_chunk + MM_TN - 1) / MM_TN * MM_TN;
    } else {
        /* positions per block: a multiple of the tile, by max_T alone (at most 16384 chunks) */
        while ((max_T + CH - 1) / CH > 16384) CH *= 2;
        if (g_dec_chunk) CH = (g_dec_chunk + MLA_TN - 1) / MLA_TN * MLA_TN;
    }
    int nsplit = (max_T + CH - 1) / CH;
    static int attr = 0;
    if (!attr) {
        cudaFuncSetAttribute(k_decode_mla, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
        cudaFuncSetAttribute(k_decode_mla_mma<16, 20>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
        cudaFuncSetAttribute(k_decode_mla_mma<8, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
        cudaFuncSetAttribute(k_decode_merge, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
        attr = 1;
    }
    float *part = (float *)zb_cuda_scratch(ZB_WS_ATTN2, (size_t)nb * a->H * nsplit * (a->dv + 2) * sizeof(float));
    if (!part) return;
    dim3 grid(nsplit, nb);
    if (mma) {
        mm_smem P = mm_plan(a->H, a->dqk, a->dv);
        if (a->dqk <= 128 && a->dv <= 64)
            pdl_go(k_decode_mla_mma<8, 8>, grid, dim3(64 * P.WH), P.bytes, zb_cuda_stream(), part, q,
                   (const bf16 *)cache, seq_dev, pos_dev, a->H, a->dqk, a->dv, a->seq_stride, a->row_stride, a->scale,
                   CH, nsplit);
        else
            pdl_go(k_decode_mla_mma<16, 20>, grid, dim3(64 * P.WH), P.bytes, zb_cuda_stream(), part, q,
                   (const bf16 *)cache, seq_dev, pos_dev, a->H, a->dqk, a->dv, a->seq_stride, a->row_stride, a->scale,
                   CH, nsplit);
    } else {
        mla_smem P = mla_plan(a->H, a->dqk, a->dv);
        k_decode_mla<<<grid, MLA_THREADS, P.bytes, zb_cuda_stream()>>>(part, q, (const bf16 *)cache, seq_dev, pos_dev,
                                                                       a->H, a->dqk, a->dv, a->seq_stride,
                                                                       a->row_stride, a->scale, CH, nsplit);
    }
    ZB_CUDA_LAUNCHED("MLA decode attention");
    size_t msm = ((size_t)nsplit + (uv.w ? a->dv : 0)) * sizeof(float);
    pdl_go(k_decode_merge, dim3(nb * a->H), dim3(MERGE_THREADS), msm, zb_cuda_stream(), out, (const float *)part, a->H,
           1, a->dv, nsplit, uv);
    ZB_CUDA_LAUNCHED("MLA decode attention merge");
}

extern "C" void zb_cuda_decode_mla(float *out, const float *q, const void *cache, const int *seq_dev, const int *pos_dev,
                                   int nb, int max_T, const zb_cuda_cache_attn *a) {
    merge_uv none = {NULL, 0, 1, 0, 0};
    decode_mla(out, q, cache, seq_dev, pos_dev, nb, max_T, a, none);
}

extern "C" void zb_cuda_decode_mla_uv(float *out, const float *q, const void *cache, const int *seq_dev,
                                      const int *pos_dev, int nb, int max_T, const zb_cuda_cache_attn *a,
                                      const void *kv_b, int kv_b_bf16, int rep, int dn, int dvo) {
    merge_uv uv = {kv_b, kv_b_bf16, rep, dn, dvo};
    decode_mla(out, q, cache, seq_dev, pos_dev, nb, max_T, a, uv);
}

/* ---- the decode step's small pieces, fused -------------------------------------------------------
 * A batch-1 decode step is a chain of dependent kernels, most of them far too small to fill the
 * GPU: each boundary costs a few microseconds of launch and drain (S4R2: ~2.5 ms of a 6 ms 8B
 * step). These kernels do the pieces between the products in fewer launches, with the arithmetic
 * of the kernels they replace (so the same values). ZB_DEC_FUSE=0 in the environment (or
 * zb_cuda_dec_fuse_set(0)) keeps the separate kernels. */
static int g_dec_fuse = -1;
extern "C" void zb_cuda_dec_fuse_set(int on) { g_dec_fuse = on < 0 ? -1 : on != 0; }
extern "C" int zb_cuda_dec_fuse(void) {
    if (g_dec_fuse < 0) {
        const char *e = getenv("ZB_DEC_FUSE");
        g_dec_fuse = !(e && !strcmp(e, "0"));
    }
    return g_dec_fuse;
}

/* One head of hd values from v to out (in place, or a cache row), its first r.dim rotated at
 * position p (a warp; buf: r.dim floats of shared memory): k_rope's arithmetic (cuda_ops.cu,
 * inverse = 0: an interleaved input comes out in the rotate-half layout), so the same values. */
template <typename TO>
__device__ static inline void warp_rope_head(const zb_rope &r, bool rot, const float *v, TO *out, int hd, float *buf,
                                             int p, int interleave, int lane) {
    const int D = rot ? r.dim : 0, half = D / 2;
    for (int j = lane; j < D; j += 32) buf[j] = v[j];
    __syncwarp();
    for (int i = lane; i < half; i += 32) {
        float a = (float)p * r.inv_freq[i];
        float c = cosf(a) * r.mscale, s = sinf(a) * r.mscale;
        float x1, x2;
        if (interleave) { x1 = buf[2 * i]; x2 = buf[2 * i + 1]; }
        else { x1 = buf[i]; x2 = buf[i + half]; }
        float y1 = rope_lo(x1, x2, c, s), y2 = rope_hi(x1, x2, c, s);
        out_st(out + i, y1);
        out_st(out + i + half, y2);
    }
    for (int j = D + lane; j < hd; j += 32) out_st(out + j, v[j]);   /* past the rotary part */
    __syncwarp();
}

/* Attention decode (one token per sequence): per (sequence i, head item) a warp; items 0..H-1 the
 * query heads roped in place, H..H+Hkv-1 the key heads roped into the cache, then the value heads
 * copied into the cache (float32 or bf16, head-major as zb_cuda_cache_store), and posi[i] =
 * pos[seq[i]] (the positions the attention reads). Replaces gather + rope + two cache stores. */
#define PREP_WARPS 8
__global__ void __launch_bounds__(PREP_WARPS * 32) k_decode_qkv_prep(
    zb_rope r, float *q, const float *k, const float *v, void *kc, void *vc, int bf, const int *seq, const int *pos,
    int *posi, int H, int Hkv, int hd, long long ss, long long gs) {
    __shared__ float buf[PREP_WARPS][ZB_ROPE_MAX_DIM];
    pdl_launch();   /* the attention may start */
    pdl_wait();     /* q, k, v from the GEMV before (cuda_pdl.cuh) */
    const int i = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int it = blockIdx.x * PREP_WARPS + warp, s = seq ? seq[i] : i, p = pos[s];
    if (blockIdx.x == 0 && threadIdx.x == 0) posi[i] = p;
    if (it >= H + 2 * Hkv) return;
    if (it < H) {
        float *qh = q + ((size_t)i * H + it) * hd;
        warp_rope_head(r, true, qh, qh, hd, buf[warp], p, 0, lane);
        return;
    }
    const int g = it < H + Hkv ? it - H : it - H - Hkv;
    const float *src = (it < H + Hkv ? k : v) + ((size_t)i * Hkv + g) * hd;
    void *cache = it < H + Hkv ? kc : vc;
    const long long off = (long long)s * ss + (long long)g * gs + (long long)p * hd;
    if (bf) warp_rope_head(r, it < H + Hkv, src, (bf16 *)cache + off, hd, buf[warp], p, 0, lane);
    else warp_rope_head(r, it < H + Hkv, src, (float *)cache + off, hd, buf[warp], p, 0, lane);
}

extern "C" int zb_cuda_decode_qkv_prep_ok(const zb_rope *r, int hd) {
    return zb_cuda_dec_fuse() && r->dim <= hd && r->dim <= ZB_ROPE_MAX_DIM && r->dim % 2 == 0;
}

extern "C" void zb_cuda_decode_qkv_prep(const zb_rope *r, float *q, const float *k, const float *v, void *kc, void *vc,
                                        int cache_bf16, const int *seq_dev, const int *pos_dev, int *posi, int nb,
                                        int H, int Hkv, int hd, long long seq_stride, long long group_stride) {
    if (nb <= 0) return;
    dim3 grid((H + 2 * Hkv + PREP_WARPS - 1) / PREP_WARPS, nb);
    pdl_go(k_decode_qkv_prep, grid, dim3(PREP_WARPS * 32), 0, zb_cuda_stream(), *r, q, k, v, kc, vc, cache_bf16, seq_dev,
           pos_dev, posi, H, Hkv, hd, seq_stride, group_stride);
    ZB_CUDA_LAUNCHED("decode q/k/v rope + cache store");
}

/* MLA decode (one token per sequence): per (head h, sequence i) a block writes the absorbed query
 * qlat [nb, H, r + dr]: [W_UK_h^T q_nope_h | RoPE(q_pe_h)] (W_UK_h = rows 0..dn-1 of kv_b's group
 * h / rep, [dn][r], bf16 or float32; float32 sums over dn), and block H the latent row
 * [c | RoPE(k_pe)] of kva [nb, r + dr] into the cache (slot seq[i], position p, float32 or bf16)
 * with posi[i] = p. p = pos[pidx[i]] (pidx NULL: pos[i]). Replaces two RoPEs, the cache store, the
 * group expansion of kv_b, the absorbed product and the copy of q_pe (and the positions' gather). */
#define MLA_PREP_MAXDN 512
__global__ void __launch_bounds__(128) k_mla_dec_prep(zb_rope r, const float *q, const float *kva, const void *kvb,
                                                      int kvb_bf, float *qlat, void *cache, int cbf, const int *seq,
                                                      const int *pos, const int *pidx, int *posi, int H, int rep,
                                                      int dn, int dvo, int dr, int R, int il, long long seq_stride) {
    __shared__ float qs[MLA_PREP_MAXDN], buf[ZB_ROPE_MAX_DIM];
    pdl_launch();
    pdl_wait();   /* q and kva from the GEMVs before */
    const int h = blockIdx.x, i = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int W = R + dr, dqk = dn + dr, s = seq ? seq[i] : i, p = pos[pidx ? pidx[i] : i];
    if (h == H) {   /* the latent row */
        if (posi && tid == 0) posi[i] = p;
        const float *kr = kva + (size_t)i * W;
        const long long off = (long long)s * seq_stride + (long long)p * W;
        if (warp == 0) {
            if (cbf) warp_rope_head(r, true, kr + R, (bf16 *)cache + off + R, dr, buf, p, il, lane);
            else warp_rope_head(r, true, kr + R, (float *)cache + off + R, dr, buf, p, il, lane);
        }
        for (int c = tid; c < R; c += blockDim.x) {
            if (cbf) out_st((bf16 *)cache + off + c, kr[c]);
            else out_st((float *)cache + off + c, kr[c]);
        }
        return;
    }
    const float *qh = q + ((size_t)i * H + h) * dqk;
    float *ql = qlat + ((size_t)i * H + h) * W;
    for (int j = tid; j < dn; j += blockDim.x) qs[j] = qh[j];
    __syncthreads();
    if (warp == 0) warp_rope_head(r, true, qh + dn, ql + R, dr, buf, p, il, lane);
    const size_t gb = (size_t)(h / rep) * (dn + dvo) * R;
    for (int c = tid; c < R; c += blockDim.x) {
        float acc = 0.0f;
        if (kvb_bf)
            for (int j = 0; j < dn; j++) acc += qs[j] * __bfloat162float(((const bf16 *)kvb)[gb + (size_t)j * R + c]);
        else
            for (int j = 0; j < dn; j++) acc += qs[j] * ((const float *)kvb)[gb + (size_t)j * R + c];
        ql[c] = acc;
    }
}

extern "C" int zb_cuda_mla_dec_prep_ok(const zb_rope *r, int dn, int dr) {
    return dn >= 1 && dn <= MLA_PREP_MAXDN && r->dim <= dr && r->dim <= ZB_ROPE_MAX_DIM && r->dim % 2 == 0;
}

extern "C" void zb_cuda_mla_dec_prep(const zb_rope *r, const float *q, const float *kva, const void *kv_b,
                                     int kv_b_bf16, float *qlat, void *cache, int cache_bf16, const int *seq_dev,
                                     const int *pos_dev, const int *pidx, int *posi, int nb, int H, int rep, int dn,
                                     int dvo, int dr, int R, int interleave, long long seq_stride) {
    if (nb <= 0) return;
    pdl_go(k_mla_dec_prep, dim3(H + 1, nb), dim3(128), 0, zb_cuda_stream(), *r, q, kva, kv_b, kv_b_bf16, qlat, cache,
           cache_bf16, seq_dev, pos_dev, pidx, posi, H, rep, dn, dvo, dr, R, interleave, seq_stride);
    ZB_CUDA_LAUNCHED("MLA decode query absorb + RoPE + cache store");
}
