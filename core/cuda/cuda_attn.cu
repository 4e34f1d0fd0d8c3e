/* cuda_attn.cu — causal GQA attention forward / backward for training, and attention over
 * K/V caches for generation; see cuda_ops.h.
 *
 * Training: query rows are taken in blocks of Tq rows; for a block ending at row q1 only keys
 * 0..q1-1 can be attended (causal), so each block is two batched cuBLAS products over every
 * (sequence, head) pair: S = scale Q K^T ([Tq, q1] per head), then O = P V, with a row kernel in
 * between that turns S into P = exp(S - lse) and saves lse (logsumexp of the scaled scores).
 * Memory: one [B, H, Tq, T] block, never [B, H, T, T]; Tq is chosen from a byte budget. The
 * backward recomputes P from lse per block (as flash attention does):
 *   dP = dO V^T,  dS = P (dP - rowsum(P dP)),  dQ = scale dS K,  dK += scale dS^T Q,  dV += P^T dO.
 * dK / dV of a KV group collect the products of its rep query heads: those run as rep batched
 * calls (one per head of the group) so that no two problems of one call write the same rows. */
#include "cuda_ops.h"
#include "cuda_reduce.cuh"

static int g_block_rows = 0;   /* forced query-block rows (tests); 0 = from the budget */
static int g_flash = 1;        /* bf16 mode: the fused flash kernels where they apply */

extern "C" void zb_cuda_attention_use_flash(int on) { g_flash = on; }

static int use_flash(const zb_attn_shape *s, const void *q, const void *k, const void *v) {
    return g_flash && zb_cuda_precision() == ZB_PREC_BF16 && zb_cuda_flash_supported(s, q, k, v);
}
#define ZB_ATTN_BUDGET ((size_t)512 << 20)   /* bytes of one [B, H, Tq, T] score block */

extern "C" void zb_cuda_attention_block_rows(int rows) { g_block_rows = rows > 0 ? rows : 0; }

static int block_rows(int B, int H, int T) {
    if (g_block_rows) return g_block_rows < T ? g_block_rows : T;
    size_t per_row = (size_t)B * H * T * sizeof(float);
    size_t tq = ZB_ATTN_BUDGET / (per_row ? per_row : 1);
    if (tq >= (size_t)T) return T;
    tq = tq / 64 * 64;
    return tq < 64 ? (T < 64 ? T : 64) : (int)tq;
}

/* ---- batched products over pointer arrays ---------------------------------------------- */

/* Pointer i of a family: base + (i / per) * sb + (i % per) * sh + ((i % per) / rep) * sg (in
 * elements of esize bytes). One launch fills up to 8 families. */
typedef struct {
    const char *base;
    long long sb, sh, sg;
    int per, rep, esize;
    const void **out;
} ptr_family;
typedef struct { ptr_family f[8]; int n; } ptr_plan;

__global__ void k_fill_ptrs(ptr_plan p, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    for (int j = 0; j < p.n; j++) {
        const ptr_family *f = &p.f[j];
        long long b = i / f->per, h = i % f->per;
        f->out[i] = f->base + (b * f->sb + h * f->sh + (h / f->rep) * f->sg) * f->esize;
    }
}

static void fill_ptrs(ptr_plan *p, int count) {
    k_fill_ptrs<<<zb_cuda_blocks(count, 128), 128, 0, zb_cuda_stream()>>>(*p, count);
    ZB_CUDA_LAUNCHED("attention pointers");
}

static void fam(ptr_plan *p, const void **out, const void *base, int esize, int per, int rep, long long sb,
                long long sh, long long sg) {
    ptr_family *f = &p->f[p->n++];
    f->base = (const char *)base;
    f->esize = esize;
    f->per = per;
    f->rep = rep;
    f->sb = sb;
    f->sh = sh;
    f->sg = sg;
    f->out = out;
}

/* Row-major C_i[M,N] = alpha op(A_i) op(B_i) + beta C_i over pointer arrays (see gemm_ex in
 * cuda_gemm.cu for the swap). at: the operands' type (float32 or bf16); C is float32. */
