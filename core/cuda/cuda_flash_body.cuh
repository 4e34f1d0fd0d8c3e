/* cuda_flash_body.cuh — the flash-attention kernels for one head dimension, included by
 * cuda_flash.cu once per HD (64, 128) with FWD_NAME / BWD_NAME set: C-style instantiation
 * instead of a template. See cuda_flash.cu for the algorithm and the fragment layouts. */

#define LDQ (HD + 8)   /* row stride (bf16) of [64][HD] tiles: conflict-free fragment loads */
#define LDT (64 + 8)   /* row stride of [HD][64] (transposed) and [64][64] tiles */

/* Forward: one CTA = 64 query rows of one (sequence, head), 4 warps of 16 rows. */
__global__ void __launch_bounds__(128) FWD_NAME(const float *__restrict__ q, const float *__restrict__ k,
                                                const float *__restrict__ v, float *__restrict__ out,
                                                float *__restrict__ lse, int T, int H, int rep, int q_stride,
                                                int k_stride, int v_stride, float scale_log2) {
    extern __shared__ __align__(16) unsigned char fsm[];
    bf16 *Qs = (bf16 *)fsm, *Ks = Qs + 64 * LDQ, *Vt = Ks + 64 * LDQ;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int nqb = gridDim.x, qb = nqb - 1 - blockIdx.x;   /* the longest blocks first */
    const int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / rep, q0 = qb * 64;
    const float *qbase = q + (size_t)b * T * q_stride + (size_t)h * HD;
    const float *kbase = k + (size_t)b * T * k_stride + (size_t)g * HD;
    const float *vbase = v + (size_t)b * T * v_stride + (size_t)g * HD;
    load_rows(Qs, LDQ, qbase, q_stride, q0, T, HD, tid);
    __syncthreads();
    uint32_t qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        int r = 16 * w + gid, c = kk * 16 + 2 * tig;
        qf[kk][0] = ld32(Qs + r * LDQ + c);
        qf[kk][1] = ld32(Qs + (r + 8) * LDQ + c);
        qf[kk][2] = ld32(Qs + r * LDQ + c + 8);
        qf[kk][3] = ld32(Qs + (r + 8) * LDQ + c + 8);
    }
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const int row0 = q0 + 16 * w + gid;   /* this thread's rows: row0, row0 + 8 */
    for (int kb = 0; kb <= qb; kb++) {
        __syncthreads();   /* the previous tiles are consumed */
        load_rows(Ks, LDQ, kbase, k_stride, kb * 64, T, HD, tid);
        load_rows_t(Vt, LDT, vbase, v_stride, kb * 64, T, HD, tid);
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                const bf16 *kr = Ks + (nt * 8 + gid) * LDQ + kk * 16 + 2 * tig;
                mma16816(s[nt], qf[kk], ld32(kr), ld32(kr + 8));
            }
        }
        /* scale (log2 units), causal / length mask, running max and sum per row */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int col = kb * 64 + nt * 8 + 2 * tig + (i & 1), row = row0 + (i >> 1) * 8;
                float x = s[nt][i] * scale_log2;
                if (col > row || col >= T) x = -INFINITY;
                s[nt][i] = x;
                mx[i >> 1] = fmaxf(mx[i >> 1], x);
            }
        float corr[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(mrow[r], mx[r]);
            mu[r] = mn == -INFINITY ? 0.0f : mn;   /* a row with no key yet (past T) */
            corr[r] = exp2f(mrow[r] - mu[r]);
            mrow[r] = mn;
            lrow[r] *= corr[r];
        }
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            o[i][0] *= corr[0]; o[i][1] *= corr[0];
            o[i][2] *= corr[1]; o[i][3] *= corr[1];
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float p = exp2f(s[nt][i] - mu[i >> 1]);
                s[nt][i] = p;
                lrow[i >> 1] += p;
            }
        /* O += P V: the score fragments of two key tiles are one A fragment (k = 16 keys) */
