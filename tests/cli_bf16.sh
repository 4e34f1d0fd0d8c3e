#!/usr/bin/env bash
# cli_bf16.sh ZEBRA FIXTURES MPIEXEC HYBRID_CONFIG STORE_COMPARE — `--weights bf16` end to end:
#  - hf-llama-tiny (bf16 weights; HF's reference ran in f32 on them): `zebra generate
#    --weights bf16 --prompt-ids <greedy_prompt>` prints HF's greedy tokens, also at --tp 2;
#  - a random hybrid written by `zebra init --dtype bf16`: --weights bf16 at --tp 2 prints the
#    same tokens as 1 rank (greedy and sampled), and the same as --weights f32 (the checkpoint
#    is bf16, so both hold identical weights);
#  - `zebra init` is streamed and deterministic per tensor: 1 rank and 2 ranks write the same
#    tensors bit for bit;
#  - the final stats line reports the weights and every rank's peak RSS; bad values refused.
set -u
zebra=$1 fx=$2 mpiexec=$3 hybrid=$4 cmp=$5
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mpi() { local n=$1; shift; timeout 120 "$mpiexec" --allow-run-as-root --oversubscribe -n "$n" "$@"; }
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
same() { if [ -n "$2" ] && [ "$2" = "$3" ]; then ok "$1: $2"; else bad "$1: got '$2' want '$3'"; fi; }
st_ints() {   # st_ints FILE NAME: an int tensor of a safetensors file
  local n hdr o
  n=$(od -A n -t u8 -N 8 "$1" | tr -d ' ')
  hdr=$(head -c $((8 + n)) "$1" | tail -c "$n")
  o=($(printf '%s' "$hdr" | grep -o "\"$2\":{[^}]*}" | grep -o '"data_offsets":\[[0-9]*,[0-9]*\]' | grep -o '[0-9][0-9]*'))
  od -v -A n -t d4 -j $((8 + n + o[0])) -N $((o[1] - o[0])) "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}

m=$fx/hf-llama-tiny
prompt=$(st_ints "$m/ref.safetensors" greedy_prompt | tr ' ' ,)
want=$(st_ints "$m/ref.safetensors" greedy_tokens)
n=$(echo "$want" | wc -w)
got=$("$zebra" generate --weights bf16 --model "$m" --prompt-ids "$prompt" --max-new "$n" --ignore-eos --quiet 2>"$tmp/err" | sed 's/ $//')
same "hf-llama-tiny --weights bf16 greedy == HF ($n tokens)" "$got" "$want"
if grep -q "weights bf16 (.*peak RSS (VmHWM) [0-9.]* GiB" "$tmp/err"; then ok "stats line: $(grep -o 'weights bf16.*' "$tmp/err")"
else bad "stats line lacks weights / VmHWM: $(tail -1 "$tmp/err")"; fi
got=$(mpi 2 "$zebra" generate --tp 2 --weights bf16 --model "$m" --prompt-ids "$prompt" --max-new "$n" --ignore-eos --quiet 2>"$tmp/err" | sed 's/ $//')
same "hf-llama-tiny --weights bf16 --tp 2 greedy == HF" "$got" "$want"
if grep -q "peak RSS (VmHWM) [0-9.]* GiB, [0-9.]* GiB" "$tmp/err"; then ok "--tp 2 stats: both ranks' VmHWM"
else bad "--tp 2 stats line lacks 2 ranks' VmHWM: $(tail -1 "$tmp/err")"; fi

"$zebra" init --random --config "$hybrid" -o "$tmp/h1.h5" --seed 3 --std 0.08 --dtype bf16 >/dev/null 2>&1 || bad "init bf16 (1 rank)"
mpi 2 "$zebra" init --random --config "$hybrid" -o "$tmp/h2.h5" --seed 3 --std 0.08 --dtype bf16 >/dev/null 2>&1 || bad "init bf16 (2 ranks)"
if "$cmp" "$tmp/h1.h5" "$tmp/h2.h5" > "$tmp/cmp" 2>&1; then ok "init: 1 rank == 2 ranks, bit for bit ($(tail -1 "$tmp/cmp"))"
else bad "init: 1 rank != 2 ranks"; cat "$tmp/cmp"; fi
gen() {   # gen NP [extra args]
  local np=$1; shift
  local args=(generate --model "$tmp/h1.h5" --prompt-ids 1,17,33,5,200 --prompt-ids 9,8 --max-new 12 --ignore-eos --quiet "$@")
  if [ "$np" = 1 ]; then "$zebra" "${args[@]}" 2>/dev/null; else mpi "$np" "$zebra" "${args[@]}" --tp "$np" 2>/dev/null; fi
}
for extra in "" "--temperature 0.9 --top-k 20 --seed 5"; do
  ref=$(gen 1 --weights bf16 $extra)
  same "hybrid --weights bf16 --tp 2 == 1 rank ${extra:-greedy}" "$(gen 2 --weights bf16 $extra)" "$ref"
  same "hybrid --weights bf16 == --weights f32 on a bf16 checkpoint ${extra:-greedy}" "$(gen 1 --weights f32 $extra)" "$ref"
done
if "$zebra" generate --model "$tmp/h1.h5" --prompt-ids 1 --weights f16 2>"$tmp/err"; then bad "--weights f16 accepted"
elif grep -q "weights must be f32 or bf16" "$tmp/err"; then ok "--weights f16 refused: $(cat "$tmp/err")"
else bad "--weights f16: unclear error: $(cat "$tmp/err")"; fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