static void gemm_ptrs(int tA, int tB, int M, int N, int K, float alpha, const void **A, int lda, const void **B,
                      int ldb, float beta, void **C, int ldc, int batch, cudaDataType_t at) {
    if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return;
    cublasComputeType_t ct = at == CUDA_R_16BF ? CUBLAS_COMPUTE_32F
                             : zb_cuda_precision() == ZB_PREC_F32 ? CUBLAS_COMPUTE_32F_PEDANTIC
                                                                  : CUBLAS_COMPUTE_32F_FAST_16BF;
    ZB_CUBLAS(cublasGemmBatchedEx(zb_cuda_cublas(), tB ? CUBLAS_OP_T : CUBLAS_OP_N, tA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  N, M, K, &alpha, B, at, ldb, A, at, lda, &beta, C, CUDA_R_32F, ldc, batch, ct,
                                  CUBLAS_GEMM_DEFAULT));
}

/* ---- row kernels ------------------------------------------------------------------------- */

/* Rows of S [batch][nq][ld]: row R = (i, r), i = R / nq (i = b*H + h), query t = q0 + r sees keys
 * 0..t. S -> P = exp(S - lse) in place (0 beyond t), lse[(i * T) + t] saved. */
__global__ void k_softmax_fwd(float *S, float *lse, int nq, int ld, int q0, int T) {
    size_t R = blockIdx.x;
    int i = (int)(R / nq), t = q0 + (int)(R % nq), L = t + 1;
    float *row = S + R * ld;
    float mx = -INFINITY;
    for (int u = threadIdx.x; u < L; u += blockDim.x) mx = fmaxf(mx, row[u]);
    mx = zb_block_max_f(mx);
    double sum = 0;
    for (int u = threadIdx.x; u < L; u += blockDim.x) sum += (double)expf(row[u] - mx);
    sum = zb_block_sum_d(sum);
    float l = mx + (float)log(sum);
    for (int u = threadIdx.x; u < ld; u += blockDim.x) row[u] = u < L ? expf(row[u] - l) : 0.0f;
    if (threadIdx.x == 0) lse[(size_t)i * T + t] = l;
}

/* Backward rows: P = exp(S - lse) (S in P, overwritten by P), dot = sum P dP (double),
 * dS = P (dP - dot) (dP overwritten by dS). */
__global__ void k_softmax_bwd(float *P, float *dP, const float *lse, int nq, int ld, int q0, int T) {
    size_t R = blockIdx.x;
    int i = (int)(R / nq), t = q0 + (int)(R % nq), L = t + 1;
    float *p = P + R * ld, *dp = dP + R * ld;
    float l = lse[(size_t)i * T + t];
    double dot = 0;
    for (int u = threadIdx.x; u < ld; u += blockDim.x) {
        float pu = u < L ? expf(p[u] - l) : 0.0f;
        p[u] = pu;
        dot += (double)pu * dp[u];
    }
    dot = zb_block_sum_d(dot);
    float d = (float)dot;
    for (int u = threadIdx.x; u < ld; u += blockDim.x) dp[u] = u < L ? p[u] * (dp[u] - d) : 0.0f;
}

static unsigned len_threads(int L) {
    unsigned t = 32;
    while (t < 256 && t < (unsigned)L) t *= 2;
    return t;
}

/* ---- training ------------------------------------------------------------------------------ */