#pragma unroll
        for (int k2 = 0; k2 < 4; k2++) {
            uint32_t a[4] = {pack2(s[2 * k2][0], s[2 * k2][1]), pack2(s[2 * k2][2], s[2 * k2][3]),
                             pack2(s[2 * k2 + 1][0], s[2 * k2 + 1][1]), pack2(s[2 * k2 + 1][2], s[2 * k2 + 1][3])};
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                const bf16 *vr = Vt + (dt * 8 + gid) * LDT + k2 * 16 + 2 * tig;
                mma16816(o[dt], a, ld32(vr), ld32(vr + 8));
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
        lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
    }
    const int od = H * HD;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int row = row0 + 8 * r;
        if (row >= T) continue;
        float inv = 1.0f / lrow[r];
        float *orow = out + ((size_t)b * T + row) * od + (size_t)h * HD;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            float2 val = make_float2(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
            *(float2 *)(orow + dt * 8 + 2 * tig) = val;
        }
        if (tig == 0) lse[((size_t)b * H + h) * T + row] = mrow[r] * 0.69314718055994531f + logf(lrow[r]);
    }
}

/* Backward: one CTA = 64 keys of one (sequence, KV group), 4 warps of 16 keys; loops over the
 * group's heads and the query blocks from the diagonal on. dK, dV accumulate in registers and
 * are written once (overwriting); dQ (zeroed head columns) gets each block's part by atomics. */
__global__ void __launch_bounds__(128) BWD_NAME(const float *__restrict__ q, const float *__restrict__ k,
                                                const float *__restrict__ v, const float *__restrict__ dout,
                                                const float *__restrict__ lse, const float *__restrict__ Dv,
                                                float *dq, float *__restrict__ dk, float *__restrict__ dv, int T,
                                                int H, int rep, int q_stride, int k_stride, int v_stride,
                                                float scale, float scale_log2) {
    extern __shared__ __align__(16) unsigned char fsm[];
    bf16 *Qs = (bf16 *)fsm, *Qt = Qs + 64 * LDQ, *Os = Qt + HD * LDT, *Ot = Os + 64 * LDQ;
    bf16 *Ss = Ot + HD * LDT, *Kt = Ss + 64 * LDT, *Ks = Kt + HD * LDT, *Vs = Ks + 64 * LDQ;
    float *l2 = (float *)(Vs + 64 * LDQ), *Dq = l2 + 64;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int kb = blockIdx.x, bg = blockIdx.y, Hkv = H / rep, b = bg / Hkv, g = bg % Hkv, k0 = kb * 64;
    const int nqb = (T + 63) / 64, od = H * HD;
    load_rows(Ks, LDQ, k + (size_t)b * T * k_stride + (size_t)g * HD, k_stride, k0, T, HD, tid);
    load_rows_t(Kt, LDT, k + (size_t)b * T * k_stride + (size_t)g * HD, k_stride, k0, T, HD, tid);
    load_rows(Vs, LDQ, v + (size_t)b * T * v_stride + (size_t)g * HD, v_stride, k0, T, HD, tid);
    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) dka[i][j] = dva[i][j] = 0.0f;
    const int key0 = k0 + 16 * w + gid;   /* this thread's keys: key0, key0 + 8 */
    for (int hh = 0; hh < rep; hh++) {
        const int h = g * rep + hh;
        const float *qbase = q + (size_t)b * T * q_stride + (size_t)h * HD;
        const float *obase = dout + (size_t)b * T * od + (size_t)h * HD;
        for (int qb = kb; qb < nqb; qb++) {
            const int q0 = qb * 64;
            __syncthreads();   /* the previous block's tiles are consumed */
            load_rows(Qs, LDQ, qbase, q_stride, q0, T, HD, tid);
            load_rows_t(Qt, LDT, qbase, q_stride, q0, T, HD, tid);
            load_rows(Os, LDQ, obase, od, q0, T, HD, tid);
            load_rows_t(Ot, LDT, obase, od, q0, T, HD, tid);
            if (tid < 64) {
                int qq = q0 + tid;
                size_t li = ((size_t)b * H + h) * T + qq;
                l2[tid] = qq < T ? lse[li] * 1.4426950408889634f : 0.0f;
                Dq[tid] = qq < T ? Dv[li] : 0.0f;
            }
            __syncthreads();
            /* S^T = K_w Q^T and dP^T = V_w dO^T: 16 keys x 64 queries per warp */
            float st[8][4], dp[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.0f;
                dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
            }
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                int r = 16 * w + gid, c = kk * 16 + 2 * tig;
                uint32_t ka[4] = {ld32(Ks + r * LDQ + c), ld32(Ks + (r + 8) * LDQ + c), ld32(Ks + r * LDQ + c + 8),
                                  ld32(Ks + (r + 8) * LDQ + c + 8)};
                uint32_t va[4] = {ld32(Vs + r * LDQ + c), ld32(Vs + (r + 8) * LDQ + c), ld32(Vs + r * LDQ + c + 8),
                                  ld32(Vs + (r + 8) * LDQ + c + 8)};
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    const bf16 *qr = Qs + (nt * 8 + gid) * LDQ + c;
                    mma16816(st[nt], ka, ld32(qr), ld32(qr + 8));
                    const bf16 *orr = Os + (nt * 8 + gid) * LDQ + c;
                    mma16816(dp[nt], va, ld32(orr), ld32(orr + 8));
                }
            }
            /* P^T = exp(S scale - lse) (masked), dS^T = P^T (dP^T - D) */
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int qc = nt * 8 + 2 * tig + (i & 1), qq = q0 + qc, key = key0 + (i >> 1) * 8;
                    float p = (key <= qq && qq < T && key < T) ? exp2f(st[nt][i] * scale_log2 - l2[qc]) : 0.0f;
                    st[nt][i] = p;
                    dp[nt][i] = p * (dp[nt][i] - Dq[qc]);
                }
            /* dV_w += P^T dO, dK_w += dS^T Q (A fragments from the score fragments) */
