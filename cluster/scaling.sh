#!/usr/bin/env bash
# cluster/scaling.sh — strong and weak scaling of the training step over DP, TP, PP and their
# mixes, on CPU ranks or GPU ranks; repeated runs, median and spread, efficiency against one
# rank; JSON + markdown tables + SVG plots (docs/SCALING.md shows how they were made).
#
#   cluster/scaling.sh                                   # the defaults below
#   LAYOUTS="1 dp2 tp2 pp2 dp2-tp2 dp4 tp4" DEVICE=cpu REPEAT=3 OUT=scaling-cpu cluster/scaling.sh
#   DEVICE=cuda CONFIG=configs/zebra-1b.json LAYERS=16 SEQ=2048 ROWS=8 OUT=scaling-gpu cluster/scaling.sh
#
# A layout is "1" (one rank) or factors joined by "-": dpN, tpN, ppN (ranks = their product;
# TP fastest, then PP, then DP, as parallel/grid.h); dpNz: DP with ZeRO-1 (ZERO=1: every
# layout with ZeRO-1), e.g. LAYOUTS="1 dp2 dp2z" sets DP=2 with and without it side by side.
# A layout may end in ":NAME", a variant run with the environment in ENV_NAME (words VAR=VALUE),
# e.g. LAYOUTS="1 dp2 dp2:old" ENV_old="ZB_DP_SPARSE_EMBED=0 ZB_DP_MEAN=0": old and new side by side. Per MODE:
#   strong  the global batch is ROWS rows of SEQ tokens per step, whatever the layout: more
#           ranks share the same work;
#   weak    ROWS rows per model replica (per DP rank), so the global batch grows with dp; TP and
#           PP split one replica's work (for them weak = strong: the model does not grow).
# PP runs grad_accum = pp x PPM micro-batches per step (1F1B; bubble (pp-1)/(pp x PPM + pp-1)).
# Each (mode, layout) runs REPEAT times, STEPS steps each; the first step is a warm-up and is
# dropped; a run's value is the mean of the others. Reported over the repeats: the median and
# the spread (min .. max) of the step time, the median communication time inside the step
# (comm_s of train.jsonl: zebra's time inside core/comm.h calls; on GPUs, unless ZB_NCCL_SYNC=1,
# that is the time to queue them, not to run them), tokens/s, and the efficiency
#   E = (tokens/s on N ranks) / (N x tokens/s on 1 rank)     (same mode, device and model)
# which is T1/TN for weak DP and T1/(N TN) for strong scaling.
# Model: CONFIG (configs/zebra-1b.json: MLA + Mamba2) cut to LAYERS layers, width D, vocabulary
# VOCAB; random init (pretrain stage) on byte-level shards made from this repository's text.
# One CPU rank = THREADS cores (default 1, OpenBLAS and OpenMP); GPU ranks: one per GPU,
# --precision PRECISION (bf16).
# Output in OUT: runs.jsonl (every run), scaling.json (the aggregates), scaling.md (tables),
# scaling-<mode>.svg (efficiency against ranks), scaling-time.svg (step time split into
# communication and the rest, per layout).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
Z=${ZEBRA:-$SRC/build/zebra}
DEVICE=${DEVICE:-cpu}; PRECISION=${PRECISION:-bf16}
MODES=${MODES:-strong weak}; LAYOUTS=${LAYOUTS:-1 dp2 tp2 pp2}
REPEAT=${REPEAT:-3}; STEPS=${STEPS:-4}; PPM=${PPM:-2}
CONFIG=${CONFIG:-$SRC/configs/zebra-1b.json}; LAYERS=${LAYERS:-4}; D=${D:-512}; VOCAB=${VOCAB:-4096}
SEQ=${SEQ:-256}; ROWS=${ROWS:-8}; THREADS=${THREADS:-1}; ZERO=${ZERO:-0}
MPIEXEC=${MPIEXEC:-mpiexec}; BIND=${BIND:---bind-to none}   # BIND="--bind-to core --map-by core": a rank per core
OUT=${OUT:-scaling-$DEVICE}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
W=${WORKDIR:-$OUT/work}; mkdir -p "$W"
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")   # the runs happen in $W
case $Z in /*) ;; */*) Z=$(cd "$(dirname "$Z")" && pwd)/$(basename "$Z");; esac
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cd "$W"

