#!/usr/bin/env python3
"""cluster/scaling_model.py — a model of zebra's training step time under DP x TP x PP, checked
against cluster/scaling.sh measurements and used to predict larger machines (docs/SCALING.md).

  python3 cluster/scaling_model.py check SCALING_DIR MODEL.json     # model vs measured (scaling.json)
  python3 cluster/scaling_model.py predict MODEL.json --hw h200 --tokens 16384 --seq 2048

The step of one rank, for a replica that processes n tokens (n = global tokens / dp):
  compute   Tc = 6 P n / (tp pp F)                        P: parameters (embedding lookups and
            (forward 2 P n, backward 4 P n FLOPs)          the table excluded); F: achieved FLOP/s
                                                           of one rank, fitted from the 1-rank run
  TP        (4 L' + 2) all-reduces of n d floats per step (2 per block forward: mixer out, MLP down;
            2 backward: the inputs of the column-parallel projections; +2 embedding / head), each
            a ring: 2 (tp-1)/tp * bytes / B + 2 (tp-1) a, not overlapped; L' = layers per stage;
            the vocabulary-parallel cross-entropy runs on the GPUs (core/shard.c, the backend's
            vp_* passes; two all-reduces of n floats, neglected); KD's KL is still staged
            through the host: 2 n V/tp floats over PCIe (B_host; device "cuda-host-loss")
  PP        1F1B over M micro-batches: (M + pp - 1) / M of a stage's compute (the bubble), plus
            2 (M + pp - 1) messages of n/M d floats between neighbours (forward, backward)
  DP        a ring all-reduce of the 4 P / (tp pp) gradient bytes: 2 (dp-1)/dp bytes / B + 2 (dp-1) a,
            in buckets overlapped with the backward (2/3 of Tc): exposed max(0, t_ar - 2/3 Tc)
            plus the last bucket (bucket bytes / B); ZeRO-1 the same volume as reduce-scatter
            (half the ring, in the same buckets, overlapped the same way) + all-gather of the
            parameters after the optimizer step (the other half), bucket by bucket under the next
            forward (1/3 of Tc): exposed max(0, t_ar/2 - 1/3 Tc) + the first bucket (S6; with
            ZB_ZERO_GATHER=after all of t_ar/2 was exposed)
  step      T = Tc * bubble + T_tp + T_pp + T_dp_exposed
Efficiency against one rank: E = (tokens/s at N ranks) / (N tokens/s at 1 rank).
Hardware: F (FLOP/s per rank), B (bytes/s per link class: within a node, across nodes, host),
a (latency per message). The CPU's are fitted from the measured 1-rank and 2-rank runs; the
H200's are the datasheet / measured figures named in docs/SCALING.md (--hw h200).
"""
import json
import math
import sys

HW = {
    # one H200: bf16 dense 989 TFLOP/s peak (790 measured for a large GEMM on the lent machine);
    # F at 48% MFU of 790 (PyTorch + HF on the Llama-3.2-1B shape, issue 17); NVLink 4: 900 GB/s
    # bidirectional per GPU, NCCL ring all-reduce bus bandwidth ~360 GB/s measured on 8-GPU HGX
    # H100/H200 (nccl-tests); across nodes one 400 Gb/s NIC per GPU: ~45 GB/s; PCIe 5 x16 to the
    # host ~25 GB/s per direction in practice.
    "h200": {"F": 0.48 * 790e12, "B_node": 360e9, "B_net": 45e9, "B_host": 25e9, "a": 10e-6, "per_node": 8},
}


def model_params(cfg, path=None):
    """(parameters that cost FLOPs per token: the embedding lookup excluded, the head included;
    all parameters), from `zebra info --json` (ZEBRA, default build/zebra) on the config"""
    import os
    import subprocess
    path = path or cfg["_path"]
    saved = os.path.join(os.path.dirname(os.path.abspath(path)), "info.json")   # scaling.sh wrote it
    if os.path.exists(saved) and os.path.getsize(saved) > 0:
        info = json.load(open(saved))
    else:
        z = os.environ.get("ZEBRA") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "zebra")
        if not os.path.exists(z):
            sys.exit("scaling_model.py: no %s beside %s and no zebra at %s (set ZEBRA)" % (saved, path, z))
        info = json.loads(subprocess.run([z, "info", "--json", path], capture_output=True, text=True,
                                         check=True).stdout)
    P_all = info["params"]
    tied = cfg.get("tie_word_embeddings", False)
    return (P_all if tied else P_all - cfg["hidden_size"] * cfg["vocab_size"]), P_all


