/* cuda_flash.cu — causal GQA flash attention on the tensor cores (bf16 operands, float32
 * accumulation and softmax), forward and backward, for head dimensions 64 and 128 (dqk == dv):
 * the bf16 mode's attention (cuda_ops.h). FlashAttention-2's algorithm (Dao, 2023): the
 * forward walks the key tiles of a 64-row query block with a running max and sum per row and
 * saves lse; the backward takes a 64-key block, recomputes P = exp(S - lse) per query block and
 * accumulates dK, dV in registers, dQ by atomics, with D = rowsum(dO * O).
 *
 * The products are PTX mma.sync.m16n8k16 (bf16): per warp a 16-row A fragment (4 x 32-bit
 * registers: rows g and g + 8, columns 2t..2t+1 and 2t+8..2t+9, g = lane / 4, t = lane % 4),
 * a 16 x 8 B fragment (2 registers: k = 2t..2t+1 and 2t+8..2t+9 of column g) and a 16 x 8 float
 * accumulator (rows g, g + 8, columns 2t, 2t + 1). Tiles sit in shared memory as bf16 with
 * rows padded by 8 elements, so that the fragment loads of a warp hit 32 different banks; a
 * tile read along its other dimension is stored transposed. */
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "cuda_reduce.cuh"

typedef __nv_bfloat16 bf16;

__device__ static inline uint32_t ld32(const bf16 *p) { return *(const uint32_t *)p; }

__device__ static inline uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* d += a b (m16n8k16, bf16 inputs, float32 accumulators) */
__device__ static inline void mma16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 64 rows r0.. of src (row stride `stride` floats, hd floats each) as bf16 into dst[r][c]
 * (row stride ld); rows at or past T are zero. float4 loads: stride and src 16-byte aligned. */
__device__ static inline void load_rows(bf16 *dst, int ld, const float *src, int stride, int r0, int T, int hd,
                                        int tid) {
    int per = hd / 4;
    for (int i = tid; i < 64 * per; i += 128) {
        int r = i / per, c = (i % per) * 4, row = r0 + r;
        float4 x = row < T ? *(const float4 *)(src + (size_t)row * stride + c) : make_float4(0, 0, 0, 0);
        __nv_bfloat162 *d = (__nv_bfloat162 *)(dst + r * ld + c);
        d[0] = __floats2bfloat162_rn(x.x, x.y);
        d[1] = __floats2bfloat162_rn(x.z, x.w);
    }
}

/* the same tile transposed: dst[c][r] */
__device__ static inline void load_rows_t(bf16 *dst, int ld, const float *src, int stride, int r0, int T, int hd,
                                          int tid) {
    int per = hd / 4;
    for (int i = tid; i < 64 * per; i += 128) {
        int r = i % 64, c = (i / 64) * 4, row = r0 + r;   /* consecutive threads: consecutive rows */
        float4 x = row < T ? *(const float4 *)(src + (size_t)row * stride + c) : make_float4(0, 0, 0, 0);
        dst[(c + 0) * ld + r] = __float2bfloat16_rn(x.x);
        dst[(c + 1) * ld + r] = __float2bfloat16_rn(x.y);
        dst[(c + 2) * ld + r] = __float2bfloat16_rn(x.z);
        dst[(c + 3) * ld + r] = __float2bfloat16_rn(x.w);
    }
}

#define HD 64
#define FWD_NAME k_flash_fwd_64
#define BWD_NAME k_flash_bwd_64
#include "cuda_flash_body.cuh"
#undef HD
#undef FWD_NAME
#undef BWD_NAME
#define HD 128
#define FWD_NAME k_flash_fwd_128
#define BWD_NAME k_flash_bwd_128
#include "cuda_flash_body.cuh"
#undef HD
#undef FWD_NAME
#undef BWD_NAME

static size_t fwd_smem(int hd) { return (size_t)(2 * 64 * (hd + 8) + hd * 72) * sizeof(bf16); }
static size_t bwd_smem(int hd) {
    return (size_t)(4 * 64 * (hd + 8) + 3 * hd * 72 + 64 * 72) * sizeof(bf16) + 128 * sizeof(float);
}

extern "C" int zb_cuda_flash_supported(const zb_attn_shape *s, const void *q, const void *k, const void *v) {
    int hd = s->dqk;
    if (hd != s->dv || (hd != 64 && hd != 128)) return 0;
    if (s->H % s->Hkv) return 0;
    if ((s->q_stride | s->k_stride | s->v_stride) & 3) return 0;
    if (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) & 15) return 0;
    return 1;
}

