/* cuda_loss.cu — cross-entropy, KL and MSE over device rows, AdamW and the gradient sum of
 * squares; see cuda_ops.h. One block per row for the vocabulary losses (maxima, then sums in
 * double, as ops.c); the per-row results are summed on the device and one double comes back. */
#include <limits.h>

#include "cuda_ops.h"
#include "cuda_reduce.cuh"

#include <math.h>
#include <stdlib.h>

static unsigned vthreads(int V) { return V >= 1024 ? 512 : (V >= 256 ? 256 : 64); }

/* sum of x[0..n) (double) into *out, one block */
__global__ void k_sum_d(double *out, const double *x, size_t n) {
    double s = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) *out = s;
}

/* the sum of a device array of n doubles, on the host (waits for the stream) */
static double sum_to_host(const double *x, size_t n) {
    double *acc = (double *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double));
    if (!acc) return NAN;
    k_sum_d<<<1, 512, 0, zb_cuda_stream()>>>(acc, x, n);
    ZB_CUDA_LAUNCHED("sum");
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h;
}

/* ---- cross-entropy ------------------------------------------------------------------------- */

/* row r: loss[r] = logsumexp(row) - row[y] (0 for y outside [0, V)); d (may alias logits) =
 * scale * (softmax - onehot), zero rows where ignored. */
__global__ void k_ce(double *loss, float *d, const float *logits, const int *targets, int V, float scale) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float *dr = d ? d + r * V : NULL;
    int y = targets[r];
    if (y < 0 || y >= V) {
        if (dr) for (int v = threadIdx.x; v < V; v += blockDim.x) dr[v] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0;
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
    mx = zb_block_max_f(mx);
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(row[v] - mx);
    sum = zb_block_sum_d(sum);
    double lse = mx + log(sum);
    float ry = row[y];   /* read before the gradient may overwrite it */
    if (threadIdx.x == 0) loss[r] = lse - ry;
    if (dr) {
        __syncthreads();   /* every thread has read row[y] */
        float l = (float)lse;
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float p = scale * expf(row[v] - l);
            dr[v] = v == y ? p - scale : p;
        }
    }
}

__global__ void k_count_valid(int *count, const int *targets, int N, int V) {
    int c = 0;
    for (int i = threadIdx.x; i < N; i += blockDim.x) c += targets[i] >= 0 && targets[i] < V;
    double s = zb_block_sum_d((double)c);
    if (threadIdx.x == 0) *count = (int)s;
}

extern "C" double zb_cuda_cross_entropy_n(float *dlogits, const float *logits, const int *targets, int N, int V,
                                          float scale, int *n_valid) {
    if (n_valid) *n_valid = 0;
    if (N <= 0) return 0;
    double *loss = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!loss) return NAN;
    k_ce<<<N, vthreads(V), 0, zb_cuda_stream()>>>(loss, dlogits, logits, targets, V, scale);
    ZB_CUDA_LAUNCHED("cross_entropy");
    if (n_valid) {
        int *cnt = (int *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double) + sizeof(int));
        if (cnt) {
            cnt += 2;   /* after the double of sum_to_host */
            k_count_valid<<<1, 512, 0, zb_cuda_stream()>>>(cnt, targets, N, V);
            ZB_CUDA_LAUNCHED("count_valid");
            zb_cuda_download(n_valid, cnt, sizeof(int));
        }
    }
    return sum_to_host(loss, (size_t)N);
}

extern "C" double zb_cuda_cross_entropy(float *dlogits, const float *logits, const int *targets, int N, int V,
                                        float scale) {
    return zb_cuda_cross_entropy_n(dlogits, logits, targets, N, V, scale, NULL);
}

__global__ void k_target_logp(double *logp, const float *logits, const int *targets, int V) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    int y = targets[r];
    if (y < 0 || y >= V) {
        if (threadIdx.x == 0) logp[r] = 0;
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
    mx = zb_block_max_f(mx);
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(row[v] - mx);
    sum = zb_block_sum_d(sum);
    if (threadIdx.x == 0) logp[r] = (double)row[y] - (mx + log(sum));
}

