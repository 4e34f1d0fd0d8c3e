#!/usr/bin/env bash
# cluster/demo.sh — the embedded default job (run by ./setup.sh): the Zebra-Llama pipeline as
# the paper's authors run it (SPEC.md §5-§6), end to end on one machine, everything made here
# from the repository and a Debian-packaged English corpus (cluster/corpus.sh):
#   1. zebra data     the corpus -> byte-level shards (configs/bytes-tokenizer.json: ids =
#                     UTF-8 bytes + 5 specials, so no tokenizer file from outside the repo)
#   2. pretrain       a small Llama teacher (configs/demo-teacher.json, 7 layers), kept in $out
#                     and loaded instead of retrained when it is already there
#   3. compose        the teacher into an all-MLA and an all-Mamba2 model (SPEC §5)
#   4. ild  x 2       intermediate-layer distillation of both from the teacher (SPEC §6)
#   5. zebra smart    which 3 of 7 layers stay MLA: score = KL(teacher||M) - KL(teacher||M with
#                     layer l from the MLA model) on held-out tokens; layer 0 and L-2, gaps 2 or 3
#   6. compose        the hybrid from whole layers of the two ILD models at SMART's positions,
#                     and the control: the same K layers evenly spaced (no scores)
#   7. kd  x 2        end-to-end distillation of both hybrids, KL(teacher || hybrid)
#   8. eval           validation perplexity of every model, a short generation, and the table:
#                     perplexity, KV-cache bytes per token and ratio (SPEC §7), decode tokens/s.
# Sized for < 10 minutes on 2 cores (2 data-parallel ranks). ZB_DEMO_FAST=1: a smoke run.
# Variants (docs/COMPOSE.md measures them with this script on the same teacher: copy
# teacher.h5 and shards/ into another ZB_DEMO_DIR): ZB_DEMO_INIT=release (the authors' MLA row
# choice, compose --init), ZB_DEMO_ILD_LOSS=mixer_mse (the earlier ILD form).
set -euo pipefail
cd "$(dirname "$0")/.."
Z=${ZEBRA:-build/zebra}
out=${ZB_DEMO_DIR:-out/demo}
mkdir -p "$out"
NP=${ZB_DEMO_NP:-2}
export OPENBLAS_NUM_THREADS=1
MPI="mpirun --oversubscribe"
[ "$(id -u)" = 0 ] && MPI="mpirun --allow-run-as-root --oversubscribe"
TOK=configs/bytes-tokenizer.json
TEACHER_CFG=configs/demo-teacher.json; HYB_CFG=configs/demo-hybrid.json; K=3
# steps per stage (micro-batch 8 x 128 tokens per rank)
PT=${ZB_DEMO_PT_STEPS:-400}; ILD=${ZB_DEMO_ILD_STEPS:-60}; KD=${ZB_DEMO_KD_STEPS:-150}
SMART_TOKENS=${ZB_DEMO_SMART_TOKENS:-65536}
INIT=${ZB_DEMO_INIT:-rope-pairs}; ILD_LOSS=${ZB_DEMO_ILD_LOSS:-release}
if [ "${ZB_DEMO_FAST:-0}" = 1 ]; then PT=20; ILD=10; KD=10; SMART_TOKENS=4096; fi
t_start=$(date +%s)
# each stage's wall time and CPU seconds (user + sys of everything it ran, all ranks and
# threads): on a busy machine the CPU seconds still say what the stage costs
# (`times` runs in this shell, not in a $(...) subshell, whose own children have used nothing)
stamp() {
  times > "$out/.times"
  echo "== [$(( $(date +%s) - t_start ))s, cpu $(awk 'END { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] } printf "%.0f", t }' "$out/.times")s] $*"
}

stamp "1. corpus and shards"
if [ ! -f "$out/shards/manifest.json" ]; then
  corpus=$(bash cluster/corpus.sh)
  $Z data --tokenizer $TOK --input "$corpus" -o "$out/shards" --val-fraction 0.015 --seed 1
fi

# run.json of a stage: run_json NAME STEPS LR [extra JSON members]
run_json() {
  cat > "$out/$1.json" <<J
{"data": "$out/shards", "out": "$out/$1", "seq_len": 128, "micro_batch": 8, "grad_accum": 1,
 "steps": $2, "lr": $3, "min_lr": $(awk "BEGIN{print $3/10}"), "warmup": 0.05, "weight_decay": 0.1,
 "clip": 1.0, "log_every": $(( $2 / 10 > 0 ? $2 / 10 : 1 )), "eval_every": 0, "eval_batches": 8,
 "save_every": 0, "keep_last": 1, "seed": 1 $4}
J
}
train() { $MPI -n $NP $Z train --stage "$1" --config "$out/$2.json"; }

