#!/usr/bin/env bash
# cli_gen_async.sh ZEBRA FIXTURES MPIEXEC SRCDIR cpu|cuda — the pipelined greedy decode of
# `zebra generate` (the next step queued before the host reads this one's tokens; ZB_GEN_ASYNC)
# gives the tokens of the step-by-step loop (ZB_GEN_ASYNC=0), token for token, for a random
# attention-only teacher and a random MLA + Mamba2 hybrid:
#  - one prompt, streamed;
#  - 5 prompts in 2 slots (slots refilled) with a stop token that ends some completions in the
#    middle (the step queued past it is dropped), and at a full context (--ctx);
#  - --tp 2 (every rank picks the same tokens from the gathered logits: no broadcast);
#  - the closing lines: the decode's wall and device time per step, and which loop ran.
# cpu: ZB_GEN_ASYNC=1 against the default loop (the CPU's default stays step by step).
# cuda (label gpu; exits 77 where no GPU can be used): the GPU's default (pipelined) against
# ZB_GEN_ASYNC=0, bf16 weights (the decode step replayed from a CUDA graph) and float32, and at
# --batch 10 (attention steps call by call); --tp 2 where two GPUs are visible.
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1 fx=$2 mpiexec=$3 src=$4 mode=$5
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
blocks() { sed -n 's/^\[\([0-9]*\)\] /\1 /p' | sort -n -k1,1 -s; }   # "[i] ids" in prompt order
if [ "$mode" = cuda ]; then
  dev=(--device cuda)
  on=(env -u ZB_GEN_ASYNC) off=(env ZB_GEN_ASYNC=0)
  export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}   # the lent 2-GPU machines need it
  if ! probe=$("$zebra" generate --model "$src/configs/tiny-llama.json" --prompt-ids 1,2 --max-new 2 "${dev[@]}" 2>&1); then
    if echo "$probe" | grep -q "no usable CUDA device\|no CUDA device\|has no CUDA backend"; then
      echo "SKIP: $(echo "$probe" | tail -1)"; exit 77
    fi
    echo "FAIL the probe: $probe"; exit 1
  fi
else
  dev=()
  on=(env ZB_GEN_ASYNC=1) off=(env -u ZB_GEN_ASYNC)
fi

"$zebra" init --random --config "$src/configs/tiny-llama.json" -o "$tmp/teacher.h5" --seed 5 --std 0.08 > /dev/null || bad "init teacher"
"$zebra" init --random --config "$src/configs/tiny-zebra.json" -o "$tmp/hybrid.h5" --seed 3 --std 0.08 > /dev/null || bad "init hybrid"
P=("1,17,33,5,200" "7" "$(seq -s, 3 3 60)" "9,8,7,6,5,4,3,2,1,0,11,12" "100,101,102")
pargs=(); for p in "${P[@]}"; do pargs+=(--prompt-ids "$p"); done
gen() { ZB_GEN_TIMING=1 "$@" 2>>"$tmp/err"; }