extern "C" void zb_cuda_target_logprobs(double *logp_dev, const float *logits, const int *targets, int N, int V) {
    if (N <= 0) return;
    k_target_logp<<<N, vthreads(V), 0, zb_cuda_stream()>>>(logp_dev, logits, targets, V);
    ZB_CUDA_LAUNCHED("target_logprobs");
}

/* ---- the vocabulary-parallel cross-entropy's passes (backend.h vp_*): one block per row ------- */

__global__ void k_vp_max(float *mx, const float *logits, int V) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, row[v]);
    m = zb_block_max_f(m);
    if (threadIdx.x == 0) mx[r] = m;
}

__global__ void k_vp_sums(double *st, const float *logits, const float *mx, const int *targets, int V, long long v0) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float m = mx[r];
    double sum = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) sum += (double)expf(row[v] - m);
    sum = zb_block_sum_d(sum);
    if (threadIdx.x == 0) {
        long long y = (long long)targets[r] - v0;
        st[2 * r] = sum;
        st[2 * r + 1] = (y >= 0 && y < V) ? (double)row[y] : 0.0;   /* the target logit lives on one rank */
    }
}

__global__ void k_vp_grad(double *loss, float *d, const float *logits, const float *mx, const double *st,
                          const int *targets, int V, long long v0, long long Vfull, float scale) {
    size_t r = blockIdx.x;
    const float *row = logits + r * V;
    float *dr = d ? d + r * V : NULL;
    long long y = targets[r];
    if (y < 0 || y >= Vfull) {
        if (dr) for (int v = threadIdx.x; v < V; v += blockDim.x) dr[v] = 0.0f;
        if (threadIdx.x == 0) loss[r] = 0;
        return;
    }
    double lse = (double)mx[r] + log(st[2 * r]);
    if (threadIdx.x == 0) loss[r] = lse - st[2 * r + 1];
    if (dr) {
        float l = (float)lse;
        long long yl = y - v0;   /* each thread reads and writes its own entries only: aliasing is safe */
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float p = scale * expf(row[v] - l);
            dr[v] = v == yl ? p - scale : p;
        }
    }
}

extern "C" void zb_cuda_vp_row_max(float *mx, const float *logits, int N, int V) {
    if (N <= 0) return;
    k_vp_max<<<N, vthreads(V), 0, zb_cuda_stream()>>>(mx, logits, V);
    ZB_CUDA_LAUNCHED("vp_row_max");
}

extern "C" void zb_cuda_vp_row_sums(double *st, const float *logits, const float *mx, const int *targets, int N, int V,
                                    long long v0) {
    if (N <= 0) return;
    k_vp_sums<<<N, vthreads(V), 0, zb_cuda_stream()>>>(st, logits, mx, targets, V, v0);
    ZB_CUDA_LAUNCHED("vp_row_sums");
}

extern "C" double zb_cuda_vp_ce_grad(float *dlogits, const float *logits, const float *mx, const double *st,
                                     const int *targets, int N, int V, long long v0, long long Vfull, float scale) {
    if (N <= 0) return 0;
    double *loss = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!loss) return NAN;
    k_vp_grad<<<N, vthreads(V), 0, zb_cuda_stream()>>>(loss, dlogits, logits, mx, st, targets, V, v0, Vfull, scale);
    ZB_CUDA_LAUNCHED("vp_ce_grad");
    return sum_to_host(loss, (size_t)N);
}

/* ---- greedy decoding: the argmax of each row ------------------------------------------------- */

/* (value, index) b beats a: larger, or equal at a lower index; a NaN is never a candidate
 * (index INT_MAX = none), so the order of the combinations does not change the pick */
__device__ static inline bool am_better(float bv, int bi, float av, int ai) {
    return bi != INT_MAX && (ai == INT_MAX || bv > av || (bv == av && bi < ai));
}

/* one block per row: each thread scans its stride (increasing indices: the first of equal values
 * stays), then the warps and the block combine; zb_sample's scan gives 0 when row[0] is NaN */
__global__ void k_argmax_rows(int *out, const float *x, int V) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *r = x + (size_t)blockIdx.x * V;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float a = r[v];
        if (!isnan(a) && (bi == INT_MAX || a > bv)) { bv = a; bi = v; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w != 0) return;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : INT_MAX;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (am_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) out[blockIdx.x] = (isnan(r[0]) || bi == INT_MAX) ? 0 : bi;
}