extern "C" void zb_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                          const zb_attn_shape *s) {
    if (use_flash(s, q, k, v)) { zb_cuda_flash_forward(out, lse, q, k, v, s); return; }
    int B = s->B, T = s->T, H = s->H, rep = H / s->Hkv, BH = B * H;
    int Tq = block_rows(B, H, T);
    float *S = (float *)zb_cuda_scratch(ZB_WS_ATTN, (size_t)BH * Tq * T * sizeof(float));
    const void **ptr = (const void **)zb_cuda_scratch(ZB_WS_PTRS, (size_t)5 * BH * sizeof(void *));
    if (!S || !ptr) return;
    const void **pq = ptr, **pk = ptr + BH, **ps = ptr + 2 * BH, **pv = ptr + 3 * BH, **po = ptr + 4 * BH;
    for (int q0 = 0; q0 < T; q0 += Tq) {
        int nq = T - q0 < Tq ? T - q0 : Tq, kend = q0 + nq;
        ptr_plan p;
        p.n = 0;
        fam(&p, pq, q + (size_t)q0 * s->q_stride, 4, H, 1, (long long)T * s->q_stride, s->dqk, 0);
        fam(&p, pk, k, 4, H, rep, (long long)T * s->k_stride, 0, s->dqk);
        fam(&p, ps, S, 4, H, 1, (long long)H * nq * kend, (long long)nq * kend, 0);
        fam(&p, pv, v, 4, H, rep, (long long)T * s->v_stride, 0, s->dv);
        fam(&p, po, out + (size_t)q0 * H * s->dv, 4, H, 1, (long long)T * H * s->dv, s->dv, 0);
        fill_ptrs(&p, BH);
        gemm_ptrs(0, 1, nq, kend, s->dqk, s->scale, pq, s->q_stride, pk, s->k_stride, 0.0f, (void **)ps, kend, BH,
                  CUDA_R_32F);
        k_softmax_fwd<<<(unsigned)((size_t)BH * nq), len_threads(kend), 0, zb_cuda_stream()>>>(S, lse, nq, kend, q0, T);
        ZB_CUDA_LAUNCHED("attention softmax");
        gemm_ptrs(0, 0, nq, s->dv, kend, 1.0f, ps, kend, pv, s->v_stride, 0.0f, (void **)po, H * s->dv, BH,
                  CUDA_R_32F);
    }
}