python3 - "$CONFIG" "$LAYERS" "$VOCAB" "$D" > model.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); L, V, D = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c["num_hidden_layers"] = L; c["layer_kinds"] = (c["layer_kinds"] * L)[:L]; c["vocab_size"] = V
c["bos_token_id"] = 256; c["eos_token_id"] = [257]
if D != c["hidden_size"]:   # scale the widths with d (head counts fixed, head dims scaled)
    f = D / c["hidden_size"]; c["hidden_size"] = D; c["intermediate_size"] = int(c["intermediate_size"] * f)
    c["head_dim"] = max(8, int(c["head_dim"] * f))
    if "mamba2" in c:
        m = c["mamba2"]; m["headdim"] = max(8, int(m["headdim"] * f)); m["d_inner"] = m["nheads"] * m["headdim"]
        m["norm_group_size"] = m["headdim"]
    if "mla" in c:
        a = c["mla"]; a["v_head_dim"] = max(8, int(a["v_head_dim"] * f)); a["q_lora_rank"] = max(8, int(a["q_lora_rank"] * f))
c.pop("teacher", None)
print(json.dumps(c, indent=1))
PY
# the parameter counts, for cluster/scaling_model.py check (which then needs no binary)
"$Z" info --json model.json > info.json 2>/dev/null || rm -f info.json
[ -d shards ] || "$Z" data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" --input "$SRC/parallel" \
  --input "$SRC/launch" -o shards --val-fraction 0.05 --seed 1 >/dev/null

machine() {
  local cpu gpu
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  printf '{"host":"%s","cpu":"%s","cores":%s,"gpus":%d,"gpu":"%s","device":"%s","date":"%s","load1":"%s"}' \
    "$(hostname)" "$cpu" "$(nproc --all)" "$(nvidia-smi -L 2>/dev/null | grep -c ^GPU || true)" "$gpu" "$DEVICE" \
    "$(date -u +%FT%TZ)" "$(cut -d' ' -f1 /proc/loadavg)"
}
machine > machine.json

