/* cuda_flash2.cu — causal GQA flash attention for training, FlashAttention-2 style (Dao, 2023,
 * "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"): the
 * default bf16-mode attention for head dims 64 and 128 (cuda_flash.cu keeps the first version,
 * ZB_FLASH=old). Same contract as zb_cuda_flash_forward / _backward (cuda_ops.h): float32 q, k,
 * v, out, dq, dk, dv in the model's row layouts, lse [B, H, T] (natural log).
 *
 * 1. A conversion pass writes bf16 head-major copies (q [B][H][T][hd], k, v [B][Hkv][T][hd],
 *    and in the backward dO together with D = rowsum(dO * O) in float32), so that the kernels
 *    stream 16-byte rows with cp.async and read fragments with ldmatrix.
 * 2. Forward: a CTA takes BM = 16 NW query rows of one (sequence, head), NW warps of 16 rows;
 *    64-key tiles of K and V stream through shared memory, double-buffered (the next tile's
 *    cp.async runs under this tile's products). S = Q K^T (m16n8k16 bf16 mma, float32
 *    accumulators), the online softmax in registers (running max and sum per row, exp2 with the
 *    scale folded in), P re-packed from the accumulators as the A operand of P V. Key tiles past
 *    a warp's last row are skipped; only tiles crossing the diagonal are masked. lse is saved.
 *    The longest query blocks (the last ones) are launched first.
 * 3. Backward: a CTA takes 64 keys of one (sequence, KV group), 4 warps of 16 keys, and walks
 *    the group's heads and the query tiles from the diagonal on (Q, dO, lse, D double-buffered):
 *    S^T = K Q^T and dP^T = V dO^T per warp, P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - D),
 *    dV += P^T dO and dK += dS^T Q with P^T / dS^T from registers; dS^T goes to shared memory
 *    and dQ = dS K (per warp 16 queries) is added to dq by float32 atomics. dK, dV of the group
 *    sum its heads in registers and are written once. The first key tiles (most work) first.
 *
 * Fragment layouts (PTX ISA, mma.m16n8k16 .bf16): g = lane / 4, t = lane % 4; A (16 x 16,
 * row): {(g, 2t..2t+1), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..)}; B (16 x 8, col):
 * {(k 2t..2t+1, n g), (k 2t + 8.., n g)}; C (16 x 8): {(g, 2t), (g, 2t + 1), (g + 8, 2t),
 * (g + 8, 2t + 1)}. ldmatrix.x4 loads four 8 x 8 bf16 matrices, lanes 8i..8i+7 giving the row
 * addresses of matrix i; thread l receives row l / 4, columns 2 (l % 4).. of each (with .trans:
 * the transposed matrix's). Shared tiles are rows of hd + 8 (or 64 + 8) bf16: 16-byte aligned
 * rows whose 8-row ldmatrix reads hit distinct bank groups. */
#include <stdlib.h>

#include "cuda_ops.h"

typedef __nv_bfloat16 bf16;

#define FA2_BN 64                      /* keys per tile (forward), keys per CTA (backward) */
#define FA2_BMB 64                     /* queries per tile of the backward */
#define LOG2E 1.4426950408889634f

__device__ static inline uint32_t sm_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared, asynchronously; valid 0 writes zeros (rows past T) */
__device__ static inline void cp16(void *dst, const void *src, int valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sm_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ static inline void cp_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ static inline void cp_wait_all(void) { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ static inline void ldsm4(uint32_t *r, const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sm_addr(p))
                 : "memory");
}
__device__ static inline void ldsm4t(uint32_t *r, const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sm_addr(p))
                 : "memory");
}

/* d += a b (m16n8k16, bf16 operands, float32 accumulators) */
__device__ static inline void mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 2^x in one MUFU op (relative error ~2^-22, denormal results flushed: far below the bf16
 * rounding of P that follows); 2^-inf = 0 */
__device__ static inline float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* the two 8-column tiles c0, c1 of one x4 B load (b[0..1]: columns 0-7, b[2..3]: 8-15) */
__device__ static inline void mma_x2(float *c0, float *c1, const uint32_t *a, const uint32_t *b) {
    mma_bf16(c0, a, b[0], b[1]);
    mma_bf16(c1, a, b[2], b[3]);
}

__device__ static inline uint32_t pk2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* The A fragment of k-step j (16 columns) from two accumulator tiles of 8 columns each:
 * c[2j] holds columns 16j..16j+7, c[2j+1] the next 8 (same rows). */
