#!/usr/bin/env bash
# cluster/demo.sh — the embedded default job (run by ./setup.sh): the whole Zebra-Llama method
# end to end on one machine, everything made here from the repository and a Debian-packaged
# English corpus (cluster/corpus.sh):
#   1. zebra data     the corpus -> byte-level shards (configs/bytes-tokenizer.json: ids =
#                     UTF-8 bytes + 5 specials, so no tokenizer file from outside the repo)
#   2. pretrain       a small Llama teacher (configs/demo-llama.json), kept in $out and
#                     loaded instead of retrained when it is already there
#   3. zebra smart    which layers stay MLA (SPEC §6), 4. zebra compose the hybrid (SPEC §5)
#   5. ild, 6. kd     intermediate-layer then end-to-end distillation (SPEC §6)
#   7. eval           validation perplexity of both, a short generation, and the table:
#                     perplexity, KV-cache bytes per token and ratio (SPEC §7), decode tokens/s.
# Sized for < 10 minutes on 2 cores (2 data-parallel ranks). ZB_DEMO_FAST=1: a smoke run.
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
# steps per stage (micro-batch 8 x 128 tokens per rank)
PT=${ZB_DEMO_PT_STEPS:-400}; ILD=${ZB_DEMO_ILD_STEPS:-60}; KD=${ZB_DEMO_KD_STEPS:-200}
if [ "${ZB_DEMO_FAST:-0}" = 1 ]; then PT=20; ILD=10; KD=10; fi
t_start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t_start ))s] $*"; }

stamp "1. corpus and shards"
if [ ! -f "$out/shards/manifest.json" ]; then
  corpus=$(bash cluster/corpus.sh)
  $Z data --tokenizer $TOK --input "$corpus" -o "$out/shards" --val-fraction 0.01 --seed 1
fi

# run.json of a stage: run_json NAME STAGE STEPS LR [extra JSON members]
run_json() {
  cat > "$out/$1.json" <<J
{"data": "$out/shards", "out": "$out/$1", "seq_len": 128, "micro_batch": 8, "grad_accum": 1,
 "steps": $3, "lr": $4, "min_lr": $(awk "BEGIN{print $4/10}"), "warmup": 0.05, "weight_decay": 0.1,
 "clip": 1.0, "log_every": $(( $3 / 10 > 0 ? $3 / 10 : 1 )), "eval_every": 0, "eval_batches": 8,
 "save_every": 0, "keep_last": 1, "seed": 1 $5}
J
}

stamp "2. teacher: pretrain a small Llama (configs/demo-llama.json)"
if [ -f "$out/teacher.h5" ]; then
  echo "teacher: loaded $out/teacher.h5 (delete it to retrain)"
else
  run_json pretrain pretrain $PT 3e-3 ', "model": "configs/demo-llama.json"'
  $MPI -n $NP $Z train --stage pretrain --config "$out/pretrain.json"
  cp "$out/pretrain/model.h5" "$out/teacher.h5"
fi

stamp "3. SMART: which 2 of 4 layers stay MLA"
head -c 200000 "$(bash cluster/corpus.sh)/tutorial/classes.rst.txt" > "$out/smart.txt" 2>/dev/null ||
  find "$(bash cluster/corpus.sh)" -name '*.txt' | head -1 | xargs head -c 200000 > "$out/smart.txt"
$Z smart --teacher "$out/teacher.h5" --data "$out/smart.txt" --tokenizer $TOK --mla-layers 2 \
  --seq 128 --max-rows 8 -o "$out/plan.json" --svg "$out/plan.svg"

stamp "4. compose the hybrid (MLA by SVD, Mamba2 from the attention weights)"
$Z compose --teacher "$out/teacher.h5" --config configs/demo-zebra.json --plan "$out/plan.json" -o "$out/composed.h5"

stamp "5. ILD: each new mixer on the teacher's layer input, MSE to its output"
run_json ild ild $ILD 3e-3 ", \"model\": \"$out/composed.h5\", \"teacher\": \"$out/teacher.h5\""
$MPI -n $NP $Z train --stage ild --config "$out/ild.json"

stamp "6. KD: KL(teacher || hybrid) on full logits, all weights train"
run_json kd kd $KD 1e-3 ", \"model\": \"$out/ild/model.h5\", \"teacher\": \"$out/teacher.h5\", \"kl_weight\": 1.0, \"ce_weight\": 0.0, \"temperature\": 1.0"
$MPI -n $NP $Z train --stage kd --config "$out/kd.json"
cp "$out/kd/model.h5" "$out/hybrid.h5"
logs=""; for s in pretrain ild kd; do [ -f "$out/$s/train.jsonl" ] && logs="$logs $out/$s/train.jsonl"; done
$Z plot $logs -o "$out/loss.svg"

stamp "7. evaluation"
ppl() { $Z eval --model "$1" --data "$out/shards" --split val --seq 128 --batch 8 --max-batches 24 | sed -n 's/^perplexity \([0-9.]*\).*/\1/p'; }
# a randomly initialised hybrid of the same shape: what compose's initialisation is worth
$Z init --random --config configs/demo-zebra.json -o "$out/random.h5" --seed 5 2>/dev/null
ppl_t=$(ppl "$out/teacher.h5"); ppl_r=$(ppl "$out/random.h5"); ppl_c=$(ppl "$out/composed.h5"); ppl_h=$(ppl "$out/hybrid.h5")
echo "-- generation from the hybrid (temperature 0.7, top-k 20)"
$Z generate --model "$out/hybrid.h5" --tokenizer $TOK --prompt "The Python tutorial" --max-new 160 --temperature 0.7 --top-k 20 --seed 3 || true
echo
$Z bench --teacher "$out/teacher.h5" --hybrid "$out/hybrid.h5" --contexts 256,2048 --batches 1 \
  --decode-steps 32 --md "$out/bench.md" > /dev/null
kv() { $Z info --json "$1" | sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p"; }
dec() { awk -F'|' -v m="$1" -v c="$2" '$2 ~ m && $6+0 == c {gsub(/ /,"",$9); print $9; exit}' "$out/bench.md"; }
kvt=$(kv "$out/teacher.h5" kv_bytes_per_token); kvh=$(kv "$out/hybrid.h5" kv_bytes_per_token)
stamp "done: table (validation perplexity on held-out corpus bytes)"
{
  printf '| model | val ppl | KV bytes/token | KV ratio | decode tok/s @256 | decode tok/s @2048 |\n|---|---|---|---|---|---|\n'
  printf '| teacher (Llama, 4 attention) | %s | %s | 100%% | %s | %s |\n' "$ppl_t" "$kvt" "$(dec teacher 256)" "$(dec teacher 2048)"
  printf '| hybrid, random init (same shape) | %s | %s | %s%% | | |\n' "$ppl_r" "$kvh" "$(awk "BEGIN{printf \"%.2f\", 100*$kvh/$kvt}")"
  printf '| hybrid after compose only | %s | %s | %s%% | | |\n' "$ppl_c" "$kvh" "$(awk "BEGIN{printf \"%.2f\", 100*$kvh/$kvt}")"
  printf '| hybrid after ILD + KD | %s | %s | %s%% | %s | %s |\n' "$ppl_h" "$kvh" "$(awk "BEGIN{printf \"%.2f\", 100*$kvh/$kvt}")" "$(dec hybrid 256)" "$(dec hybrid 2048)"
} | tee "$out/summary.md"
echo "logs: $out/{pretrain,ild,kd}/train.jsonl, curves: $out/loss.svg, SMART plan: $out/plan.svg"