extern "C" void zb_cuda_argmax_rows(int *out, const float *x, int N, int V) {
    if (N <= 0 || V <= 0) return;
    k_argmax_rows<<<N, V >= 1024 ? 1024 : 64, 0, zb_cuda_stream()>>>(out, x, V);
    ZB_CUDA_LAUNCHED("argmax_rows");
}

/* ---- KL(teacher || student) at temperature tau ----------------------------------------------- */

__global__ void k_kl(double *kl, float *d, const float *student, const float *teacher, const int *mask, int V,
                     float tau, float scale) {
    size_t r = blockIdx.x;
    const float *s = student + r * V, *t = teacher + r * V;
    float *dr = d ? d + r * V : NULL;
    if (mask && !mask[r]) {
        if (dr) for (int v = threadIdx.x; v < V; v += blockDim.x) dr[v] = 0.0f;
        if (threadIdx.x == 0) kl[r] = 0;
        return;
    }
    float ms = -INFINITY, mt = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        ms = fmaxf(ms, s[v] / tau);
        mt = fmaxf(mt, t[v] / tau);
    }
    ms = zb_block_max_f(ms);
    mt = zb_block_max_f(mt);
    double zs = 0, zt = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        zs += (double)expf(s[v] / tau - ms);
        zt += (double)expf(t[v] / tau - mt);
    }
    zs = zb_block_sum_d(zs);
    zt = zb_block_sum_d(zt);
    double lzs = ms + log(zs), lzt = mt + log(zt), acc = 0;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        double lpt = t[v] / tau - lzt, lps = s[v] / tau - lzs, pt = exp(lpt);
        acc += pt * (lpt - lps);
        if (dr) dr[v] = (float)(scale * (exp(lps) - pt) / tau);
    }
    acc = zb_block_sum_d(acc);
    if (threadIdx.x == 0) kl[r] = acc;
}

extern "C" double zb_cuda_kl_div(float *dstudent, const float *student, const float *teacher, const int *mask,
                                 int N, int V, float tau, float scale) {
    if (N <= 0) return 0;
    double *kl = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!kl) return NAN;
    k_kl<<<N, vthreads(V), 0, zb_cuda_stream()>>>(kl, dstudent, student, teacher, mask, V, tau, scale);
    ZB_CUDA_LAUNCHED("kl_div");
    return sum_to_host(kl, (size_t)N);
}

/* ---- mean row distance (ILD as the release) ------------------------------------------------- */

__global__ void k_row_dist(double *dist, float *g, const float *s, const float *t, int d, float gscale) {
    size_t r = blockIdx.x;
    const float *sr = s + r * d, *tr = t + r * d;
    double ss = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        double e = (double)sr[i] - tr[i];
        ss += e * e;
    }
    ss = zb_block_sum_d(ss);
    double n = sqrt(ss);
    if (threadIdx.x == 0) dist[r] = n;
    if (g) {
        float *gr = g + r * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            gr[i] = n > 0 ? (float)(gscale * ((double)sr[i] - tr[i]) / n) : 0.0f;
    }
}

/* mean over N rows of ||s_n - t_n|| (double); g (may be NULL) OVERWRITTEN with
 * scale (s_n - t_n) / (||s_n - t_n|| N), 0 where the rows are equal */
extern "C" double zb_cuda_mean_row_dist(float *g, const float *s, const float *t, int N, int d, float scale) {
    if (N <= 0) return 0;
    double *dist = (double *)zb_cuda_scratch(ZB_WS_LOSS, (size_t)N * sizeof(double));
    if (!dist) return NAN;
    k_row_dist<<<N, vthreads(d), 0, zb_cuda_stream()>>>(dist, g, s, t, d, scale / N);
    ZB_CUDA_LAUNCHED("mean_row_dist");
    return sum_to_host(dist, (size_t)N) / N;
}

/* ---- MSE -------------------------------------------------------------------------------------- */