__device__ static inline void acc_to_a(uint32_t *a, const float *c0, const float *c1) {
    a[0] = pk2(c0[0], c0[1]);
    a[1] = pk2(c0[2], c0[3]);
    a[2] = pk2(c1[0], c1[1]);
    a[3] = pk2(c1[2], c1[3]);
}

/* ---- conversion passes --------------------------------------------------------------------- */

/* x [B*T rows of stride] (nh heads of HD at h*HD) -> y bf16 [B][nh][T][HD]; 8 values a thread
 * (grid-stride: zb_cuda_blocks caps the grid) */
__global__ void k_fa2_heads(bf16 *__restrict__ y, const float *__restrict__ x, int T, int nh, int HD, int stride,
                            size_t n8) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n8; e += (size_t)gridDim.x * blockDim.x) {
        int per = HD / 8, c = (int)(e % per);
        size_t r = e / per;   /* (b, h, t) */
        int t = (int)(r % T);
        size_t bh = r / T;
        int h = (int)(bh % nh);
        size_t b = bh / nh;
        const float4 *src = (const float4 *)(x + (b * T + t) * (size_t)stride + (size_t)h * HD + c * 8);
        float4 u = src[0], w = src[1];
        uint4 o;
        o.x = pk2(u.x, u.y);
        o.y = pk2(u.z, u.w);
        o.z = pk2(w.x, w.y);
        o.w = pk2(w.z, w.w);
        *(uint4 *)(y + e * 8) = o;
    }
}

/* dO [B*T][H*HD] -> bf16 [B][H][T][HD], and D[b][h][t] = sum_d dO O (float32, from the float32
 * values): HD/8 consecutive threads per (b, h, t), their partial sums joined by shuffles. The
 * grid-stride loop runs the same trip count in every thread of a block (the shuffles). */