extern "C" void zb_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                           const float *lse, const float *q, const float *k, const float *v,
                                           const zb_attn_shape *s) {
    if (use_flash(s, q, k, v)) { zb_cuda_flash_backward(dq, dk, dv, dout, out, lse, q, k, v, s); return; }
    int B = s->B, T = s->T, H = s->H, Hkv = s->Hkv, rep = H / Hkv, BH = B * H, BG = B * Hkv;
    int Tq = block_rows(B, H, T), dqk = s->dqk, dvh = s->dv, od = H * dvh;
    size_t blk = (size_t)BH * Tq * T * sizeof(float);
    float *P = (float *)zb_cuda_scratch(ZB_WS_ATTN, blk), *dP = (float *)zb_cuda_scratch(ZB_WS_ATTN2, blk);
    const void **ptr = (const void **)zb_cuda_scratch(ZB_WS_PTRS, ((size_t)7 * BH + 6 * BG) * sizeof(void *));
    if (!P || !dP || !ptr) return;
    /* dk, dv head columns are sums over heads and blocks: start from zero */
    zb_cuda_zero_2d(dk, (size_t)s->k_stride * 4, (size_t)Hkv * dqk * 4, (size_t)B * T);
    zb_cuda_zero_2d(dv, (size_t)s->v_stride * 4, (size_t)Hkv * dvh * 4, (size_t)B * T);
    const void **pq = ptr, **pk = ptr + BH, **pp = ptr + 2 * BH, **pd = ptr + 3 * BH, **pv = ptr + 4 * BH;
    const void **po = ptr + 5 * BH, **pdq = ptr + 6 * BH;
    /* the per-head-of-group families for dK / dV: (b, g) problems, reusing the tail slots */
    const void **gs = ptr + 7 * BH;   /* 6 families of BG pointers */
    for (int q0 = 0; q0 < T; q0 += Tq) {
        int nq = T - q0 < Tq ? T - q0 : Tq, kend = q0 + nq;
        long long sS = (long long)nq * kend;
        ptr_plan p;
        p.n = 0;
        fam(&p, pq, q + (size_t)q0 * s->q_stride, 4, H, 1, (long long)T * s->q_stride, dqk, 0);
        fam(&p, pk, k, 4, H, rep, (long long)T * s->k_stride, 0, dqk);
        fam(&p, pp, P, 4, H, 1, H * sS, sS, 0);
        fam(&p, pd, dP, 4, H, 1, H * sS, sS, 0);
        fam(&p, pv, v, 4, H, rep, (long long)T * s->v_stride, 0, dvh);
        fam(&p, po, dout + (size_t)q0 * od, 4, H, 1, (long long)T * od, dvh, 0);
        fam(&p, pdq, dq + (size_t)q0 * s->q_stride, 4, H, 1, (long long)T * s->q_stride, dqk, 0);
        fill_ptrs(&p, BH);
        /* S (into P), dP = dO V^T, then the row kernel: P and dS */
        gemm_ptrs(0, 1, nq, kend, dqk, s->scale, pq, s->q_stride, pk, s->k_stride, 0.0f, (void **)pp, kend, BH,
                  CUDA_R_32F);
        gemm_ptrs(0, 1, nq, kend, dvh, 1.0f, po, od, pv, s->v_stride, 0.0f, (void **)pd, kend, BH, CUDA_R_32F);
        k_softmax_bwd<<<(unsigned)((size_t)BH * nq), len_threads(kend), 0, zb_cuda_stream()>>>(P, dP, lse, nq, kend,
                                                                                              q0, T);
        ZB_CUDA_LAUNCHED("attention softmax backward");
        /* dQ = scale dS K (overwrites the block's rows) */
        gemm_ptrs(0, 0, nq, dqk, kend, s->scale, pd, kend, pk, s->k_stride, 0.0f, (void **)pdq, s->q_stride, BH,
                  CUDA_R_32F);
        /* dK_g += scale dS_h^T Q_h, dV_g += P_h^T dO_h: one call per head j of the groups */
        for (int j = 0; j < rep; j++) {
            const void **gq = gs + 0 * BG, **gk = gs + 1 * BG, **gd = gs + 2 * BG, **gp = gs + 3 * BG;
            const void **go = gs + 4 * BG, **gv = gs + 5 * BG;
            ptr_plan g;
            g.n = 0;
            /* problem (b, g): head h = g * rep + j */
            fam(&g, gq, q + (size_t)q0 * s->q_stride + (size_t)j * dqk, 4, Hkv, 1, (long long)T * s->q_stride,
                (long long)rep * dqk, 0);
            fam(&g, gd, dP + (size_t)j * sS, 4, Hkv, 1, H * sS, rep * sS, 0);
            fam(&g, gp, P + (size_t)j * sS, 4, Hkv, 1, H * sS, rep * sS, 0);
            fam(&g, go, dout + (size_t)q0 * od + (size_t)j * dvh, 4, Hkv, 1, (long long)T * od, (long long)rep * dvh,
                0);
            fam(&g, gk, dk, 4, Hkv, 1, (long long)T * s->k_stride, dqk, 0);
            fam(&g, gv, dv, 4, Hkv, 1, (long long)T * s->v_stride, dvh, 0);
            fill_ptrs(&g, BG);
            gemm_ptrs(1, 0, kend, dqk, nq, s->scale, gd, kend, gq, s->q_stride, 1.0f, (void **)gk, s->k_stride, BG,
                      CUDA_R_32F);
            gemm_ptrs(1, 0, kend, dvh, nq, 1.0f, gp, kend, go, od, 1.0f, (void **)gv, s->v_stride, BG, CUDA_R_32F);
        }
    }
}

/* ---- generation: attention over caches ------------------------------------------------------ */

/* Rows R of S [rows][ld]: sequence i = R / (H n), query t = R % n, keys 0..pos[i]+t (at most len
 * scored columns). P written as float32 in place or as bf16 into P16 (same layout), 0 past them. */