__global__ void k_mse(double *acc, float *da, const float *a, const float *b, size_t n, float scale) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double e = (double)a[i] - b[i];
        s += e * e;
        if (da) da[i] = (float)(scale * 2.0 * e / n);
    }
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" double zb_cuda_mse(float *da, const float *a, const float *b, size_t n, float scale) {
    if (!n) return 0;
    double *acc = (double *)zb_cuda_scratch(ZB_WS_LOSS, sizeof(double));
    if (!acc) return NAN;
    zb_cuda_zero(acc, sizeof(double));
    unsigned blocks = zb_cuda_blocks(n, 256);
    if (blocks > 4096) blocks = 4096;
    k_mse<<<blocks, 256, 0, zb_cuda_stream()>>>(acc, da, a, b, n, scale);
    ZB_CUDA_LAUNCHED("mse");
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h / n;
}

__global__ void k_adamw_range(float *w, const float *g, float *m, float *v, size_t n, float b1, float b2, float eps,
                              float decay, float step, float bc2s, float gs) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gj = g[i] * gs;
        float mj = b1 * m[i] + (1.0f - b1) * gj;
        float vj = b2 * v[i] + (1.0f - b2) * gj * gj;
        m[i] = mj;
        v[i] = vj;
        w[i] = w[i] * decay - step * mj / (sqrtf(vj) / bc2s + eps);
    }
}

extern "C" void zb_cuda_adamw_range(float *w, const float *g, float *m, float *v, size_t n, float beta1, float beta2,
                                    float eps, float decay, float step_size, float bc2s, float grad_scale) {
    if (!n) return;
    zb_cuda_weights_changed();
    k_adamw_range<<<zb_cuda_blocks(n, 256), 256, 0, zb_cuda_stream()>>>(w, g, m, v, n, beta1, beta2, eps, decay,
                                                                       step_size, bc2s, grad_scale);
    ZB_CUDA_LAUNCHED("adamw_range");
}

__global__ void k_sumsq_range(double *acc, const float *x, size_t n) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" double zb_cuda_sumsq_range(const float *x, size_t n) {
    if (!n) return 0;
    double *acc = (double *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double) + sizeof(int) * 4);
    if (!acc) return NAN;
    zb_cuda_zero(acc, sizeof(double));
    unsigned blocks = zb_cuda_blocks(n, 256);
    if (blocks > 2048) blocks = 2048;
    k_sumsq_range<<<blocks, 256, 0, zb_cuda_stream()>>>(acc, x, n);
    ZB_CUDA_LAUNCHED("sumsq_range");
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h;
}

/* ---- parameter segments, AdamW, sum of squares ------------------------------------------------- */

#define SEG_CHUNK 8192   /* floats per block */

struct zb_cuda_segs {
    int n;
    long long total_blocks;
    /* device arrays: off, len [n]; first block of each segment [n + 1]; lr_mult, wd [n] */
    long long *off, *len, *first;
    float *lr_mult, *wd;
};

extern "C" int zb_cuda_segs_create(zb_cuda_segs **out, int n, const size_t *off, const size_t *len,
                                   const float *lr_mult, const float *wd) {
    *out = NULL;
    zb_cuda_segs *s = (zb_cuda_segs *)calloc(1, sizeof *s);
    long long *h = (long long *)malloc(sizeof(long long) * (3 * (size_t)n + 1));
    if (!s || !h) { free(s); free(h); return zb_fail(ZB_ENOMEM, "optimizer segments"); }
    s->n = n;
    long long *ho = h, *hl = h + n, *hf = h + 2 * n, b = 0;
    for (int i = 0; i < n; i++) {
        ho[i] = (long long)off[i];
        hl[i] = (long long)len[i];
        hf[i] = b;
        b += (hl[i] + SEG_CHUNK - 1) / SEG_CHUNK;
    }
    hf[n] = b;
    s->total_blocks = b;
    int rc = zb_cuda_alloc((void **)&s->off, sizeof(long long) * (3 * (size_t)n + 1), "optimizer segments");
    if (!rc) rc = zb_cuda_alloc((void **)&s->lr_mult, sizeof(float) * (2 * (size_t)n + 1), "optimizer segments");
    if (!rc) {
        s->len = s->off + n;
        s->first = s->off + 2 * n;
        s->wd = s->lr_mult + n;
        rc = zb_cuda_upload(s->off, h, sizeof(long long) * (3 * (size_t)n + 1));
    }
    if (!rc && n) rc = zb_cuda_upload(s->lr_mult, lr_mult, sizeof(float) * n);
    if (!rc && n) rc = zb_cuda_upload(s->wd, wd, sizeof(float) * n);
    free(h);
    if (rc) { zb_cuda_segs_free(s); return rc; }
    *out = s;
    return ZB_OK;
}