__global__ void k_fa2_prep_do(bf16 *__restrict__ y, float *__restrict__ D, const float *__restrict__ dout,
                              const float *__restrict__ out, int T, int H, int HD, size_t n8) {
    const int per = HD / 8;
    for (size_t base = blockIdx.x * (size_t)blockDim.x; base < n8; base += (size_t)gridDim.x * blockDim.x) {
        size_t e = base + threadIdx.x, r = e / per;
        int c = (int)(e % per);
        float acc = 0.0f;
        if (e < n8) {
            int t = (int)(r % T);
            size_t bh = r / T;
            int h = (int)(bh % H);
            size_t b = bh / H, off = (b * T + t) * (size_t)H * HD + (size_t)h * HD + c * 8;
            const float4 *a = (const float4 *)(dout + off), *o = (const float4 *)(out + off);
            float4 a0 = a[0], a1 = a[1], o0 = o[0], o1 = o[1];
            acc = a0.x * o0.x + a0.y * o0.y + a0.z * o0.z + a0.w * o0.w + a1.x * o1.x + a1.y * o1.y +
                  a1.z * o1.z + a1.w * o1.w;
            uint4 v;
            v.x = pk2(a0.x, a0.y);
            v.y = pk2(a0.z, a0.w);
            v.z = pk2(a1.x, a1.y);
            v.w = pk2(a1.z, a1.w);
            *(uint4 *)(y + e * 8) = v;
        }
        /* per is 8 or 16 and blocks are multiples of 32 threads: a row's group is inside one warp */
        for (int m = per / 2; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
        if (e < n8 && c == 0) D[r] = acc;   /* r = (b H + h) T + t */
    }
}

/* ---- forward --------------------------------------------------------------------------------- */

/* NW warps of MT m-tiles (16 rows each): BM = 16 NW MT query rows a CTA. With MT = 2 every K / V
 * fragment read from shared memory feeds two products (FlashAttention-2's 32 rows a warp);
 * MB: CTAs per SM the registers are budgeted for. */
template <int HD, int NW, int MT, int MB>
__global__ void __launch_bounds__(NW * 32, MB)
    k_fa2_fwd(const bf16 *__restrict__ Qh, const bf16 *__restrict__ Kh, const bf16 *__restrict__ Vh,
              float *__restrict__ out, float *__restrict__ lse, int T, int H, int rep, float scale, float sl2) {
    constexpr int BM = 16 * NW * MT, BN = FA2_BN, LD = HD + 8, CH = HD / 8, NT = NW * 32;
    constexpr bool QREG = HD * MT <= 128;   /* Q fragments held in registers, else re-read */
    extern __shared__ __align__(16) unsigned char fa2_sm[];
    bf16 *Qs = (bf16 *)fa2_sm, *Ks = Qs + BM * LD, *Vs = Ks + 2 * BN * LD;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int mi = lane >> 3, rr = lane & 7;   /* ldmatrix: which matrix this lane addresses, which row */
    const int bh = blockIdx.x, b = bh / H, h = bh % H, Hkv = H / rep, kvh = h / rep;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * BM;   /* the last (longest) query blocks first */
    const bf16 *Qg = Qh + (size_t)bh * T * HD;
    const bf16 *Kg = Kh + (size_t)(b * Hkv + kvh) * T * HD, *Vg = Vh + (size_t)(b * Hkv + kvh) * T * HD;
    for (int i = tid; i < BM * CH; i += NT) {
        int r = i / CH, c = i % CH, row = q0 + r;
        cp16(Qs + r * LD + c * 8, Qg + (size_t)min(row, T - 1) * HD + c * 8, row < T);
    }
    const int kend = min(q0 + BM, T), nkt = (kend + BN - 1) / BN;
    for (int i = tid; i < BN * CH; i += NT) {   /* key tile 0 into buffer 0 */
        int r = i / CH, c = i % CH, key = r;
        size_t src = (size_t)min(key, T - 1) * HD + c * 8;
        cp16(Ks + r * LD + c * 8, Kg + src, key < T);
        cp16(Vs + r * LD + c * 8, Vg + src, key < T);
    }
    cp_commit();

    const int wr = 16 * MT * w, wrow0 = q0 + wr;   /* this warp's first row (m-tile m: + 16 m) */
    uint32_t qf[QREG ? MT : 1][QREG ? HD / 16 : 1][4];
    float o[MT][HD / 8][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int i = 0; i < HD / 8; i++) o[m][i][0] = o[m][i][1] = o[m][i][2] = o[m][i][3] = 0.0f;
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int m = 0; m < MT; m++) mrow[m][0] = mrow[m][1] = -INFINITY, lrow[m][0] = lrow[m][1] = 0.0f;

    for (int kt = 0; kt < nkt; kt++) {
        cp_wait_all();
        __syncthreads();   /* tile kt landed for everyone; tile kt - 1's buffer is free */
        if (kt + 1 < nkt) {
            const int k0n = (kt + 1) * BN, nb = (kt + 1) & 1;
            for (int i = tid; i < BN * CH; i += NT) {
                int r = i / CH, c = i % CH, key = k0n + r;
                size_t src = (size_t)min(key, T - 1) * HD + c * 8;
                cp16(Ks + (nb * BN + r) * LD + c * 8, Kg + src, key < T);
                cp16(Vs + (nb * BN + r) * LD + c * 8, Vg + src, key < T);
            }
            cp_commit();
        }
        if (QREG && kt == 0) {
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int kk = 0; kk < HD / 16; kk++)
                    ldsm4(qf[QREG ? m : 0][QREG ? kk : 0], Qs + (wr + 16 * m + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
        }
        const int k0 = kt * BN;
        if (k0 > wrow0 + 16 * MT - 1) continue;   /* the whole tile is above this warp's rows (warp-uniform) */
        const bf16 *Kb = Ks + (kt & 1) * BN * LD, *Vb = Vs + (kt & 1) * BN * LD;
        float s[MT][8][4];
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int nt = 0; nt < 8; nt++) s[m][nt][0] = s[m][nt][1] = s[m][nt][2] = s[m][nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t qa[MT][4];
            if (!QREG) {
#pragma unroll
                for (int m = 0; m < MT; m++) ldsm4(qa[m], Qs + (wr + 16 * m + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
            }
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t bb[4];   /* keys 16np.. (+8), dims 16kk.. (+8): B fragments of two key tiles */
                ldsm4(bb, Kb + (np * 16 + (mi >> 1) * 8 + rr) * LD + kk * 16 + (mi & 1) * 8);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    const uint32_t *a = QREG ? qf[QREG ? m : 0][QREG ? kk : 0] : qa[m];
                    mma_x2(s[m][2 * np], s[m][2 * np + 1], a, bb);
                }
            }
        }
        if (k0 + BN - 1 > wrow0) {   /* the tile crosses the diagonal: keys past the row are out */
#pragma unroll
            for (int m = 0; m < MT; m++)
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        int col = k0 + nt * 8 + 2 * t4 + (i & 1), row = wrow0 + 16 * m + g + (i >> 1) * 8;
                        if (col > row) s[m][nt][i] = -INFINITY;
                    }
        }
        /* online softmax (raw-score units for the max; exp2 with the scale folded in). Key 0 is
         * in tile 0 and visible to every row, so the running max is finite from tile 0 on; a
         * row whose keys in this tile are all masked keeps its max (its p are 0). */
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float mx[2] = {mrow[m][0], mrow[m][1]};
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                mx[0] = fmaxf(mx[0], fmaxf(s[m][nt][0], s[m][nt][1]));
                mx[1] = fmaxf(mx[1], fmaxf(s[m][nt][2], s[m][nt][3]));
            }
            float msc[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                float corr = ex2((mrow[m][r] - mx[r]) * sl2);   /* 0 on tile 0 (mrow = -inf) */
                mrow[m][r] = mx[r];
                lrow[m][r] *= corr;
                msc[r] = mx[r] * sl2;
#pragma unroll
                for (int i = 0; i < HD / 8; i++) {
                    o[m][i][2 * r] *= corr;
                    o[m][i][2 * r + 1] *= corr;
                }
            }
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float p = ex2(fmaf(s[m][nt][i], sl2, -msc[i >> 1]));
                    s[m][nt][i] = p;
                    lrow[m][i >> 1] += p;
                }
        }
        /* O += P V: P from the accumulators (16 keys per k-step), V^T fragments by ldmatrix.trans */
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++) acc_to_a(a[m], s[m][2 * kk], s[m][2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t bb[4];   /* keys 16kk.. (+8), dims 16dp.. (+8) */
                ldsm4t(bb, Vb + (kk * 16 + (mi & 1) * 8 + rr) * LD + dp * 16 + (mi >> 1) * 8);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    mma_x2(o[m][2 * dp], o[m][2 * dp + 1], a[m], bb);
                }
            }
        }
    }
    const int od = H * HD;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = lrow[m][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            int row = wrow0 + 16 * m + g + 8 * r;
            if (row >= T) continue;
            float inv = 1.0f / l;
            float *orow = out + ((size_t)b * T + row) * od + (size_t)h * HD + 2 * t4;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++)
                *(float2 *)(orow + dt * 8) = make_float2(o[m][dt][2 * r] * inv, o[m][dt][2 * r + 1] * inv);
            if (t4 == 0) lse[(size_t)bh * T + row] = mrow[m][r] * scale + logf(l);
        }
}

