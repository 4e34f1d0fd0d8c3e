#!/usr/bin/env bash
# cli_tp.sh ZEBRA FIXTURES MPIEXEC HYBRID_CONFIG — the driver with --tp (parallel/tp.h):
#  - `mpiexec -n N zebra generate --tp N` prints the same tokens as one rank (HF llama at TP=2,
#    HF all-MLA at TP=2 and 4, a random attention+MLA+Mamba2 hybrid at TP=2 and 4, also with
#    temperature sampling: rank 0 samples and broadcasts);
#  - `zebra dump --tp 2 --grads` (logits and gradients gathered to full tensors) matches HF's
#    numbers exactly as the 1-rank dump does (test_hf_model);
#  - a split that does not divide stops every rank with one clear message (no hang).
set -u
zebra=$1 fx=$2 mpiexec=$3 hybrid=$4
bin=$(dirname "$zebra")/tests/test_hf_llama
[ -x "$bin" ] || bin=$(dirname "$zebra")/test_hf_llama
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mpi() { local n=$1; shift; timeout 120 "$mpiexec" --allow-run-as-root --oversubscribe -n "$n" "$@"; }
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }

"$zebra" init --random --config "$hybrid" -o "$tmp/hybrid.h5" --seed 3 --std 0.08 || bad "init hybrid"
gen() {   # gen MODEL NP TP [extra args]
  local model=$1 np=$2 tp=$3; shift 3
  local args=(generate --model "$model" --prompt-ids 1,17,33,5,200 --max-new 16 --ignore-eos --quiet "$@")
  if [ "$np" = 1 ]; then "$zebra" "${args[@]}" 2>/dev/null
  else mpi "$np" "$zebra" "${args[@]}" --tp "$tp" 2>/dev/null; fi
}
for spec in "$fx/hf-llama-tiny:2" "$fx/hf-mla-tiny:2" "$fx/hf-mla-tiny:4" "$tmp/hybrid.h5:2" "$tmp/hybrid.h5:4"; do
  model=${spec%:*} tp=${spec##*:}
  for extra in "" "--temperature 0.9 --top-k 20 --seed 5"; do
    ref=$(gen "$model" 1 1 $extra) || { bad "generate 1 rank $model"; continue; }
    got=$(gen "$model" "$tp" "$tp" $extra) || { bad "generate --tp $tp $model"; continue; }
    if [ -n "$ref" ] && [ "$ref" = "$got" ]; then ok "generate --tp $tp $(basename "$model") ${extra:-greedy}: $got"
    else bad "generate --tp $tp $(basename "$model") ${extra:-greedy}: '$got' vs 1 rank '$ref'"; fi
  done
done
for m in hf-llama-tiny hf-mla-tiny; do
  if mpi 2 "$zebra" dump --tp 2 --model "$fx/$m" --input "$fx/$m/ref.safetensors" --out "$tmp/$m.safetensors" --grads 2>/dev/null; then
    if "$bin" "$fx/$m" "$tmp/$m.safetensors" > "$tmp/cmp" 2>&1; then ok "dump --tp 2 --grads $m vs HF: $(tail -1 "$tmp/cmp")"
    else bad "dump --tp 2 $m vs HF"; cat "$tmp/cmp"; fi
  else bad "dump --tp 2 $m"; fi
done
# the HF llama fixture has 2 KV heads: --tp 4 must stop every rank with one message
if mpi 4 "$zebra" generate --tp 4 --model "$fx/hf-llama-tiny" --prompt-ids 1,2 --max-new 2 > /dev/null 2> "$tmp/err"; then
  bad "--tp 4 with 2 KV heads accepted"
else
  rc=$?
  if [ $rc = 124 ]; then bad "--tp 4 hung"; fi
  if grep -q "num_key_value_heads 2 is not divisible by --tp 4" "$tmp/err"; then ok "--tp 4 refused: $(grep -m1 num_key "$tmp/err")"
  else bad "--tp 4: unclear error: $(head -3 "$tmp/err")"; fi
fi
echo "$pass passed, $fail failed"
[ $fail = 0 ]