stamp "2. teacher: pretrain a small Llama ($TEACHER_CFG)"
if [ -f "$out/teacher.h5" ]; then
  echo "teacher: loaded $out/teacher.h5 (delete it to retrain)"
else
  run_json pretrain $PT 3e-3 ", \"model\": \"$TEACHER_CFG\""
  train pretrain pretrain
  cp "$out/pretrain/model.h5" "$out/teacher.h5"
fi

stamp "3. compose the teacher into an all-MLA and an all-Mamba2 model (SVD init, MambaInLlama mapping)"
echo '{"mla_layers": [0, 1, 2, 3, 4, 5, 6]}' > "$out/all-mla.json"
echo '{"mla_layers": []}' > "$out/all-m2.json"
$Z compose --teacher "$out/teacher.h5" --config $HYB_CFG --plan "$out/all-mla.json" -o "$out/mla0.h5" --init $INIT
$Z compose --teacher "$out/teacher.h5" --config $HYB_CFG --plan "$out/all-m2.json" -o "$out/m2-0.h5" > /dev/null

stamp "4. ILD: every layer fed the teacher's hidden state, trained to its block and mixer outputs"
for m in mla m2; do
  init=$out/mla0.h5; [ $m = m2 ] && init=$out/m2-0.h5
  run_json ild-$m $ILD 3e-3 ", \"model\": \"$init\", \"teacher\": \"$out/teacher.h5\", \"ild_loss\": \"$ILD_LOSS\""
  train ild ild-$m
done

stamp "5. SMART: which $K of 7 layers stay MLA"
$MPI -n $NP $Z smart --teacher "$out/teacher.h5" --mamba "$out/ild-m2/model.h5" --mla "$out/ild-mla/model.h5" \
  --data "$out/shards" --split val --tokens $SMART_TOKENS --seq 128 --batch 8 --mla-layers $K \
  -o "$out/plan.json" --svg "$out/plan.svg" | grep -v "^smart: rank 0"
# the control: the same K layers evenly spaced, no scores
echo "{\"mla_layers\": [$(sed -n 's/.*"even_layers": \[\(.*\)\].*/\1/p' "$out/plan.json")]}" > "$out/even.json"

stamp "6. assemble the hybrids from whole layers of the two ILD models"
$Z compose --mamba "$out/ild-m2/model.h5" --mla "$out/ild-mla/model.h5" --plan "$out/plan.json" -o "$out/smart0.h5"
$Z compose --mamba "$out/ild-m2/model.h5" --mla "$out/ild-mla/model.h5" --plan "$out/even.json" -o "$out/even0.h5" > /dev/null

stamp "7. KD: KL(teacher || hybrid) on full logits, all weights train (SMART plan, then the control)"
for h in smart even; do
  run_json kd-$h $KD 1e-3 ", \"model\": \"$out/${h}0.h5\", \"teacher\": \"$out/teacher.h5\", \"kl_weight\": 1.0, \"ce_weight\": 0.0, \"temperature\": 1.0"
  train kd kd-$h
done
cp "$out/kd-smart/model.h5" "$out/hybrid.h5"
logs=""; for s in pretrain ild-mla ild-m2 kd-smart kd-even; do [ -f "$out/$s/train.jsonl" ] && logs="$logs $out/$s/train.jsonl"; done
$Z plot $logs -o "$out/loss.svg"

stamp "8. evaluation"
ppl() { $Z eval --model "$1" --data "$out/shards" --split val --seq 128 --batch 8 --max-batches 24 | sed -n 's/^perplexity \([0-9.]*\).*/\1/p'; }
# a randomly initialised hybrid of the same size, and the plain composition from the teacher at
# SMART's plan: what each step is worth
$Z compose --teacher "$out/teacher.h5" --config $HYB_CFG --plan "$out/plan.json" -o "$out/composed.h5" --init $INIT > /dev/null
$Z init --random --config $HYB_CFG -o "$out/random.h5" --seed 5 2>/dev/null
ppl_t=$(ppl "$out/teacher.h5"); ppl_r=$(ppl "$out/random.h5"); ppl_c=$(ppl "$out/composed.h5")
ppl_ma=$(ppl "$out/ild-mla/model.h5"); ppl_m2=$(ppl "$out/ild-m2/model.h5")
ppl_s0=$(ppl "$out/smart0.h5"); ppl_e0=$(ppl "$out/even0.h5")
ppl_h=$(ppl "$out/hybrid.h5"); ppl_e=$(ppl "$out/kd-even/model.h5")
echo "-- generation from the hybrid (temperature 0.7, top-k 20)"
$Z generate --model "$out/hybrid.h5" --tokenizer $TOK --prompt "The Python tutorial" --max-new 160 --temperature 0.7 --top-k 20 --seed 3 || true
echo
$Z bench --teacher "$out/teacher.h5" --hybrid "$out/hybrid.h5" --contexts 256,2048 --batches 1 \
  --decode-steps 32 --md "$out/bench.md" > /dev/null
