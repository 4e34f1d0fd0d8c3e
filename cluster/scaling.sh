#!/usr/bin/env bash
# scaling.sh — step time and communication share of each kind of parallelism (SPEC §9).
#
#   cluster/scaling.sh [ZEBRA] [RANKS...]      e.g. cluster/scaling.sh build/zebra 1 2 4 8 16
#
# Model: configs/zebra-1b.json (d 2048, MLA + Mamba2, ffn 8192) shrunk to LAYERS (4) layers and a
# VOCAB (32768)-token vocabulary (the byte-level data uses ids < 264; the 128k embedding would
# only add memory), sequence SEQ (512). Strong scaling: every run does GLOBAL (16) rows per step
#   dp  N ranks x GLOBAL/N rows          (bucketed overlapped all-reduce; ZERO=1 adds ZeRO-1)
#   tp  --tp N, GLOBAL rows               (Megatron tensor parallel, all ranks one TP group)
#   pp  --pp N, GLOBAL rows as PPM x N micro-batches (PPM 1; more micro-batches shrink the
#       bubble (N-1)/(M+N-1)), cut by BALANCE ("model": the cost model, or "measured" layer
#       times); also prints the stages' mean compute time per step (min / max: the balance)
# STEPS (4) steps per run; the first is dropped (warm-up); reported: mean step time, mean time
# inside MPI calls (zebra counts MPI_Wtime around every collective / wait it makes: the TP
# all-reduces, the DP bucket waits and reductions, ZeRO's reduce-scatter / all-gather, the loss
# sums; logged per step as "comm_s" in train.jsonl), their ratio, tokens/s and speed-up over 1 rank.
# One rank = one core (OPENBLAS_NUM_THREADS=1); on a 16-core node run at most 16 ranks.
# Memory: about 1.3 GB of parameters per full replica, x4 with gradients and AdamW moments, per
# rank for dp (ZERO=1 shards the moments) — 16 dp ranks need ~80 GB; use LAYERS=2 or D=1024 on
# smaller nodes. Prints a markdown table (paste it into docs/BENCHMARKS.md with this command line).
set -euo pipefail
Z=${1:-build/zebra}; shift || true
RANKS=${*:-1 2 4 8 16}
SRC=$(cd "$(dirname "$0")/.." && pwd)
LAYERS=${LAYERS:-4}; VOCAB=${VOCAB:-32768}; SEQ=${SEQ:-512}; GLOBAL=${GLOBAL:-16}; STEPS=${STEPS:-4}
D=${D:-2048}; ZERO=${ZERO:-0}; KINDS=${KINDS:-dp tp pp}; PPM=${PPM:-1}; BALANCE=${BALANCE:-model}
MPIEXEC=${MPIEXEC:-mpiexec}
W=${WORKDIR:-$(mktemp -d)}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
cd "$W"

python3 - "$SRC/configs/zebra-1b.json" "$LAYERS" "$VOCAB" "$D" > model.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); L, V, D = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c["num_hidden_layers"] = L; c["layer_kinds"] = c["layer_kinds"][:L]; c["vocab_size"] = V
c["bos_token_id"] = 256; c["eos_token_id"] = [257]
if D != c["hidden_size"]:   # scale the widths with d (heads fixed, head dims halved etc.)
    f = D / c["hidden_size"]; c["hidden_size"] = D; c["intermediate_size"] = int(c["intermediate_size"] * f)
    c["head_dim"] = int(c["head_dim"] * f); m = c["mamba2"]; m["d_inner"] = int(m["d_inner"] * f)
    m["headdim"] = int(m["headdim"] * f); m["norm_group_size"] = m["headdim"]
    a = c["mla"]; a["v_head_dim"] = int(a["v_head_dim"] * f); a["q_lora_rank"] = int(a["q_lora_rank"] * f)
c.pop("teacher", None)
print(json.dumps(c, indent=1))
PY
[ -d shards ] || "$Z" data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" --input "$SRC/parallel" \
  --input "$SRC/launch" --input "$SRC/docs" -o shards --val-fraction 0.05 --seed 1 >/dev/null 2>&1 \
  || "$Z" data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" -o shards --val-fraction 0.05 --seed 1 >/dev/null