/* ---- backward -------------------------------------------------------------------------------- */

/* NW warps of 16 keys: BN = 16 NW keys a CTA (with NW = 8 each Q / dO tile serves twice the keys
 * and dQ gets half the atomics per product). ST: 2 = Q / dO / lse / D double-buffered, 1 =
 * single (head dim 128 at 4 warps: two CTAs per SM fit). MB: CTAs per SM the registers are
 * budgeted for. */
template <int HD, int NW, int ST, int MB>
__global__ void __launch_bounds__(NW * 32, MB)
    k_fa2_bwd(const bf16 *__restrict__ Qh, const bf16 *__restrict__ Kh, const bf16 *__restrict__ Vh,
              const bf16 *__restrict__ dOh, const float *__restrict__ lse, const float *__restrict__ Dg, float *dq,
              float *__restrict__ dk, float *__restrict__ dv, int T, int H, int rep, int q_stride, int k_stride,
              int v_stride, float scale, float sl2) {
    constexpr int BN = 16 * NW, BM = FA2_BMB, LD = HD + 8, LDS = BM + 8, CH = HD / 8, NT = NW * 32;
    /* dQ = dS K: warp w takes query m-tile w % 4 and DW of the dims from (w / 4) DW, DC at a time */
    constexpr int DW = HD * 4 / NW, DC = DW < 64 ? DW : 64;
    extern __shared__ __align__(16) unsigned char fa2_sm[];
    bf16 *Ks = (bf16 *)fa2_sm, *Vs = Ks + BN * LD, *Qs = Vs + BN * LD, *dOs = Qs + ST * BM * LD;
    bf16 *dSs = dOs + ST * BM * LD;   /* dS^T [key][query] */
    float *Ls = (float *)(dSs + BN * LDS), *Ds = Ls + ST * BM;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int mi = lane >> 3, rr = lane & 7;
    const int Hkv = H / rep, bg = blockIdx.x, b = bg / Hkv, kvh = bg % Hkv, k0 = blockIdx.y * BN;
    const int nqt = (T + BM - 1) / BM, qt0 = k0 / BM, nper = nqt - qt0, nit = rep * nper;
    const bf16 *Kg = Kh + (size_t)bg * T * HD, *Vg = Vh + (size_t)bg * T * HD;
    for (int i = tid; i < BN * CH; i += NT) {
        int r = i / CH, c = i % CH, key = k0 + r;
        size_t src = (size_t)min(key, T - 1) * HD + c * 8;
        cp16(Ks + r * LD + c * 8, Kg + src, key < T);
        cp16(Vs + r * LD + c * 8, Vg + src, key < T);
    }
    /* the query tile of iteration it (head h = kvh rep + it / nper) into buffer sb */
    auto load_q = [&](int it, int sb) {
        const int h = kvh * rep + it / nper, q0 = (qt0 + it % nper) * BM;
        const size_t bh = (size_t)b * H + h;
        const bf16 *Qg = Qh + bh * T * HD, *dOg = dOh + bh * T * HD;
        for (int i = tid; i < BM * CH; i += NT) {
            int r = i / CH, c = i % CH, row = q0 + r;
            size_t src = (size_t)min(row, T - 1) * HD + c * 8;
            cp16(Qs + (sb * BM + r) * LD + c * 8, Qg + src, row < T);
            cp16(dOs + (sb * BM + r) * LD + c * 8, dOg + src, row < T);
        }
        if (tid < BM) {   /* rows past T: lse = +inf makes their P (and dS) 0 */
            int row = q0 + tid;
            Ls[sb * BM + tid] = row < T ? lse[bh * T + row] * LOG2E : INFINITY;
            Ds[sb * BM + tid] = row < T ? Dg[bh * T + row] : 0.0f;
        }
    };
    if (ST == 2) load_q(0, 0);
    cp_commit();

    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) dka[i][j] = dva[i][j] = 0.0f;
    const int kl0 = 16 * w + g;   /* this thread's keys (in the CTA's block): kl0, kl0 + 8 */

    for (int it = 0; it < nit; it++) {
        if (ST == 1) {
            __syncthreads();   /* the previous iteration is done with the buffers */
            load_q(it, 0);
            cp_commit();
        }
        cp_wait_all();
        __syncthreads();   /* this iteration's tiles landed; the other buffer and dS^T are free */
        if (ST == 2 && it + 1 < nit) {
            load_q(it + 1, (it + 1) & 1);
            cp_commit();
        }
        const int sb = ST == 2 ? (it & 1) : 0;
        const int h = kvh * rep + it / nper, q0 = (qt0 + it % nper) * BM;
        const bf16 *Qb = Qs + sb * BM * LD, *dOb = dOs + sb * BM * LD;
        const float *L = Ls + sb * BM, *Dq = Ds + sb * BM;
        if (k0 + 16 * w > q0 + BM - 1) {
            /* every key of this warp is past every query of the tile: P = dS = 0 (warp-uniform;
             * only with 8 warps, on the first query tile) */
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                *(uint32_t *)(dSs + kl0 * LDS + nt * 8 + 2 * t4) = 0u;
                *(uint32_t *)(dSs + (kl0 + 8) * LDS + nt * 8 + 2 * t4) = 0u;
            }
        } else {
            /* S^T = K_w Q^T, dP^T = V_w dO^T: 16 keys x 64 queries per warp */
            float st[8][4], dp[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) st[nt][i] = dp[nt][i] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                uint32_t ka[4], va[4];
                ldsm4(ka, Ks + (16 * w + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
                ldsm4(va, Vs + (16 * w + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    uint32_t bb[4];   /* queries 16np.. (+8), dims 16kk.. (+8) */
                    const int off = (np * 16 + (mi >> 1) * 8 + rr) * LD + kk * 16 + (mi & 1) * 8;
                    ldsm4(bb, Qb + off);
                    mma_x2(st[2 * np], st[2 * np + 1], ka, bb);
                    ldsm4(bb, dOb + off);
                    mma_x2(dp[2 * np], dp[2 * np + 1], va, bb);
                }
            }
            /* P^T = exp2(S^T scale log2e - lse log2e); where the tile meets the CTA's keys
             * (q0 < k0 + BN) keys past the query are out; dS^T = P^T (dP^T - D) */
            const bool diag = q0 < k0 + BN;
            const int kq = k0 + kl0 - q0;   /* key - query = kq + (i >> 1) 8 - qc */
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int qc = nt * 8 + 2 * t4 + (i & 1);
                    float p = ex2(fmaf(st[nt][i], sl2, -L[qc]));
                    if (diag && kq + (i >> 1) * 8 > qc) p = 0.0f;
                    st[nt][i] = p;
                    dp[nt][i] = p * (dp[nt][i] - Dq[qc]);
                }
            /* dV_w += P^T dO, dK_w += dS^T Q (the operands' k = the 64 queries) */
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                uint32_t pa[4], da[4];
                acc_to_a(pa, st[2 * kk], st[2 * kk + 1]);
                acc_to_a(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
                for (int dd = 0; dd < HD / 16; dd++) {
                    uint32_t bb[4];   /* queries 16kk.. (+8), dims 16dd.. (+8), transposed */
                    const int off = (kk * 16 + (mi & 1) * 8 + rr) * LD + dd * 16 + (mi >> 1) * 8;
                    ldsm4t(bb, dOb + off);
                    mma_x2(dva[2 * dd], dva[2 * dd + 1], pa, bb);
                    ldsm4t(bb, Qb + off);
                    mma_x2(dka[2 * dd], dka[2 * dd + 1], da, bb);
                }
            }
            /* dS^T (bf16) to shared memory: row = key, column = query */
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                *(uint32_t *)(dSs + kl0 * LDS + nt * 8 + 2 * t4) = pk2(dp[nt][0], dp[nt][1]);
                *(uint32_t *)(dSs + (kl0 + 8) * LDS + nt * 8 + 2 * t4) = pk2(dp[nt][2], dp[nt][3]);
            }
        }
        __syncthreads();
        /* dQ (queries 16 (w % 4).. of the tile, DW dims) += scale dS K over the BN keys */
        const int qm = 16 * (w & 3), d0 = (w >> 2) * DW;
        const size_t qrow = (size_t)b * T + q0 + qm + g;