__global__ void k_softmax_cached(float *S, __nv_bfloat16 *P16, const int *pos, int Hn, int n, int len, int ld) {
    size_t R = blockIdx.x;
    int i = (int)(R / Hn), t = (int)(R % n), L = pos[i] + t + 1;
    if (L > len) L = len;   /* the scored columns; ld - len more are padding */
    float *row = S + R * ld;
    float mx = -INFINITY;
    for (int u = threadIdx.x; u < L; u += blockDim.x) mx = fmaxf(mx, row[u]);
    mx = zb_block_max_f(mx);
    double sum = 0;
    for (int u = threadIdx.x; u < L; u += blockDim.x) sum += (double)expf(row[u] - mx);
    sum = zb_block_sum_d(sum);
    float l = mx + (float)log(sum);
    for (int u = threadIdx.x; u < ld; u += blockDim.x) {
        float pu = u < L ? expf(row[u] - l) : 0.0f;
        if (P16) P16[R * ld + u] = __float2bfloat16_rn(pu);
        else row[u] = pu;
    }
}

/* Pointer families of the cached attention: problem i of count; with per-group problems
 * (n == 1) i = (sequence, group), otherwise i = (sequence, head). The cache pointers read the
 * sequence's slot from seq (device). */
typedef struct {
    const char *q, *kc, *vc;
    float *o;
    int esz;                       /* bytes per element of q and the caches */
    int per, n, H, rep, dqk, dv, group_mode;
    long long seq_stride, group_stride;
    const int *seq;
    const void **pq, **pk, **pv;
    void **po;
} cache_plan;

__global__ void k_fill_cache_ptrs(cache_plan p, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    int si = i / p.per, j = i % p.per;          /* sequence index; group or head */
    int g = p.group_mode ? j : j / p.rep;
    long long slot = p.seq[si], qoff, ooff;
    if (p.group_mode) {   /* rows = the rep heads of group j of the one token */
        qoff = (long long)si * p.H * p.dqk + (long long)j * p.rep * p.dqk;
        ooff = (long long)si * p.H * p.dv + (long long)j * p.rep * p.dv;
    } else {              /* rows = the n tokens of head j */
        qoff = (long long)si * p.n * p.H * p.dqk + (long long)j * p.dqk;
        ooff = (long long)si * p.n * p.H * p.dv + (long long)j * p.dv;
    }
    long long coff = (slot * p.seq_stride + g * p.group_stride) * p.esz;
    p.pq[i] = p.q + qoff * p.esz;
    p.pk[i] = p.kc + coff;
    p.pv[i] = p.vc + coff;
    p.po[i] = p.o + ooff;
}

#define SPLIT_KC 1024   /* positions per piece of a split P V product */

/* piece k of problem i (e = k count + i): P and V from position k SPLIT_KC on, its own output */
__global__ void k_split_ptrs(const void **pp2, const void **pv2, void **po2, const void *const *pp,
                             const void *const *pv, float *part, int count, int nsc, int esz, long long row_stride,
                             int Mdv) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= nsc) return;
    int k = e / count, i = e % count;
    pp2[e] = (const char *)pp[i] + (size_t)k * SPLIT_KC * esz;
    pv2[e] = (const char *)pv[i] + (size_t)k * SPLIT_KC * row_stride * esz;
    po2[e] = part + (size_t)e * Mdv;
}

/* out of problem i (rows of ldo) = the sum of its ns pieces' partial outputs, pieces in order */
__global__ void k_split_sum(void *const *po, const float *part, int count, int ns, int M, int dv, int ldo) {
    size_t per = (size_t)M * dv, e = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (e >= (size_t)count * per) return;
    int i = (int)(e / per);
    size_t rc = e % per;
    float acc = 0.0f;
    for (int k = 0; k < ns; k++) acc += part[((size_t)k * count + i) * per + rc];
    ((float *)po[i])[(rc / dv) * ldo + rc % dv] = acc;
}

extern "C" void zb_cuda_attention_cached(float *out, const float *q, const void *kc, const void *vc,
                                         const int *seq_dev, const int *pos_dev, int nb, int n, int max_len,
                                         const zb_cuda_cache_attn *a) {
    if (nb <= 0 || n <= 0 || max_len <= 0) return;
    if (n == 1 && zb_cuda_decode_attn_ok(a->H, a->Hkv, a->dqk)) {   /* decode: flash-decoding, lengths on the device */
        zb_cuda_decode_attn(out, q, kc, vc, seq_dev, pos_dev, nb, max_len, a);
        return;
    }
    zb_cuda_attention_cached_gemm(out, q, kc, vc, seq_dev, pos_dev, nb, n, max_len, a);
}