# one run: KIND N -> "step_s comm_s tok_s" or "refused: ..."
measure() {
  local kind=$1 n=$2 mb=$GLOBAL ga=1 args=() out="run-$1-$2"
  case $kind in
    dp) if [ $((GLOBAL % n)) != 0 ]; then echo "refused: $GLOBAL rows do not split over $n ranks"; return; fi
        mb=$((GLOBAL / n));;
    tp) args=(--tp "$n");;
    pp) args=(--pp "$n"); ga=$((n * PPM)); mb=$((GLOBAL / ga))
        if [ $((GLOBAL % ga)) != 0 ] || [ $mb -lt 1 ]; then echo "refused: $GLOBAL rows do not split into $ga micro-batches"; return; fi;;
  esac
  cat > "$out.json" <<J
{"model": "model.json", "data": "shards", "seq_len": $SEQ, "micro_batch": $mb, "grad_accum": $ga,
 "steps": $STEPS, "lr": 1e-4, "warmup": 0, "log_every": 1, "eval_batches": 0, "save_every": 100000,
 "zero": $([ "$ZERO" = 1 ] && [ "$kind" = dp ] && echo true || echo false), "pp_balance": "$BALANCE", "out": "$out"}
J
  rm -rf "$out"
  if ! $MPIEXEC -n "$n" "$Z" train --stage pretrain --config "$out.json" "${args[@]}" > "$out.log" 2>&1; then
    echo "refused: $(grep -m1 -i 'error\|not \|zebra:' "$out.log" | cut -c1-90)"; return
  fi
  # mean over the steps after the first (warm-up)
  awk -F'[:,}]' '/"step_s"/ { for (i = 1; i < NF; i++) { if ($i == "\"step\"") s = $(i+1); if ($i == "\"step_s\"") t = $(i+1);
      if ($i == "\"comm_s\"") c = $(i+1) } if (s > 1) { T += t; C += c; k++ } }
      END { if (k == 0) print "refused: no step logged"; else printf "%.4f %.4f %.1f ", T/k, C/k, '"$GLOBAL * $SEQ"'/(T/k) }' \
    "$out/train.jsonl"
  # PP: the stages' mean compute time per step (after the first step), min / max
  { grep '"step_s"' "$out/train.jsonl" | tail -n +2 | grep -o '"stage_busy_s":\[[^]]*\]' || true; } | sed 's/.*\[//; s/\]//' |
    awk -F, '{ for (i = 1; i <= NF; i++) s[i] += $i; n = NF; k++ }
      END { if (k == 0) { print "—"; exit } mn = 1e30; mx = 0
            for (i = 1; i <= n; i++) { v = s[i] / k; if (v < mn) mn = v; if (v > mx) mx = v }
            printf "%.2f/%.2f\n", mn, mx }'
}

echo "| kind | ranks | step (s) | in MPI (s) | comm share | tokens/s | speed-up | stage compute min/max (s) |"
echo "|---|---|---|---|---|---|---|---|"
for kind in $KINDS; do
  base=""
  for n in $RANKS; do
    r=$(measure "$kind" "$n")
    case $r in refused*) echo "| $kind | $n | — | — | — | — | ${r} | |"; continue;; esac
    set -- $r
    [ -z "$base" ] && base=$1
    awk -v k="$kind" -v n="$n" -v t="$1" -v c="$2" -v tps="$3" -v b="$base" -v st="${4:-—}" \
      'BEGIN { printf "| %s | %d | %.3f | %.3f | %.1f%% | %.0f | %.2fx | %s |\n", k, n, t, c, 100*c/t, tps, b/t, st }'
  done
done
echo
echo "model: zebra-1b shrunk to $LAYERS layers, d $D, vocab $VOCAB; seq $SEQ; $GLOBAL rows per step; $STEPS steps (first dropped); ZERO=$ZERO; pp: $PPM x N micro-batches, cut by $BALANCE; $(getconf _NPROCESSORS_ONLN) cores"