def step_time(cfg, dp, tp, pp, n_tokens, hw, M=1, device="cpu", bucket_mb=25, zero=False, f_rank=None):
    """n_tokens: tokens per replica per step; returns (total, parts)"""
    P, P_all = model_params(cfg)
    d, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    F = f_rank or hw["F"]
    Tc = 6.0 * P * n_tokens / (tp * pp * F)
    per_node = hw.get("per_node", 1 << 30)

    def ring(nbytes, k, across):
        if k <= 1:
            return 0.0
        B = hw["B_net"] if across else hw["B_node"]
        return 2.0 * (k - 1) / k * nbytes / B + 2 * (k - 1) * hw["a"]

    Lp = math.ceil(L / pp)
    T_tp = (4 * Lp + 2) * ring(4.0 * n_tokens * d, tp, tp > per_node)
    if device == "cuda-host-loss" and tp > 1:
        T_tp += 2 * 4.0 * n_tokens * V / tp / hw["B_host"]
    bubble = (M + pp - 1) / M if pp > 1 else 1.0
    T_pp = 0.0
    if pp > 1:
        B = hw["B_net"] if tp * pp > per_node else hw["B_node"]
        T_pp = 2 * (M + pp - 1) * (4.0 * n_tokens / M * d / B + hw["a"])
    # DP: the ring runs across nodes as soon as the replicas span nodes
    G = 4.0 * P_all / (tp * pp)
    across = dp * tp * pp > per_node
    t_ar = ring(G, dp, across)
    if zero:   # reduce-scatter in buckets under the backward + the all-gather in buckets under the forward
        last = ring(min(G, bucket_mb * 1048576.0), dp, across) / 2
        T_dp = max(0.0, t_ar / 2 - 2.0 / 3.0 * Tc) + last + max(0.0, t_ar / 2 - Tc / 3.0) + last if dp > 1 else 0.0
    else:
        last = ring(min(G, bucket_mb * 1048576.0), dp, across)
        T_dp = max(0.0, t_ar - 2.0 / 3.0 * Tc) + last if dp > 1 else 0.0
    total = Tc * bubble + T_tp + T_pp + T_dp
    return total, {"compute": Tc * bubble, "tp": T_tp, "pp": T_pp, "dp": T_dp}


def check(dir_, model_path):
    S = json.load(open(dir_ + "/scaling.json"))
    cfg = json.load(open(model_path))
    cfg["_path"] = model_path
    device = S["device"]
    res = [r for r in S["results"] if "refused" not in r]
    out = []
    for mode in sorted({r["mode"] for r in res}):
        base = next((r for r in res if r["mode"] == mode and r["layout"] == "1"), None)
        if not base:
            continue
        P, _ = model_params(cfg)
        F = 6.0 * P * base["tokens_per_step"] / base["step_s_median"]   # the rank's achieved FLOP/s
        # links: from a measured 2-rank DP run (comm_s = the all-reduce of the gradients, exposed)
        hw = dict(HW["h200"]) if device == "cuda" else {"B_node": 1e9, "B_net": 1e9, "B_host": 1e12, "a": 5e-6}
        dpr = next((r for r in res if r["mode"] == mode and r["layout"] == "dp2"), None)
        if device != "cpu" or not dpr or dpr["comm_s_median"] <= 0:
            pass
        else:   # the ring of 2: bytes / B = comm time (the exposed part; the CPU overlaps little)
            _, P_all = model_params(cfg)
            hw["B_node"] = hw["B_net"] = (4.0 * P_all) / dpr["comm_s_median"]
        for r in res:
            if r["mode"] != mode:
                continue
            n = r["tokens_per_step"] // r["dp"]
            M = r.get("grad_accum", 1) if r["pp"] > 1 else 1
            M = max(M, 2 * r["pp"]) if r["pp"] > 1 and M == 1 else M
            t, parts = step_time(cfg, r["dp"], r["tp"], r["pp"], n, hw, M=M, device=device, zero=bool(r.get("zero")),
                                 f_rank=F)
            out.append((mode, r["layout"], r["ranks"], r["step_s_median"], t, parts))
    print("| mode | layout | ranks | measured step s | model step s | model / measured | compute | tp | pp | dp |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, lay, n, meas, t, p in out:
        print("| %s | %s | %d | %.4f | %.4f | %.2f | %.4f | %.4f | %.4f | %.4f |" % (
            mode, lay, n, meas, t, t / meas, p["compute"], p["tp"], p["pp"], p["dp"]))


def predict(model_path, hw_name, tokens_per_gpu, seq):
    cfg = json.load(open(model_path))
    cfg["_path"] = model_path
    hw = HW[hw_name]
    P, P_all = model_params(cfg)
    print("model %s: %.2fB FLOP parameters, %.2fB in all; %s; %d tokens per GPU per step (weak scaling)" % (
        model_path, P / 1e9, P_all / 1e9, hw_name, tokens_per_gpu))
    t1, _ = step_time(cfg, 1, 1, 1, tokens_per_gpu, hw, device="cuda")
    print("| GPUs | layout | step s | compute | tp | pp | dp exposed | tokens/s | efficiency vs 1 GPU | "
          "efficiency, loss staged through the host (KD's KL) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for N, dp, tp, pp in [(1, 1, 1, 1), (2, 2, 1, 1), (8, 8, 1, 1), (8, 4, 2, 1), (8, 2, 2, 2), (64, 64, 1, 1),
                          (64, 32, 2, 1), (64, 16, 2, 2), (64, 8, 8, 1)]:
        n = tokens_per_gpu * tp * pp   # per replica: the replica's GPUs each see tokens_per_gpu worth
        M = 4 * pp if pp > 1 else 1
        t, p = step_time(cfg, dp, tp, pp, n, hw, M=M, device="cuda")
        t2, _ = step_time(cfg, dp, tp, pp, n, hw, M=M, device="cuda-host-loss")
        tps = dp * n / t
        print("| %d | dp%d tp%d pp%d | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f | %.0f%% | %.0f%% |" % (
            N, dp, tp, pp, t, p["compute"], p["tp"], p["pp"], p["dp"], tps, 100 * tps / (N * tokens_per_gpu / t1),
            100 * (dp * n / t2) / (N * tokens_per_gpu / t1)))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "predict":
        a = sys.argv
        hw = a[a.index("--hw") + 1] if "--hw" in a else "h200"
        tok = int(a[a.index("--tokens") + 1]) if "--tokens" in a else 16384
        seq = int(a[a.index("--seq") + 1]) if "--seq" in a else 2048
        predict(a[2], hw, tok, seq)
    else:
        print(__doc__)
        sys.exit(2)