kv() { $Z info --json "$1" | sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p"; }
dec() { awk -F'|' -v m="$1" -v c="$2" '$2 ~ m && $6+0 == c {gsub(/ /,"",$9); print $9; exit}' "$out/bench.md"; }
kvt=$(kv "$out/teacher.h5" kv_bytes_per_token); kvh=$(kv "$out/hybrid.h5" kv_bytes_per_token)
kva=$(kv "$out/ild-mla/model.h5" kv_bytes_per_token)
pct() { awk "BEGIN{printf \"%.2f\", 100*$1/$kvt}"; }
layers() { sed -n 's/.*"mla_layers": \[\(.*\)\].*/\1/p' "$1" | tr -d ' '; }
sl=$(layers "$out/plan.json"); el=$(layers "$out/even.json")
stamp "done: table (validation perplexity on held-out corpus bytes)"
{
  printf '| model | MLA layers | val ppl | KV bytes/token | KV ratio | decode tok/s @256 | decode tok/s @2048 |\n|---|---|---|---|---|---|---|\n'
  printf '| teacher (Llama, 7 attention) | - | %s | %s | 100%% | %s | %s |\n' "$ppl_t" "$kvt" "$(dec teacher 256)" "$(dec teacher 2048)"
  printf '| all-MLA after ILD | all | %s | %s | %s%% | | |\n' "$ppl_ma" "$kva" "$(pct $kva)"
  printf '| all-Mamba2 after ILD | none | %s | 0 | 0%% | | |\n' "$ppl_m2"
  printf '| hybrid, random init (same size) | 0,3,5 | %s | %s | %s%% | | |\n' "$ppl_r" "$kvh" "$(pct $kvh)"
  printf '| hybrid composed from the teacher (no training) | %s | %s | %s | %s%% | | |\n' "$sl" "$ppl_c" "$kvh" "$(pct $kvh)"
  printf '| control: evenly spaced, assembled from the ILD models | %s | %s | %s | %s%% | | |\n' "$el" "$ppl_e0" "$kvh" "$(pct $kvh)"
  printf '| SMART: assembled from the ILD models | %s | %s | %s | %s%% | | |\n' "$sl" "$ppl_s0" "$kvh" "$(pct $kvh)"
  printf '| control: evenly spaced, after KD | %s | %s | %s | %s%% | | |\n' "$el" "$ppl_e" "$kvh" "$(pct $kvh)"
  printf '| SMART hybrid after ILD + KD | %s | %s | %s | %s%% | %s | %s |\n' "$sl" "$ppl_h" "$kvh" "$(pct $kvh)" "$(dec hybrid 256)" "$(dec hybrid 2048)"
} | tee "$out/summary.md"
first_last() { printf '%.4f -> %.4f' "$(grep '"loss"' "$1" | head -1 | sed 's/.*"loss":\([^,]*\),.*/\1/')" \
  "$(grep '"val_loss"' "$1" | tail -1 | sed 's/.*"val_loss":\([^,]*\),.*/\1/')"; }
echo "ILD loss ($ILD_LOSS, MLA init $INIT), first logged interval (train) -> after $ILD steps (held out):" \
  "all-MLA $(first_last "$out/ild-mla/train.jsonl"), all-Mamba2 $(first_last "$out/ild-m2/train.jsonl")"
echo "SMART scores: $(sed -n 's/.*"scores": \[\(.*\)\].*/\1/p' "$out/plan.json"); plan [$sl] (total $(sed -n 's/.*"total_score": \([^,]*\),.*/\1/p' "$out/plan.json")), even [$el] (total $(sed -n 's/.*"even_total_score": \([^,]*\),.*/\1/p' "$out/plan.json"))"
echo "logs: $out/{pretrain,ild-mla,ild-m2,kd-smart,kd-even}/train.jsonl, curves: $out/loss.svg, SMART plan: $out/plan.json, $out/plan.svg"