#pragma unroll
        for (int dc = 0; dc < DW / DC; dc++) {
            float acc[DC / 8][4];
#pragma unroll
            for (int i = 0; i < DC / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t a[4];   /* dS rows = queries qm.. (+8), k = keys 16kk.. (+8), from dS^T */
                ldsm4t(a, dSs + (kk * 16 + (mi >> 1) * 8 + rr) * LDS + qm + (mi & 1) * 8);
#pragma unroll
                for (int dd = 0; dd < DC / 16; dd++) {
                    uint32_t bb[4];   /* keys 16kk.. (+8), dims d0 + DC dc + 16dd.. (+8), transposed */
                    ldsm4t(bb, Ks + (kk * 16 + (mi & 1) * 8 + rr) * LD + d0 + dc * DC + dd * 16 + (mi >> 1) * 8);
                    mma_x2(acc[2 * dd], acc[2 * dd + 1], a, bb);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                if (q0 + qm + g + 8 * r >= T) continue;
                float *dqr = dq + (qrow + 8 * r) * q_stride + (size_t)h * HD + d0 + dc * DC + 2 * t4;
#pragma unroll
                for (int dt = 0; dt < DC / 8; dt++)
                    atomicAdd((float2 *)(dqr + dt * 8), make_float2(acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale));
            }
        }
    }
    /* this CTA's keys: every head of the group is in dka / dva (overwrite) */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = k0 + kl0 + 8 * r;
        if (key >= T) continue;
        float *dkr = dk + ((size_t)b * T + key) * k_stride + (size_t)kvh * HD + 2 * t4;
        float *dvr = dv + ((size_t)b * T + key) * v_stride + (size_t)kvh * HD + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            *(float2 *)(dkr + dt * 8) = make_float2(dka[dt][2 * r] * scale, dka[dt][2 * r + 1] * scale);
            *(float2 *)(dvr + dt * 8) = make_float2(dva[dt][2 * r], dva[dt][2 * r + 1]);
        }
    }
}