extern "C" void zb_cuda_attention_cached_gemm(float *out, const float *q, const void *kc, const void *vc,
                                              const int *seq_dev, const int *pos_dev, int nb, int n, int max_len,
                                              const zb_cuda_cache_attn *a) {
    if (nb <= 0 || n <= 0 || max_len <= 0) return;
    int H = a->H, rep = H / a->Hkv, gm = n == 1, per = gm ? a->Hkv : H, count = nb * per;
    /* rows of each problem; S row length, a multiple of 8 (16-byte rows of bf16 probabilities for
     * the tensor cores; the columns past max_len get probability 0) */
    int M = gm ? rep : n, ld = (max_len + 7) / 8 * 8;
    size_t rows = (size_t)nb * H * n;
    cudaDataType_t dt = a->cache_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    int esz = a->cache_bf16 ? 2 : 4;
    /* decode's P V: few output rows and columns over max_len positions, so a few blocks per
     * sequence would stream its whole cache: split the positions into ns pieces of SPLIT_KC, one
     * problem each, their partial outputs summed in a fixed order (k_split_sum) */
    int ns = gm && max_len > 2 * SPLIT_KC ? (max_len + SPLIT_KC - 1) / SPLIT_KC : 1;
    size_t sbytes = (rows * ld * sizeof(float) + 255) / 256 * 256;
    size_t pbytes_split = ns > 1 ? (size_t)ns * count * M * a->dv * sizeof(float) : 0;
    float *S = (float *)zb_cuda_scratch(ZB_WS_ATTN, sbytes + pbytes_split);
    const void **ptr = (const void **)zb_cuda_scratch(ZB_WS_PTRS, (size_t)(5 + 3 * (ns > 1 ? ns : 0)) * count *
                                                                       sizeof(void *));
    if (!S || !ptr) return;
    const void *qop = q;
    void *P16 = NULL;
    if (a->cache_bf16) {   /* bf16 products: the query and the probabilities rounded to bf16 */
        size_t pbytes = (rows * ld * 2 + 255) / 256 * 256;
        P16 = zb_cuda_scratch(ZB_WS_ATTN2, pbytes + (size_t)nb * n * H * a->dqk * 2);
        if (!P16) return;
        uint16_t *q16 = (uint16_t *)((char *)P16 + pbytes);
        zb_cuda_f32_to_bf16(q16, q, (size_t)nb * n * H * a->dqk);
        qop = q16;
    }
    cache_plan p;
    p.q = (const char *)qop;
    p.kc = (const char *)kc;
    p.vc = (const char *)vc;
    p.o = out;
    p.esz = esz;
    p.per = per;
    p.n = n;
    p.H = H;
    p.rep = rep;
    p.dqk = a->dqk;
    p.dv = a->dv;
    p.group_mode = gm;
    p.seq_stride = a->seq_stride;
    p.group_stride = a->group_stride;
    p.seq = seq_dev;
    p.pq = ptr;
    p.pk = ptr + count;
    p.pv = ptr + 2 * count;
    p.po = (void **)(ptr + 3 * count);
    const void **ps = ptr + 4 * count;
    k_fill_cache_ptrs<<<zb_cuda_blocks(count, 128), 128, 0, zb_cuda_stream()>>>(p, count);
    ZB_CUDA_LAUNCHED("cache attention pointers");
    ptr_plan f;
    f.n = 0;
    fam(&f, ps, S, 4, 1, 1, (long long)M * ld, 0, 0);   /* problem i's scores: M rows of ld */
    fill_ptrs(&f, count);
    int lq = gm ? a->dqk : H * a->dqk;   /* a group's heads are adjacent; tokens are H*dqk apart */
    gemm_ptrs(0, 1, M, max_len, a->dqk, a->scale, p.pq, lq, p.pk, (int)a->row_stride, 0.0f, (void **)ps, ld, count,
              dt);
    k_softmax_cached<<<(unsigned)rows, len_threads(max_len), 0, zb_cuda_stream()>>>(
        S, (__nv_bfloat16 *)P16, pos_dev, H * n, n, max_len, ld);
    ZB_CUDA_LAUNCHED("cache attention softmax");
    if (P16) {   /* the probabilities as bf16 rows of the same shape */
        f.n = 0;
        fam(&f, ps, P16, 2, 1, 1, (long long)M * ld, 0, 0);
        fill_ptrs(&f, count);
    }
    int lo = gm ? a->dv : H * a->dv;
    if (ns == 1) {
        gemm_ptrs(0, 0, M, a->dv, max_len, 1.0f, ps, ld, p.pv, (int)a->row_stride, 0.0f, p.po, lo, count, dt);
        return;
    }
    /* problems e = k * count + i (piece k of problem i): the full pieces in one call, the last in another */
    const void **pp2 = ptr + 5 * count, **pv2 = pp2 + (size_t)ns * count;
    void **po2 = (void **)(pv2 + (size_t)ns * count);
    float *part = (float *)((char *)S + sbytes);
    int nsc = ns * count, last = max_len - (ns - 1) * SPLIT_KC;
    k_split_ptrs<<<zb_cuda_blocks(nsc, 128), 128, 0, zb_cuda_stream()>>>(pp2, pv2, po2, ps, p.pv, part, count, nsc,
                                                                       esz, a->row_stride, M * a->dv);
    ZB_CUDA_LAUNCHED("cache attention split pointers");
    gemm_ptrs(0, 0, M, a->dv, SPLIT_KC, 1.0f, pp2, ld, pv2, (int)a->row_stride, 0.0f, po2, a->dv, (ns - 1) * count, dt);
    size_t o = (size_t)(ns - 1) * count;
    gemm_ptrs(0, 0, M, a->dv, last, 1.0f, pp2 + o, ld, pv2 + o, (int)a->row_stride, 0.0f, po2 + o, a->dv, count, dt);
    size_t tot = (size_t)count * M * a->dv;
    k_split_sum<<<zb_cuda_blocks(tot, 256), 256, 0, zb_cuda_stream()>>>(p.po, part, count, ns, M, a->dv, lo);
    ZB_CUDA_LAUNCHED("cache attention split sum");
}