# one run: MODE LAYOUT REP -> a JSON line on runs.jsonl (or one with "refused")
run_one() {
  local mode=$1 lay=$2 rep=$3 dp=1 tp=1 pp=1 f zero=$ZERO base=${2%%:*} venv=()
  if [ "$base" != "$lay" ]; then   # a variant: its environment
    local vn="ENV_${lay#*:}"; read -r -a venv <<< "${!vn:-}"
  fi
  if [ "$base" != 1 ]; then
    for f in ${base//-/ }; do
      case $f in dp*z) dp=${f#dp}; dp=${dp%z}; zero=1;; dp*) dp=${f#dp};; tp*) tp=${f#tp};; pp*) pp=${f#pp};; *) echo "scaling.sh: bad layout '$lay'" >&2; exit 2;; esac
    done
  fi
  local n=$((dp * tp * pp)) global=$ROWS ga=1
  [ "$mode" = weak ] && global=$((ROWS * dp))
  [ "$pp" -gt 1 ] && ga=$((pp * PPM))
  local per=$((global / dp)) mb=$(( global / dp / ga ))
  local tag="$mode-$lay-r$rep" out="run-$mode-${lay/:/+}-r$rep" args=()
  if [ $((global % dp)) != 0 ] || [ $((per % ga)) != 0 ] || [ "$mb" -lt 1 ]; then
    printf '{"mode":"%s","layout":"%s","rep":%d,"ranks":%d,"refused":"%d rows do not split into %d x %d micro-batches"}\n' \
      "$mode" "$lay" "$rep" "$n" "$global" "$dp" "$ga" >> "$OUT/runs.jsonl"; return
  fi
  [ "$tp" -gt 1 ] && args+=(--tp "$tp")
  [ "$pp" -gt 1 ] && args+=(--pp "$pp")
  [ "$DEVICE" = cuda ] && args+=(--device cuda --precision "$PRECISION")
  cat > "$out.json" <<J
{"model": "model.json", "data": "shards", "seq_len": $SEQ, "micro_batch": $mb, "grad_accum": $ga,
 "steps": $STEPS, "lr": 1e-4, "warmup": 0, "log_every": 1, "eval_batches": 0, "save": false,
 "zero": $([ "$zero" = 1 ] && echo true || echo false), "out": "$out"}
J
  rm -rf "$out"
  local t0=$SECONDS rc=0
  local mpx=() v; for v in "${venv[@]}"; do mpx+=(-x "${v%%=*}"); done   # Open MPI: to every rank
  env "${venv[@]}" $MPIEXEC "${mpx[@]}" $BIND -n "$n" "$Z" train --stage pretrain --config "$out.json" "${args[@]}" > "$out.log" 2>&1 || rc=$?
  if [ $rc != 0 ] || [ ! -s "$out/train.jsonl" ]; then
    printf '{"mode":"%s","layout":"%s","rep":%d,"ranks":%d,"refused":"%s"}\n' "$mode" "$lay" "$rep" "$n" \
      "$(grep -m1 -iE 'error|not |zebra:' "$out.log" | cut -c1-120 | tr -d '"\\')" >> "$OUT/runs.jsonl"
    echo "  $tag: failed (see $W/$out.log)" >&2; return
  fi
  python3 - "$out/train.jsonl" "$mode" "$lay" "$rep" "$n" "$dp" "$tp" "$pp" "$global" "$SEQ" "$ga" $((SECONDS - t0)) "$zero" \
    >> "$OUT/runs.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"step_s"' in l]
mode, lay, rep, n, dp, tp, pp, rows, seq, ga, wall, zero = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:])
after = [r for r in recs if r["step"] > 1] or recs   # the first step is the warm-up
k = len(after)
out = {"mode": mode, "layout": lay, "rep": rep, "ranks": n, "dp": dp, "tp": tp, "pp": pp, "zero": zero, "rows": rows,
       "seq": seq, "grad_accum": ga, "tokens_per_step": rows * seq, "steps": k, "wall_s": wall,
       "step_s": sum(r["step_s"] for r in after) / k, "comm_s": sum(r["comm_s"] for r in after) / k,
       "dp_exposed_s": sum(r.get("dp_exposed_s", 0) for r in after) / k,
       "dp_overlap_s": sum(r.get("dp_overlap_s", 0) for r in after) / k,
       "dp_side_s": sum(r.get("dp_side_s", 0) for r in after) / k, "dp_times": after[-1].get("dp_times", "host"),
       "loss_last": recs[-1]["loss"]}
out["tokens_per_s"] = out["tokens_per_step"] / out["step_s"]
busy = [r["stage_busy_s"] for r in after if "stage_busy_s" in r]
if busy:
    out["stage_busy_s"] = [sum(b[i] for b in busy) / len(busy) for i in range(len(busy[0]))]
print(json.dumps(out))
PY
  echo "  $tag: $(tail -1 "$OUT/runs.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.3f s/step, comm %.3f s" % (r["step_s"], r["comm_s"]))')" >&2
}

# AGGREGATE_ONLY=1: no runs, the tables and plots of OUT/runs.jsonl as it is (a harness stopped
# by a time limit keeps the runs it finished)
if [ -z "${AGGREGATE_ONLY:-}" ]; then
: > "$OUT/runs.jsonl"
echo "scaling.sh: $DEVICE, modes '$MODES', layouts '$LAYOUTS', $REPEAT repeats x $STEPS steps; model $(basename "$CONFIG") L$LAYERS d$D V$VOCAB, seq $SEQ, $ROWS rows; out $OUT" >&2
# repeats interleaved (rep 1 of every layout, then rep 2, ...): a slow spell of the machine
# spreads over the layouts instead of landing on one
for rep in $(seq 1 "$REPEAT"); do
  for mode in $MODES; do
    for lay in $LAYOUTS; do run_one "$mode" "$lay" "$rep"; done
  done
done
fi

python3 - "$OUT" "$W/machine.json" "$DEVICE" <<'PY'
import json, os, statistics as st, sys
out, machine, device = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
runs = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl"))]
agg = {}
for r in runs:
    agg.setdefault((r["mode"], r["layout"]), []).append(r)