/* ---- host side ------------------------------------------------------------------------------- */

/* The forward's CTA shapes (warps x m-tiles of 16 rows each): 1 = 4 x 1 (64 rows), 2 = 8 x 1
 * (128 rows), 3 = 4 x 2 (128 rows, 32 a warp). */
static const int k_fwd_nw[4] = {0, 4, 8, 4}, k_fwd_mt[4] = {0, 1, 1, 2};
static int g_fwd_shape = 0, g_bwd_shape = 0;   /* 0: the environment's or the default */

extern "C" void zb_cuda_flash2_tune(int fwd_shape, int bwd_shape) {
    g_fwd_shape = fwd_shape >= 1 && fwd_shape <= 3 ? fwd_shape : 0;
    g_bwd_shape = bwd_shape >= 1 && bwd_shape <= 3 ? bwd_shape : 0;
}

static int env_int(const char *name) {
    const char *e = getenv(name);
    return e ? atoi(e) : 0;
}

/* default: 4 x 2 (S4R1 on an H200: 0.629 ms for the 1B shape's forward against 0.669 at 4 x 1 and
 * 0.649 at 8 x 1; head dim 128: 0.546 against 0.643 and 0.666, although at 128 it spills a few
 * bytes and fits one CTA per SM) */
static int fa2_fwd_shape(void) {
    if (g_fwd_shape) return g_fwd_shape;
    int v = env_int("ZB_FLASH_FWD");
    return v >= 1 && v <= 3 ? v : 3;
}

