#!/usr/bin/env bash
# cli_cuda.sh ZEBRA FIXTURES SRCDIR — the driver end to end with --device cuda (label gpu;
# exits 77, skipped, where no GPU can be used):
#  - train: pretrain on the GPU with float32 products follows the CPU's training curve within
#    the CPU run's own divergence from its split run (tests/cli_lib.sh: the measured
#    amplification of a re-association, scaled by tests/zb_path); a GPU checkpoint resumed by
#    the CPU build and a CPU checkpoint resumed on the GPU stay on that curve too; the bf16 run,
#    ild and kd (teacher on the same GPU) reduce their loss;
#  - eval: the perplexity of a CPU-trained model on the GPU == the CPU's, within that bound;
#  - generate: HF's greedy continuation (the fixtures' greedy_tokens) through --device cuda
#    (float32 products and caches) for the llama and the all-MLA model; a batch of prompts of
#    different lengths == each alone, greedy (float32) and sampled (bf16), on a random hybrid.
set -uo pipefail
. "$(dirname "$0")/cli_lib.sh"
Z=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") fx=$(cd "$2" && pwd) SRC=$(cd "$3" && pwd)
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass + 1)); echo "PASS $1"; else fail=$((fail + 1)); echo "FAIL $1"; fi; }
same() { if [ -n "$3" ] && [ "$2" = "$3" ]; then check "$1" true; else check "$1" false; echo "  got: $2" | head -5; echo "  ref: $3" | head -5; fi; }
losses() { grep '"loss"' "$1" | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/'; }
falls() { awk 'NR==1{a=$2} END{exit !(NR > 1 && $2 < a)}' "$1"; }

# the GPU, or skip
if ! probe=$("$Z" bench --device cuda --train "$SRC/configs/tiny-llama.json" --batch 1 --seq 8 --steps 1 2>&1); then
  if echo "$probe" | grep -q "no usable CUDA device\|has no CUDA backend"; then echo "SKIP: $(echo "$probe" | tail -1)"; exit 77; fi
  echo "FAIL the probe: $probe"; exit 1
fi

$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" -o shards --val-fraction 0.2 --seed 1 >/dev/null 2>&1
cat > base.json <<J
{"model": "$SRC/configs/demo-llama.json", "data": "shards", "seq_len": 32, "micro_batch": 4,
 "steps": 6, "lr": 3e-3, "min_lr": 3e-4, "warmup": 2, "log_every": 1, "eval_every": 3, "eval_batches": 2,
 "save_every": 3, "seed": 3
J
run() { printf '%s\n' "$(cat base.json), \"out\": \"$1\"}" > "$1.json"; }
run A; run G; run R; run C; run H
# the CPU's curve and its split run (the floor of the comparisons)
$Z train --stage pretrain --config A.json > A.log 2>&1
printf '%s\n' "$(sed 's/"micro_batch": 4/"micro_batch": 2, "grad_accum": 2/; s/"save_every": 3/"save_every": 0/' base.json), \"out\": \"SPLIT\"}" > SPLIT.json
$Z train --stage pretrain --config SPLIT.json > SPLIT.log 2>&1
losses A/train.jsonl > a.txt; losses SPLIT/train.jsonl > split.txt
fl=$(loss_maxrel a.txt split.txt)
ptool=$(dirname "$Z")/tests/zb_path; [ -x "$ptool" ] || ptool=$(dirname "$Z")/zb_path
sc=$("$ptool" 32 128 "$SRC/configs/demo-llama.json")
# the GPU, float32 products
$Z train --stage pretrain --config G.json --device cuda --precision f32 > G.log 2>&1
losses G/train.jsonl > g.txt
check "pretrain --device cuda --precision f32 follows the CPU: max rel diff $(loss_maxrel a.txt g.txt) (<= $fl x $sc)" \
  '[ "$(wc -l < g.txt)" = 6 ] && loss_within a.txt g.txt "$fl" "$sc"'
# a GPU checkpoint resumed by the CPU, a CPU checkpoint resumed on the GPU
$Z train --stage pretrain --config R.json --device cuda --precision f32 --stop-after 3 > R1.log 2>&1
$Z train --stage pretrain --config R.json --resume R/ckpt-000003.h5 > R2.log 2>&1
losses R/train.jsonl > r.txt
check "GPU checkpoint resumed on the CPU: max rel diff $(loss_maxrel a.txt r.txt) (<= $fl x $sc)" \
  '[ "$(wc -l < r.txt)" = 6 ] && loss_within a.txt r.txt "$fl" "$sc"'
$Z train --stage pretrain --config C.json --stop-after 3 > C1.log 2>&1
$Z train --stage pretrain --config C.json --resume C/ckpt-000003.h5 --device cuda --precision f32 > C2.log 2>&1
losses C/train.jsonl > c.txt
check "CPU checkpoint resumed on the GPU: max rel diff $(loss_maxrel a.txt c.txt) (<= $fl x $sc)" \
  '[ "$(wc -l < c.txt)" = 6 ] && loss_within a.txt c.txt "$fl" "$sc"'
check "the GPU's checkpoints and model are the CPU's format (zebra info reads them)" \
  '[ -f G/model.h5 ] && $Z info G/model.h5 > info.log 2>&1'
# bf16 products (the GPU's default)
$Z train --stage pretrain --config H.json --device cuda > H.log 2>&1
losses H/train.jsonl > h.txt
check "pretrain --device cuda (bf16): 6 steps, loss $(head -1 h.txt | cut -d' ' -f2) -> $(tail -1 h.txt | cut -d' ' -f2)" \
  '[ "$(wc -l < h.txt)" = 6 ] && falls h.txt'
# ild and kd: the CPU-trained teacher and a random hybrid, both on the GPU
$Z init --random --config "$SRC/configs/demo-zebra.json" -o student.h5 --seed 4 >/dev/null 2>&1
printf '%s\n' "$(sed 's/"steps": 6/"steps": 12/; s/"save_every": 3/"save_every": 0/; s#"model": "[^"]*"#"model": "student.h5"#' base.json), \"teacher\": \"A/model.h5\", \"out\": \"I\"}" > I.json
$Z train --stage ild --config I.json --device cuda > I.log 2>&1
losses I/train.jsonl > i.txt
check "ild --device cuda: loss $(head -1 i.txt | cut -d' ' -f2) -> $(tail -1 i.txt | cut -d' ' -f2)" 'falls i.txt'
printf '%s\n' "$(sed 's/"steps": 6/"steps": 12/; s/"save_every": 3/"save_every": 0/; s#"model": "[^"]*"#"model": "I/model.h5"#' base.json), \"teacher\": \"A/model.h5\", \"kl_weight\": 1, \"ce_weight\": 0.5, \"out\": \"K\"}" > K.json
$Z train --stage kd --config K.json --device cuda > K.log 2>&1
losses K/train.jsonl > k.txt
check "kd --device cuda: loss $(head -1 k.txt | cut -d' ' -f2) -> $(tail -1 k.txt | cut -d' ' -f2)" 'falls k.txt'
# eval: the CPU's perplexity of the CPU-trained model, on the GPU
ppl() { grep -o '"perplexity":[^,}]*' "$1" | sed 's/.*:[[:space:]]*//'; }   # the JSON report's full digits
$Z eval --model A/model.h5 --data shards --seq 32 --batch 4 --json ec.json > E1.log 2>&1
$Z eval --model A/model.h5 --data shards --seq 32 --batch 4 --json eg.json --device cuda --precision f32 > E2.log 2>&1
pc=$(ppl ec.json); pg=$(ppl eg.json)
check "eval --device cuda: perplexity $pg, CPU $pc (rel diff <= $fl x $sc)" \
  '[ -n "$pc" ] && [ -n "$pg" ] && awk -v a="$pc" -v b="$pg" -v f="$fl" -v s="$sc" "BEGIN{r=(a-b)/a; if(r<0)r=-r; exit !(f > 0 && r <= s*f)}"'

# generate
st_ints() {   # st_ints FILE NAME: a safetensors int32 tensor
  local n hdr o
  n=$(od -A n -t u8 -N 8 "$1" | tr -d ' ')
  hdr=$(head -c $((8 + n)) "$1" | tail -c "$n")
  o=($(printf '%s' "$hdr" | grep -o "\"$2\":{[^}]*}" | grep -o '"data_offsets":\[[0-9]*,[0-9]*\]' | grep -o '[0-9][0-9]*'))
  od -v -A n -t d4 -j $((8 + n + o[0])) -N $((o[1] - o[0])) "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}
f32=(--device cuda --precision f32 --cache f32)
for m in hf-llama-tiny hf-mla-tiny; do
  prompt=$(st_ints "$fx/$m/ref.safetensors" greedy_prompt | tr ' ' ,)
  want=$(st_ints "$fx/$m/ref.safetensors" greedy_tokens)
  n=$(echo "$want" | wc -w)
  got=$($Z generate --model "$fx/$m" --prompt-ids "$prompt" --max-new "$n" --ignore-eos --quiet "${f32[@]}" 2>/dev/null | sed 's/ $//')
  same "$m HF greedy tokens --device cuda ($n tokens)" "$got" "$want"
done
$Z init --random --config "$SRC/configs/tiny-zebra.json" -o hybrid.h5 --seed 3 --std 0.08 > /dev/null 2>&1
P=("1,17,33,5,200" "7" "$(seq -s, 3 3 210)" "9,8,7,6,5,4,3,2,1,0,11,12" "100,101,102")
pargs=(); for p in "${P[@]}"; do pargs+=(--prompt-ids "$p"); done
blocks() { sed -n 's/^\[\([0-9]*\)\] /\1 /p' | sort -n -k1,1 -s; }
alone() { for i in "${!P[@]}"; do printf '%s %s\n' "$i" "$($Z generate --model hybrid.h5 --prompt-ids "${P[$i]}" --quiet "$@" 2>/dev/null)"; done; }
batch() { local b=$1; shift; $Z generate --model hybrid.h5 "${pargs[@]}" --quiet --batch "$b" "$@" 2>gen.err | blocks; }
g=(--max-new 12 --ignore-eos "${f32[@]}")
same "hybrid greedy --device cuda --batch 5 == alone" "$(batch 5 "${g[@]}")" "$(alone "${g[@]}")"
same "hybrid greedy --device cuda --batch 5 == the CPU's" "$(batch 5 --max-new 12 --ignore-eos)" "$(batch 5 "${g[@]}")"
s=(--max-new 10 --ignore-eos --temperature 0.9 --top-k 20 --top-p 0.95 --seed 7 --device cuda)
ref=$(batch 1 "${s[@]}")
same "hybrid sampled --device cuda (bf16) --batch 5 == --batch 1" "$(batch 5 "${s[@]}")" "$ref"
check "hybrid sampled --device cuda: 5 completions of 10 tokens" '[ "$(echo "$ref" | awk "NF == 11" | wc -l)" = 5 ]'
# the decode step recorded once as a CUDA graph and replayed (bf16 weights, attention layers only,
# <= 8 sequences) gives the tokens of the step run call by call (ZB_CUDA_GRAPHS=0): same kernels
$Z init --random --config "$SRC/configs/tiny-llama.json" -o teacher.h5 --seed 5 --std 0.08 > /dev/null 2>&1
tb() { $Z generate --model teacher.h5 "${pargs[@]}" --quiet --batch "$1" --max-new 14 --ignore-eos --device cuda \
         --weights bf16 2>gen.err | blocks; }
gref=$(ZB_CUDA_GRAPHS=0 tb 5)
same "teacher bf16 greedy --device cuda --batch 5: graph replay == call by call" "$(tb 5)" "$gref"
same "teacher bf16 greedy --device cuda --batch 2: graph replay == call by call" "$(tb 2)" "$(ZB_CUDA_GRAPHS=0 tb 2)"
check "teacher bf16 --device cuda: 5 completions of 14 tokens" '[ "$(echo "$gref" | awk "NF == 15" | wc -l)" = 5 ]'
echo "$pass passed, $fail failed"
if [ $fail != 0 ]; then for f in *.log gen.err; do [ -f "$f" ] && { echo "== $f"; tail -5 "$f"; }; done; fi
[ $fail = 0 ]