/* ---- cache writes ---------------------------------------------------------------------------- */

__global__ void k_cache_store(void *cache, int bf16, const float *src, int src_stride, const int *seq,
                              const int *pos, int n, int groups, int width, long long seq_stride,
                              long long group_stride, long long row_stride, size_t total) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(e % width);
        size_t rest = e / width;
        int g = (int)(rest % groups);
        size_t r = rest / groups;   /* source row = (sequence index, token) */
        int si = (int)(r / n), t = (int)(r % n);
        long long off = (long long)seq[si] * seq_stride + g * group_stride + (long long)(pos[si] + t) * row_stride + c;
        float x = src[r * src_stride + (size_t)g * width + c];
        if (bf16) ((__nv_bfloat16 *)cache)[off] = __float2bfloat16_rn(x);
        else ((float *)cache)[off] = x;
    }
}

extern "C" void zb_cuda_cache_store(void *cache, int cache_bf16, const float *src, int src_stride,
                                    const int *seq_dev, const int *pos_dev, int nb, int n, int groups, int width,
                                    long long seq_stride, long long group_stride, long long row_stride) {
    size_t total = (size_t)nb * n * groups * width;
    if (!total) return;
    k_cache_store<<<zb_cuda_blocks(total, 256), 256, 0, zb_cuda_stream()>>>(
        cache, cache_bf16, src, src_stride, seq_dev, pos_dev, n, groups, width, seq_stride, group_stride,
        row_stride, total);
    ZB_CUDA_LAUNCHED("cache store");
}