/* The backward's CTA shapes: 1 = 4 warps (64 keys) with registers for 2 CTAs per SM, 2 = 4
 * warps for 3 CTAs per SM (head dim 64 only: 168 registers, a few spilled; 128 takes 1), 3 = 8
 * warps (128 keys, one CTA per SM). */
static int fa2_bwd_shape(int hd) {
    int v = g_bwd_shape ? g_bwd_shape : env_int("ZB_FLASH_BWD");
    if (v < 1 || v > 3) v = hd == 64 ? 2 : 1;
    return hd == 128 && v == 2 ? 1 : v;
}

static size_t fa2_fwd_smem(int hd, int shape) {
    return (size_t)(16 * k_fwd_nw[shape] * k_fwd_mt[shape] + 4 * FA2_BN) * (hd + 8) * sizeof(bf16);
}
static int fa2_bwd_nw(int shape) { return shape == 3 ? 8 : 4; }
static int fa2_bwd_stages(int hd, int shape) { return hd == 64 || shape == 3 ? 2 : 1; }
static size_t fa2_bwd_smem(int hd, int shape) {
    int st = fa2_bwd_stages(hd, shape), bn = 16 * fa2_bwd_nw(shape);
    return (size_t)(2 * bn + 2 * st * FA2_BMB) * (hd + 8) * sizeof(bf16) + (size_t)bn * (FA2_BMB + 8) * sizeof(bf16) +
           (size_t)2 * st * FA2_BMB * sizeof(float);
}

typedef void (*bwd_fn)(const bf16 *, const bf16 *, const bf16 *, const bf16 *, const float *, const float *, float *,
                       float *, float *, int, int, int, int, int, int, float, float);
static bwd_fn bwd_kernel(int hd, int shape) {
    if (hd == 64) return shape == 1 ? k_fa2_bwd<64, 4, 2, 2> : shape == 2 ? k_fa2_bwd<64, 4, 2, 3> : k_fa2_bwd<64, 8, 2, 1>;
    return shape == 3 ? k_fa2_bwd<128, 8, 2, 1> : k_fa2_bwd<128, 4, 1, 2>;
}

/* the forward kernels by head dim and shape; registers budgeted for the CTAs per SM that the
 * shared memory allows (head dim 128 at 8 x 1 and 4 x 2: one) */
typedef void (*fwd_fn)(const bf16 *, const bf16 *, const bf16 *, float *, float *, int, int, int, float, float);
static fwd_fn fwd_kernel(int hd, int shape) {
    if (hd == 64) return shape == 1 ? k_fa2_fwd<64, 4, 1, 4> : shape == 2 ? k_fa2_fwd<64, 8, 1, 2> : k_fa2_fwd<64, 4, 2, 2>;
    return shape == 1 ? k_fa2_fwd<128, 4, 1, 2> : shape == 2 ? k_fa2_fwd<128, 8, 1, 1> : k_fa2_fwd<128, 4, 2, 1>;
}

