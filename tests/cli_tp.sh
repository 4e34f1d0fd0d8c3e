#!/usr/bin/env bash
# cli_tp.sh ZEBRA FIXTURES MPIEXEC HYBRID_CONFIG — the driver with --tp (parallel/tp.h):
#  - `mpiexec -n N zebra generate --tp N` prints the same tokens as one rank (HF llama at TP=2,
#    HF all-MLA at TP=2 and 4, a random attention+MLA+Mamba2 hybrid at TP=2 and 4, also with
#    temperature sampling: rank 0 samples and broadcasts);
#  - `zebra dump --tp 2 --grads` (logits and gradients gathered to full tensors) matches HF's
#    numbers exactly as the 1-rank dump does (test_hf_model);
#  - `zebra generate --pp 2` (2 ranks) and `--tp 2 --pp 2` (4 ranks): pipeline stages, the
#    residual sent stage to stage, the last stage samples and broadcasts: the same tokens as one
#    rank, greedy and sampled, for one prompt and for a batch of 4 prompts at --batch 2 (slots
#    reused; one of 70 tokens: a prefill of 2 chunks), on the hybrid and on the HF llama (tied embeddings: copy on first and last
#    stage); HF's greedy tokens through --pp 2 and --tp 2 --pp 2; the stats line (cache
#    summed over the stages, one peak RSS per rank);
#  - synthetic weights from a config (--model C.json) are one model under --tp 2 and --tp 2 --pp 2:
#    the same tokens as one rank;
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
# pipeline parallel generation (--pp, and --tp x --pp) == 1 rank
genp() {   # genp MODEL NP TP PP [extra args]
  local model=$1 np=$2 tp=$3 pp=$4; shift 4
  local args=(generate --model "$model" --max-new 12 --ignore-eos --quiet "$@")
  if [ "$np" = 1 ]; then "$zebra" "${args[@]}" 2>/dev/null
  else mpi "$np" "$zebra" "${args[@]}" --tp "$tp" --pp "$pp" 2>/dev/null; fi
}
one=(--prompt-ids 1,17,33,5,200)
long=$(seq -s, 3 3 210)   # 70 tokens: a prefill of two chunks (64 + 6) through the stages
batch=(--prompt-ids 1,17,33,5,200 --prompt-ids 3,4 --prompt-ids 9,8,7,6,5,4,3,2,1,10,11,12 --prompt-ids "$long" --batch 2)
for model in "$tmp/hybrid.h5" "$fx/hf-llama-tiny"; do
  for extra in "" "--temperature 0.9 --top-k 20 --seed 5"; do
    for which in one batch; do
      declare -n prompts=$which
      ref=$(genp "$model" 1 1 1 "${prompts[@]}" $extra) || { bad "generate 1 rank $model"; continue; }
      for lay in "2 1 2" "4 2 2"; do
        set -- $lay
        got=$(genp "$model" "$1" "$2" "$3" "${prompts[@]}" $extra) || { bad "generate --tp $2 --pp $3 $model"; continue; }
        what="generate --tp $2 --pp $3 $(basename "$model") $which prompt(s) ${extra:-greedy}"
        if [ -n "$ref" ] && [ "$ref" = "$got" ]; then ok "$what: $(echo "$got" | head -1)"
        else bad "$what: '$got' vs 1 rank '$ref'"; fi
      done
    done
  done
done
# synthetic weights from a config (--model C.json): each rank draws its slice of one model, so
# the layouts decode the tokens of one rank (f32 and bf16 weights)
for wt in f32 bf16; do
  ref=$(genp "$hybrid" 1 1 1 "${one[@]}" --weights $wt) || { bad "generate --model $hybrid 1 rank"; continue; }
  for lay in "2 2 1" "4 2 2"; do
    set -- $lay
    got=$(genp "$hybrid" "$1" "$2" "$3" "${one[@]}" --weights $wt) || { bad "generate --model $hybrid --tp $2 --pp $3"; continue; }
    if [ -n "$ref" ] && [ "$ref" = "$got" ]; then ok "synthetic $wt weights of $(basename "$hybrid") at --tp $2 --pp $3: $got"
    else bad "synthetic $wt weights of $(basename "$hybrid") at --tp $2 --pp $3: '$got' vs 1 rank '$ref'"; fi
  done
done
# HF's greedy tokens (ref.safetensors greedy_prompt / greedy_tokens) through the stages
st_ints() {   # st_ints FILE NAME (as in cli_generate.sh)
  local n hdr o
  n=$(od -A n -t u8 -N 8 "$1" | tr -d ' ')
  hdr=$(head -c $((8 + n)) "$1" | tail -c "$n")
  o=($(printf '%s' "$hdr" | grep -o "\"$2\":{[^}]*}" | grep -o '"data_offsets":\[[0-9]*,[0-9]*\]' | grep -o '[0-9][0-9]*'))
  od -v -A n -t d4 -j $((8 + n + o[0])) -N $((o[1] - o[0])) "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}
prompt=$(st_ints "$fx/hf-llama-tiny/ref.safetensors" greedy_prompt | tr ' ' ,)
want=$(st_ints "$fx/hf-llama-tiny/ref.safetensors" greedy_tokens)
n=$(echo "$want" | wc -w)
for lay in "2 1 2" "4 2 2"; do
  set -- $lay
  got=$(mpi "$1" "$zebra" generate --tp "$2" --pp "$3" --model "$fx/hf-llama-tiny" --prompt-ids "$prompt" --max-new "$n" \
        --ignore-eos --quiet 2>/dev/null | sed 's/ $//')
  if [ -n "$want" ] && [ "$got" = "$want" ]; then ok "hf-llama-tiny HF greedy tokens at --tp $2 --pp $3 ($n tokens)"
  else bad "hf-llama-tiny HF greedy tokens at --tp $2 --pp $3: '$got' vs HF '$want'"; fi
done
# the stats line: cache bytes summed over the stages (== 1 rank's), one peak RSS per rank
"$zebra" generate --model "$tmp/hybrid.h5" "${batch[@]}" --quiet > /dev/null 2> "$tmp/err1"
mpi 4 "$zebra" generate --model "$tmp/hybrid.h5" "${batch[@]}" --quiet --pp 4 > /dev/null 2> "$tmp/err4"
cache() { tail -1 "$1" | grep -o 'cache [0-9]* bytes/token, state [0-9]* bytes/seq | cache in use [0-9]* bytes (peak), allocated [0-9]*'; }
if [ -n "$(cache "$tmp/err1")" ] && [ "$(cache "$tmp/err1")" = "$(cache "$tmp/err4")" ] &&
   tail -1 "$tmp/err4" | grep -Eq '\(summed over the stages\) .*peak RSS \(VmHWM\) [0-9.]+ GiB, [0-9.]+ GiB, [0-9.]+ GiB, [0-9.]+ GiB$'
then ok "--pp 4 stats line: $(tail -1 "$tmp/err4")"
else bad "--pp 4 stats line: '$(tail -1 "$tmp/err4")' vs 1 rank '$(tail -1 "$tmp/err1")'"; fi
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
