#!/usr/bin/env python3
"""bench_torch.py — PyTorch + HF transformers on the same GPU, side by side with zebra's CUDA
backend (cluster/gpu-check.sh runs both): the reference figures of issue 17's targets.

  - bf16 matmul TFLOP/s (8192^3, random data) and device copy GB/s (read + write);
  - one training step of the Llama-3.2-1B shape (random weights), seq 2048 x 8 rows, SDPA
    attention, fused AdamW, in two forms: autocast bf16 over float32 weights (the same design
    as zebra's bf16 mode: f32 master weights, bf16 operands) and pure bf16 weights; tokens/s
    and MFU against the matmul rate measured here;
  - Llama-3.1-8B decode (random bf16 weights) at batch 1 and 48 over an 8k-token KV cache
    (filled with random values, then timed decode steps through HF's DynamicCache).

Tooling outside the runtime (no Python runs in zebra itself). Prints one line per figure and
writes them as JSON with --json FILE. Usage: bench_torch.py [--json FILE] [--quick] [--no-decode]
(--no-decode: the ceilings and the training step only, for a short lease)
"""
import json
import sys
import time
import traceback

import torch

RESULTS = []


def report(what, value, unit, **extra):
    row = {"what": what, "value": round(float(value), 3), "unit": unit}
    row.update(extra)
    RESULTS.append(row)
    print(f"{what:60s} {value:12.2f} {unit}", flush=True)


def timed(fn, warm=3, reps=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def ceilings(quick):
    n = 4096 if quick else 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: a @ b)
    peak = 2 * n ** 3 / t / 1e12
    report(f"torch bf16 matmul {n}^3", peak, "TFLOP/s")
    x = torch.empty(1 << 30, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x))
    report("torch device copy 4 GiB (read + write)", 2 * x.numel() * 4 / t / 1e9, "GB/s")
    del a, b, x, y
    return peak


def llama_config(size):
    from transformers import LlamaConfig
    if size == "1b":
        kw = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, head_dim=64)
    else:
        kw = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, head_dim=128)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    for key in ("rope_parameters", "rope_scaling"):
        try:
            cfg = LlamaConfig(max_position_embeddings=131072, rms_norm_eps=1e-5, **kw, **{key: rope})
            break
        except Exception:
            cfg = None
    if cfg is None:
        cfg = LlamaConfig(max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, **kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def train_1b(peak, quick):
    from transformers import LlamaForCausalLM
    cfg = llama_config("1b")
    B, T = (2, 2048) if quick else (8, 2048)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    for form in ("autocast bf16, f32 weights", "pure bf16 weights"):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
        if form.startswith("pure"):
            model = model.to(torch.bfloat16)
        model.train()
        nparam = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            if form.startswith("autocast"):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(input_ids=ids, labels=ids)
            else:
                out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = timed(step, warm=2, reps=3 if quick else 5)
        tok = B * T / t
        # model flops per token: 6 x parameters (the tied embedding once, as the head) + causal
        # attention 6 L T d (QK^T and PV, forward and backward, half the square)
        fpt = 6 * nparam + 6 * cfg.num_hidden_layers * T * cfg.hidden_size
        report(f"HF Llama-3.2-1B train step B={B} T={T} ({form})", tok, "tokens/s",
               step_ms=round(t * 1e3, 2), mfu=round(tok * fpt / 1e12 / peak, 4), params=nparam)
        del model, opt
        torch.cuda.empty_cache()


def decode_8b(quick):
    from transformers import DynamicCache, LlamaForCausalLM
    cfg = llama_config("8b")
    if quick:
        cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.eval()
    ctx = 8192
    for B in (1, 48):
        cache = DynamicCache()
        shape = (B, cfg.num_key_value_heads, ctx, cfg.head_dim)
        for layer in range(cfg.num_hidden_layers):
            k = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.5
            v = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.5
            cache.update(k, v, layer)
        nxt = torch.randint(0, cfg.vocab_size, (B, 1), device="cuda")
        steps = 8
        with torch.no_grad():
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)   # warm-up step
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t = (time.perf_counter() - t0) / steps
        report(f"HF Llama-3.1-8B decode batch {B} ctx 8k (DynamicCache, bf16)", B / t, "tokens/s",
               step_ms=round(t * 1e3, 2), layers=cfg.num_hidden_layers)
        del cache, out
        torch.cuda.empty_cache()


def main():
    quick = "--quick" in sys.argv
    path = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name()}", flush=True)
    try:
        import transformers
        print(f"transformers {transformers.__version__}", flush=True)
    except Exception:
        pass
    peak = None
    for name, fn in (("ceilings", lambda: ceilings(quick)), ("train_1b", lambda: train_1b(peak, quick)),
                     ("decode_8b", lambda: decode_8b(quick))):
        if name == "decode_8b" and "--no-decode" in sys.argv:
            continue
        try:
            r = fn()
            if name == "ceilings":
                peak = r
        except Exception as e:
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            RESULTS.append({"what": name, "error": f"{type(e).__name__}: {e}"})
            torch.cuda.empty_cache()
    if path:
        with open(path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": RESULTS}, f,
                      indent=1)


if __name__ == "__main__":
    main()