/* more than 48 KB of dynamic shared memory needs the opt-in, once per process */
static void set_smem_limits(void) {
    static int done = 0;
    if (done) return;
    cudaFuncSetAttribute(k_flash_fwd_64, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fwd_smem(64));
    cudaFuncSetAttribute(k_flash_fwd_128, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fwd_smem(128));
    cudaFuncSetAttribute(k_flash_bwd_64, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bwd_smem(64));
    cudaFuncSetAttribute(k_flash_bwd_128, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bwd_smem(128));
    done = 1;
}

/* The default kernels: version 2 (cuda_flash2.cu; its GPU tests passed on an H200 in S4R1, where
 * the 1B shape's forward + backward ran 2.7x faster than this file's kernels) */
#define ZB_FLASH_DEFAULT 2
static int g_flash_version = 0;   /* 0: not chosen yet (ZB_FLASH at the first call) */

extern "C" void zb_cuda_flash_set_version(int v) { g_flash_version = v == 1 || v == 2 ? v : 0; }

extern "C" int zb_cuda_flash_version(void) {
    if (!g_flash_version) {
        const char *e = getenv("ZB_FLASH");
        g_flash_version = !e                                   ? ZB_FLASH_DEFAULT
                          : !strcmp(e, "old") || !strcmp(e, "1") ? 1
                          : !strcmp(e, "new") || !strcmp(e, "2") ? 2
                                                                 : ZB_FLASH_DEFAULT;
    }
    return g_flash_version;
}

extern "C" void zb_cuda_flash_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const zb_attn_shape *s) {
    if (zb_cuda_flash_version() == 2) { zb_cuda_flash2_forward(out, lse, q, k, v, s); return; }
    set_smem_limits();
    dim3 grid((s->T + 63) / 64, s->B * s->H);
    float sl2 = s->scale * 1.4426950408889634f;
    int rep = s->H / s->Hkv;
    if (s->dqk == 64)
        k_flash_fwd_64<<<grid, 128, fwd_smem(64), zb_cuda_stream()>>>(q, k, v, out, lse, s->T, s->H, rep,
                                                                     s->q_stride, s->k_stride, s->v_stride, sl2);
    else
        k_flash_fwd_128<<<grid, 128, fwd_smem(128), zb_cuda_stream()>>>(q, k, v, out, lse, s->T, s->H, rep,
                                                                       s->q_stride, s->k_stride, s->v_stride, sl2);
    ZB_CUDA_LAUNCHED("flash attention forward");
}

/* D[b, h, t] = sum_d dO[b, t, h, d] O[b, t, h, d]: one warp per (row, head) */
__global__ void k_flash_dot(float *D, const float *dout, const float *out, int T, int H, int hd, size_t rows) {
    size_t it = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (it >= rows) return;
    size_t bt = it / H;
    int h = (int)(it % H);
    const float *a = dout + bt * H * hd + (size_t)h * hd, *o = out + bt * H * hd + (size_t)h * hd;
    float acc = 0;
    for (int j = lane; j < hd; j += 32) acc += a[j] * o[j];
    for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) {
        size_t b = bt / T, t = bt % T;
        D[(b * H + h) * T + t] = acc;
    }
}

extern "C" void zb_cuda_flash_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                       const float *lse, const float *q, const float *k, const float *v,
                                       const zb_attn_shape *s) {
    if (zb_cuda_flash_version() == 2) { zb_cuda_flash2_backward(dq, dk, dv, dout, out, lse, q, k, v, s); return; }
    set_smem_limits();
    int B = s->B, T = s->T, H = s->H, hd = s->dqk, rep = H / s->Hkv;
    size_t rows = (size_t)B * T * H;
    float *D = (float *)zb_cuda_scratch(ZB_WS_ATTN2, rows * sizeof(float));
    if (!D) return;
    k_flash_dot<<<zb_cuda_blocks(rows, 8), 256, 0, zb_cuda_stream()>>>(D, dout, out, T, H, hd, rows);
    ZB_CUDA_LAUNCHED("flash attention backward D");
    /* dQ is summed by atomics over the key blocks: its head columns start at zero */
    zb_cuda_zero_2d(dq, (size_t)s->q_stride * 4, (size_t)H * hd * 4, (size_t)B * T);
    dim3 grid((T + 63) / 64, B * s->Hkv);
    float sl2 = s->scale * 1.4426950408889634f;
    if (hd == 64)
        k_flash_bwd_64<<<grid, 128, bwd_smem(64), zb_cuda_stream()>>>(q, k, v, dout, lse, D, dq, dk, dv, T, H, rep,
                                                                     s->q_stride, s->k_stride, s->v_stride,
                                                                     s->scale, sl2);
    else
        k_flash_bwd_128<<<grid, 128, bwd_smem(128), zb_cuda_stream()>>>(q, k, v, dout, lse, D, dq, dk, dv, T, H, rep,
                                                                       s->q_stride, s->k_stride, s->v_stride,
                                                                       s->scale, sl2);
    ZB_CUDA_LAUNCHED("flash attention backward");
}