rows = []
for (mode, lay), rs in agg.items():
    ok = [r for r in rs if "refused" not in r]
    if not ok:
        rows.append({"mode": mode, "layout": lay, "ranks": rs[0]["ranks"], "refused": rs[0]["refused"]}); continue
    t = [r["step_s"] for r in ok]; c = [r["comm_s"] for r in ok]
    r0 = ok[0]
    rows.append({"mode": mode, "layout": lay, "ranks": r0["ranks"], "dp": r0["dp"], "tp": r0["tp"], "pp": r0["pp"],
                 "zero": r0.get("zero", 0),
                 "tokens_per_step": r0["tokens_per_step"], "runs": len(ok),
                 "step_s_median": st.median(t), "step_s_min": min(t), "step_s_max": max(t),
                 "comm_s_median": st.median(c), "tokens_per_s": r0["tokens_per_step"] / st.median(t),
                 "dp_exposed_s_median": st.median([r.get("dp_exposed_s", 0) for r in ok]),
                 "dp_overlap_s_median": st.median([r.get("dp_overlap_s", 0) for r in ok]),
                 "dp_side_s_median": st.median([r.get("dp_side_s", 0) for r in ok]),
                 "dp_times": ok[0].get("dp_times", "host"),
                 "compute_s_median": st.median([r["step_s"] - r["comm_s"] for r in ok]),
                 "stage_busy_s": r0.get("stage_busy_s")})
for r in rows:
    base = next((b for b in rows if b["mode"] == r["mode"] and b["layout"].split(":")[0] == "1" and "refused" not in b), None)
    if base and "refused" not in r:
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["efficiency"] = r["speedup"] / r["ranks"]
order = lambda r: (r["mode"], r["ranks"], r["layout"])
rows.sort(key=order)
json.dump({"machine": machine, "device": device, "results": rows}, open(os.path.join(out, "scaling.json"), "w"), indent=1)

md = ["# scaling: %s on %s (%s cores%s), %s" % (device, machine["cpu"], machine["cores"],
      (", %s x %s" % (machine["gpus"], machine["gpu"])) if machine.get("gpus") else "", machine["date"]), ""]