extern "C" void zb_cuda_segs_free(zb_cuda_segs *s) {
    if (!s) return;
    zb_cuda_free(s->off);
    zb_cuda_free(s->lr_mult);
    free(s);
}

/* the segment of block b: the last i with first[i] <= b */
__device__ static int seg_of(const long long *first, int n, long long b) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (first[mid] <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__global__ void k_sumsq(double *acc, const long long *off, const long long *len, const long long *first, int n,
                        const float *g) {
    long long b = blockIdx.x;
    int sgi = seg_of(first, n, b);
    long long a = off[sgi] + (b - first[sgi]) * SEG_CHUNK, e = off[sgi] + len[sgi];
    if (a + SEG_CHUNK < e) e = a + SEG_CHUNK;
    double s = 0;
    for (long long i = a + threadIdx.x; i < e; i += blockDim.x) s += (double)g[i] * g[i];
    s = zb_block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" double zb_cuda_sumsq(const zb_cuda_segs *s, const float *g) {
    double *acc = (double *)zb_cuda_scratch(ZB_WS_MISC, sizeof(double));
    if (!acc) return NAN;
    zb_cuda_zero(acc, sizeof(double));
    if (s->total_blocks > 0) {
        k_sumsq<<<(unsigned)s->total_blocks, 256, 0, zb_cuda_stream()>>>(acc, s->off, s->len, s->first, s->n, g);
        ZB_CUDA_LAUNCHED("grad sumsq");
    }
    double h = NAN;
    if (zb_cuda_download(&h, acc, sizeof h) != ZB_OK) return NAN;
    return h;
}

/* optim.h: p <- p (1 - lr_i wd_i); m, v moments; p <- p - (lr_i / bc1) m / (sqrt(v) / bc2s + eps) */
__global__ void k_adamw(const long long *off, const long long *len, const long long *first, const float *lr_mult,
                        const float *wd, int n, float *w, const float *g, float *m, float *v, float lr, float b1,
                        float b2, float eps, float gs, float bc1, float bc2s) {
    long long b = blockIdx.x;
    int sgi = seg_of(first, n, b);
    long long a = off[sgi] + (b - first[sgi]) * SEG_CHUNK, e = off[sgi] + len[sgi];
    if (a + SEG_CHUNK < e) e = a + SEG_CHUNK;
    float lri = lr * lr_mult[sgi], decay = 1.0f - lri * wd[sgi], step = lri / bc1;
    for (long long i = a + threadIdx.x; i < e; i += blockDim.x) {
        float gj = g[i] * gs;
        float mj = b1 * m[i] + (1.0f - b1) * gj;
        float vj = b2 * v[i] + (1.0f - b2) * gj * gj;
        m[i] = mj;
        v[i] = vj;
        w[i] = w[i] * decay - step * mj / (sqrtf(vj) / bc2s + eps);
    }
}

extern "C" void zb_cuda_adamw(const zb_cuda_segs *s, float *w, const float *g, float *m, float *v, float lr,
                              float beta1, float beta2, float eps, float grad_scale, long long t) {
    if (s->total_blocks <= 0) return;
    zb_cuda_weights_changed();
    /* the bias corrections as optim.c computes them (double, then float) */
    float bc1 = (float)(1.0 - pow(beta1, (double)t)), bc2s = (float)sqrt(1.0 - pow(beta2, (double)t));
    k_adamw<<<(unsigned)s->total_blocks, 256, 0, zb_cuda_stream()>>>(s->off, s->len, s->first, s->lr_mult, s->wd,
                                                                    s->n, w, g, m, v, lr, beta1, beta2, eps,
                                                                    grad_scale, bc1, bc2s);
    ZB_CUDA_LAUNCHED("adamw");
}