#pragma unroll
            for (int k2 = 0; k2 < 4; k2++) {
                uint32_t pa[4] = {pack2(st[2 * k2][0], st[2 * k2][1]), pack2(st[2 * k2][2], st[2 * k2][3]),
                                  pack2(st[2 * k2 + 1][0], st[2 * k2 + 1][1]),
                                  pack2(st[2 * k2 + 1][2], st[2 * k2 + 1][3])};
                uint32_t da[4] = {pack2(dp[2 * k2][0], dp[2 * k2][1]), pack2(dp[2 * k2][2], dp[2 * k2][3]),
                                  pack2(dp[2 * k2 + 1][0], dp[2 * k2 + 1][1]),
                                  pack2(dp[2 * k2 + 1][2], dp[2 * k2 + 1][3])};
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++) {
                    const bf16 *orr = Ot + (dt * 8 + gid) * LDT + k2 * 16 + 2 * tig;
                    mma16816(dva[dt], pa, ld32(orr), ld32(orr + 8));
                    const bf16 *qr = Qt + (dt * 8 + gid) * LDT + k2 * 16 + 2 * tig;
                    mma16816(dka[dt], da, ld32(qr), ld32(qr + 8));
                }
            }
            /* dS to shared memory as [query][key] for dQ = dS K */
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int qc = nt * 8 + 2 * tig + (i & 1), kc = 16 * w + gid + (i >> 1) * 8;
                    Ss[qc * LDT + kc] = __float2bfloat16_rn(dp[nt][i]);
                }
            __syncthreads();
            /* dQ (queries 16w.. of this block) += scale dS K over the 64 keys */
            float dqa[HD / 8][4];
#pragma unroll
            for (int i = 0; i < HD / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.0f;
#pragma unroll
            for (int k2 = 0; k2 < 4; k2++) {
                int r = 16 * w + gid, c = k2 * 16 + 2 * tig;
                uint32_t a[4] = {ld32(Ss + r * LDT + c), ld32(Ss + (r + 8) * LDT + c), ld32(Ss + r * LDT + c + 8),
                                 ld32(Ss + (r + 8) * LDT + c + 8)};
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++) {
                    const bf16 *kr = Kt + (dt * 8 + gid) * LDT + c;
                    mma16816(dqa[dt], a, ld32(kr), ld32(kr + 8));
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                int qq = q0 + 16 * w + gid + 8 * r;
                if (qq >= T) continue;
                float *dqr = dq + ((size_t)b * T + qq) * q_stride + (size_t)h * HD;
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt++) {
                    atomicAdd(dqr + dt * 8 + 2 * tig, dqa[dt][2 * r] * scale);
                    atomicAdd(dqr + dt * 8 + 2 * tig + 1, dqa[dt][2 * r + 1] * scale);
                }
            }
        }
    }
    /* this CTA's keys: every head of the group is in dka / dva */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int key = key0 + 8 * r;
        if (key >= T) continue;
        float *dkr = dk + ((size_t)b * T + key) * k_stride + (size_t)g * HD;
        float *dvr = dv + ((size_t)b * T + key) * v_stride + (size_t)g * HD;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            *(float2 *)(dkr + dt * 8 + 2 * tig) = make_float2(dka[dt][2 * r] * scale, dka[dt][2 * r + 1] * scale);
            *(float2 *)(dvr + dt * 8 + 2 * tig) = make_float2(dva[dt][2 * r], dva[dt][2 * r + 1]);
        }
    }
}

#undef LDQ
#undef LDT