variants=("")
[ "$mode" = cuda ] && variants=("--weights bf16" "--precision f32 --cache f32")
for model in teacher hybrid; do
  for v in "${variants[@]}"; do
    read -r -a va <<< "$v"
    args=(--model "$tmp/$model.h5" --quiet "${dev[@]}" "${va[@]}")
    name="$model${v:+ $v}"
    : > "$tmp/err"
    # one prompt, streamed
    ref=$(gen "${off[@]}" "$zebra" generate "${args[@]}" --prompt-ids 5,6,7 --max-new 24 --ignore-eos)
    got=$(gen "${on[@]}" "$zebra" generate "${args[@]}" --prompt-ids 5,6,7 --max-new 24 --ignore-eos)
    same "$name: one prompt, pipelined == step by step" "$got" "$ref"
    if grep -q "host gap .*pipelined" "$tmp/err" && grep -q "host gap .*step by step" "$tmp/err"; then
      ok "$name: the decode's wall and device time per step printed for both loops"
    else bad "$name: no timing line for both loops"; tail -4 "$tmp/err"; fi
    # a stop token met in the middle of some completions: the 5th token of prompt 0's
    full=$("${off[@]}" "$zebra" generate "${args[@]}" "${pargs[@]}" --batch 2 --max-new 16 --ignore-eos 2>/dev/null | blocks)
    stop=$(echo "$full" | awk '$1 == 0 {print $6}')
    ref=$("${off[@]}" "$zebra" generate "${args[@]}" "${pargs[@]}" --batch 2 --max-new 16 --ignore-eos --stop "$stop" 2>/dev/null | blocks)
    got=$("${on[@]}" "$zebra" generate "${args[@]}" "${pargs[@]}" --batch 2 --max-new 16 --ignore-eos --stop "$stop" 2>/dev/null | blocks)
    short=$(echo "$ref" | awk 'NF < 17' | wc -l)
    same "$name: 5 prompts in 2 slots, stop token $stop ($short completions cut), pipelined == step by step" "$got" "$ref"
    [ "$short" -ge 1 ] || bad "$name: the stop token cut no completion"
    # a full context: --ctx 20 ends the long prompt's and others' completions before --max-new
    ref=$("${off[@]}" "$zebra" generate "${args[@]}" "${pargs[@]}" --batch 3 --max-new 30 --ctx 24 --ignore-eos 2>/dev/null | blocks)
    got=$("${on[@]}" "$zebra" generate "${args[@]}" "${pargs[@]}" --batch 3 --max-new 30 --ctx 24 --ignore-eos 2>/dev/null | blocks)
    same "$name: a full context (--ctx 24), pipelined == step by step" "$got" "$ref"
  done
done
if [ "$mode" = cuda ]; then   # more than 8 sequences: attention steps call by call (no graph), still pipelined
  export ZB_CUDA_GEMM_TUNE=0   # cuBLAS's default algorithm in both runs (no per-run timing choice)
  P10=(); for i in $(seq 1 10); do P10+=(--prompt-ids "$i,$((i * 7)),$((i + 40))"); done
  args=(--model "$tmp/teacher.h5" --quiet "${dev[@]}" --weights bf16 --batch 10 --max-new 12 --ignore-eos)
  same "teacher bf16 --batch 10: pipelined == step by step" "$("${on[@]}" "$zebra" generate "${args[@]}" "${P10[@]}" 2>/dev/null | blocks)" \
    "$("${off[@]}" "$zebra" generate "${args[@]}" "${P10[@]}" 2>/dev/null | blocks)"
fi

# --tp 2: each rank picks the tokens (the CPU: from the gathered logits on the host; a GPU: on the device)
ngpu=2
[ "$mode" = cuda ] && ngpu=$(nvidia-smi -L 2>/dev/null | grep -c GPU)
if [ "$ngpu" -ge 2 ]; then
  tpv=("")
  [ "$mode" = cuda ] && tpv=("--weights bf16")
  for v in "${tpv[@]}"; do
    read -r -a va <<< "$v"
    for b in 1 3; do
      args=(--model "$tmp/hybrid.h5" --quiet "${dev[@]}" "${va[@]}" --batch "$b" --max-new 12 --ignore-eos)
      [ "$b" = 1 ] && stop=$("${off[@]}" "$zebra" generate "${args[@]}" "${pargs[@]}" 2>/dev/null | blocks | awk '$1 == 2 {print $5}')
      ref=$(mpi 2 "${off[@]}" "$zebra" generate "${args[@]}" --tp 2 "${pargs[@]}" --stop "$stop" 2>/dev/null | blocks)
      got=$(mpi 2 "${on[@]}" "$zebra" generate "${args[@]}" --tp 2 "${pargs[@]}" --stop "$stop" 2>/dev/null | blocks)
      same "hybrid${v:+ $v} --tp 2 --batch $b, stop token $stop: pipelined == step by step" "$got" "$ref"
    done
  done
else
  echo "SKIP --tp 2: $ngpu GPU visible"
fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