for mode in sorted({r["mode"] for r in rows}):
    md += ["## %s scaling" % mode, "",
           "| layout | ranks | tokens/step | step s (median) | spread (min..max) | comm s | comm share | DP exposed s | DP overlapped s | DP side-stream s | compute s | tokens/s | speed-up | efficiency |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] != mode: continue
        if "refused" in r:
            md.append("| %s | %d | — | refused: %s | | | | | | | | | | |" % (r["layout"], r["ranks"], r["refused"])); continue
        dev = r.get("dp_times") == "device"
        md.append("| %s | %d | %d | %.4f | %.4f..%.4f | %.4f | %.0f%% | %.4f%s | %.4f%s | %s | %.4f | %.0f | %s | %s |" % (
            r["layout"], r["ranks"], r["tokens_per_step"], r["step_s_median"], r["step_s_min"], r["step_s_max"],
            r["comm_s_median"], 100 * r["comm_s_median"] / r["step_s_median"], r.get("dp_exposed_s_median", 0),
            " (dev)" if dev else "", r.get("dp_overlap_s_median", 0), " (dev)" if dev else "",
            "%.4f" % r["dp_side_s_median"] if dev else "—",
            r.get("compute_s_median", r["step_s_median"] - r["comm_s_median"]),
            r["tokens_per_s"],
            "%.2fx" % r["speedup"] if "speedup" in r else "—", "%.0f%%" % (100 * r["efficiency"]) if "efficiency" in r else "—"))
    md.append("")
open(os.path.join(out, "scaling.md"), "w").write("\n".join(md) + "\n")

# SVG: efficiency against ranks, one series per kind (dp / tp / pp / mix), per mode
def kind(r):
    ks = [k for k in ("dp", "tp", "pp") if r.get(k, 1) > 1]
    return "+".join(ks) if ks else "1"
colors = {"dp": "#1f77b4", "tp": "#d62728", "pp": "#2ca02c", "1": "#000"}
def svg_eff(mode):
    rs = [r for r in rows if r["mode"] == mode and "efficiency" in r]
    if not rs: return
    Wd, Ht, L, B = 520, 320, 60, 40
    xmax = max(r["ranks"] for r in rs); ymax = max(1.1, max(r["efficiency"] for r in rs) * 1.1)
    X = lambda n: L + (Wd - L - 20) * (n - 1) / max(1, xmax - 1)
    Y = lambda e: Ht - B - (Ht - B - 20) * e / ymax
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (Wd, Ht),
         '<text x="%d" y="14">%s scaling, %s: efficiency = tokens/s / (ranks x 1-rank tokens/s)</text>' % (L, mode, device),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>' % (L, Y(0), Wd - 20, Y(0)),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>' % (L, Y(0), L, 20),
         '<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#bbb" stroke-dasharray="4"/>' % (L, Y(1), Wd - 20, Y(1))]
    for e in [0, 0.25, 0.5, 0.75, 1.0]:
        s.append('<text x="%d" y="%.1f" text-anchor="end">%d%%</text>' % (L - 4, Y(e) + 4, 100 * e))
    for n in sorted({r["ranks"] for r in rs}):
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(n), Ht - B + 14, n))
    s.append('<text x="%d" y="%d" text-anchor="middle">ranks</text>' % ((Wd + L) // 2, Ht - 8))
    series = {}
    for r in rs: series.setdefault(kind(r), []).append(r)
    for i, (k, pts) in enumerate(sorted(series.items())):
        col = colors.get(k, "#9467bd")
        pts.sort(key=lambda r: r["ranks"])
        base = next((r for r in rs if r["layout"] == "1"), None)
        line = ([base] if base and k != "1" else []) + pts
        s.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (col, " ".join("%.1f,%.1f" % (X(r["ranks"]), Y(r["efficiency"])) for r in line)))
        for r in pts:
            s.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %.0f%%</title></circle>' % (X(r["ranks"]), Y(r["efficiency"]), col, r["layout"], 100 * r["efficiency"]))
            s.append('<text x="%.1f" y="%.1f" fill="%s">%s %.0f%%</text>' % (X(r["ranks"]) + 5, Y(r["efficiency"]) - 5, col, r["layout"], 100 * r["efficiency"]))
    s.append("</svg>")
    open(os.path.join(out, "scaling-%s.svg" % mode), "w").write("\n".join(s) + "\n")
for mode in {r["mode"] for r in rows}: svg_eff(mode)

# SVG: step time per (mode, layout), communication (comm_s) and the rest, with the spread
rs = [r for r in rows if "refused" not in r]
if rs:
    bw, gap, L, Ht, B = 26, 10, 60, 320, 90
    Wd = L + len(rs) * (bw + gap) + 20
    tmax = max(r["step_s_max"] for r in rs) * 1.1
    Y = lambda t: Ht - B - (Ht - B - 24) * t / tmax
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">' % (Wd, Ht),
         '<text x="%d" y="14">step time (%s): communication (dark) and the rest; bar = median, line = min..max</text>' % (L, device)]
    for i, r in enumerate(rs):
        x = L + i * (bw + gap)
        c, t = r["comm_s_median"], r["step_s_median"]
        s.append('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="#9ecae1"/>' % (x, Y(t), bw, Y(c) - Y(t)))
        s.append('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="#08519c"/>' % (x, Y(c), bw, Y(0) - Y(c)))
        s.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000"/>' % (x + bw / 2, Y(r["step_s_min"]), x + bw / 2, Y(r["step_s_max"])))
        s.append('<text transform="translate(%.1f,%d) rotate(60)">%s %s</text>' % (x + 4, Ht - B + 6, r["mode"], r["layout"]))
    for k in range(5):
        t = tmax * k / 5
        s.append('<text x="%d" y="%.1f" text-anchor="end">%.3g s</text>' % (L - 4, Y(t) + 4, t))
    s.append("</svg>")
    open(os.path.join(out, "scaling-time.svg"), "w").write("\n".join(s) + "\n")
print(open(os.path.join(out, "scaling.md")).read())
PY