static void fa2_limits(void) {
    static int done = 0;
    if (done) return;
    for (int hd = 64; hd <= 128; hd += 64)
        for (int sh = 1; sh <= 3; sh++)
            cudaFuncSetAttribute(fwd_kernel(hd, sh), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fa2_fwd_smem(hd, sh));
    for (int hd = 64; hd <= 128; hd += 64)
        for (int sh = 1; sh <= 3; sh++)
            cudaFuncSetAttribute(bwd_kernel(hd, sh), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fa2_bwd_smem(hd, sh));
    done = 1;
}

/* bf16 head-major copy of x's head columns into y */
static void to_heads(bf16 *y, const float *x, int B, int T, int nh, int hd, int stride) {
    size_t n8 = (size_t)B * T * nh * hd / 8;
    k_fa2_heads<<<zb_cuda_blocks(n8, 256), 256, 0, zb_cuda_stream()>>>(y, x, T, nh, hd, stride, n8);
    ZB_CUDA_LAUNCHED("flash2 head-major copy");
}

extern "C" void zb_cuda_flash2_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                       const zb_attn_shape *s) {
    fa2_limits();
    int B = s->B, T = s->T, H = s->H, Hkv = s->Hkv, hd = s->dqk, rep = H / Hkv;
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd;
    bf16 *Qh = (bf16 *)zb_cuda_scratch(ZB_WS_ATTN, (nq + 2 * nk) * sizeof(bf16));
    if (!Qh) return;
    bf16 *Kh = Qh + nq, *Vh = Kh + nk;
    to_heads(Qh, q, B, T, H, hd, s->q_stride);
    to_heads(Kh, k, B, T, Hkv, hd, s->k_stride);
    to_heads(Vh, v, B, T, Hkv, hd, s->v_stride);
    int sh = fa2_fwd_shape(), nw = k_fwd_nw[sh], bm = 16 * nw * k_fwd_mt[sh];
    dim3 grid(B * H, (T + bm - 1) / bm);
    fwd_kernel(hd, sh)<<<grid, 32 * nw, fa2_fwd_smem(hd, sh), zb_cuda_stream()>>>(Qh, Kh, Vh, out, lse, T, H, rep,
                                                                               s->scale, s->scale * LOG2E);
    ZB_CUDA_LAUNCHED("flash2 attention forward");
}

extern "C" void zb_cuda_flash2_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                        const float *lse, const float *q, const float *k, const float *v,
                                        const zb_attn_shape *s) {
    fa2_limits();
    int B = s->B, T = s->T, H = s->H, Hkv = s->Hkv, hd = s->dqk, rep = H / Hkv;
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd, rows = (size_t)B * H * T;
    bf16 *Qh = (bf16 *)zb_cuda_scratch(ZB_WS_ATTN, (2 * nq + 2 * nk) * sizeof(bf16));
    float *D = (float *)zb_cuda_scratch(ZB_WS_ATTN2, rows * sizeof(float));
    if (!Qh || !D) return;
    bf16 *Kh = Qh + nq, *Vh = Kh + nk, *dOh = Vh + nk;
    to_heads(Qh, q, B, T, H, hd, s->q_stride);
    to_heads(Kh, k, B, T, Hkv, hd, s->k_stride);
    to_heads(Vh, v, B, T, Hkv, hd, s->v_stride);
    size_t n8 = nq / 8;
    k_fa2_prep_do<<<zb_cuda_blocks(n8, 256), 256, 0, zb_cuda_stream()>>>(dOh, D, dout, out, T, H, hd, n8);
    ZB_CUDA_LAUNCHED("flash2 backward dO, D");
    /* dQ is summed by atomics over the key blocks: its head columns start at zero */
    zb_cuda_zero_2d(dq, (size_t)s->q_stride * 4, (size_t)H * hd * 4, (size_t)B * T);
    int sh = fa2_bwd_shape(hd), bn = 16 * fa2_bwd_nw(sh);
    dim3 grid(B * Hkv, (T + bn - 1) / bn);   /* the first key blocks (the most query tiles) first */
    bwd_kernel(hd, sh)<<<grid, 2 * bn, fa2_bwd_smem(hd, sh), zb_cuda_stream()>>>(
        Qh, Kh, Vh, dOh, lse, D, dq, dk, dv, T, H, rep, s->q_stride, s->k_stride, s->v_stride, s->scale,
        s->scale * LOG2E);
    ZB_CUDA_LAUNCHED("flash2 attention backward");
}
