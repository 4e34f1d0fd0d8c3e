#!/usr/bin/env bash
# cli_generate.sh ZEBRA FIXTURES MPIEXEC HYBRID_CONFIG — `zebra generate` for a batch of prompts:
#  - prompts of different lengths (1 to 70 tokens) generated together (--batch 2: slots are
#    reused; --batch 5: all at once) give exactly the tokens of generating each alone, greedy
#    and with --stop, for the HF llama, the HF all-MLA model and a random MLA+Mamba2 hybrid;
#  - sampling (temperature, top-k, top-p, seed): the same tokens with --batch 1, --batch 5 and
#    at --tp 2 (each prompt has its own RNG stream), and prompt 0 alone == prompt 0 of a batch;
#  - HF's greedy continuation (ref.safetensors greedy_prompt / greedy_tokens) through the CLI;
#  - the Llama-3 chat template ids for a short text; prompt files (text, JSONL, stdin);
#  - bad input: one-line error and a non-zero exit.
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1 fx=$2 mpiexec=$3 hybrid=$4
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tok=$fx/llama3-tokenizer/tokenizer.json

"$zebra" init --random --config "$hybrid" -o "$tmp/hybrid.h5" --seed 3 --std 0.08 > /dev/null || bad "init hybrid"
P=("1,17,33,5,200" "7" "$(seq -s, 3 3 210)" "9,8,7,6,5,4,3,2,1,0,11,12" "100,101,102")
pargs=(); for p in "${P[@]}"; do pargs+=(--prompt-ids "$p"); done
# "[i] tokens" blocks -> "i tokens", in prompt order
blocks() { sed -n 's/^\[\([0-9]*\)\] /\1 /p' | sort -n -k1,1 -s; }
alone() {   # alone MODEL [args]: each prompt in its own run, as "i tokens"
  local model=$1; shift
  for i in "${!P[@]}"; do
    printf '%s %s\n' "$i" "$("$zebra" generate --model "$model" --prompt-ids "${P[$i]}" --quiet "$@" 2>/dev/null)"
  done
}
batch() { local model=$1 b=$2; shift 2; "$zebra" generate --model "$model" "${pargs[@]}" --quiet --batch "$b" "$@" 2>"$tmp/stderr" | blocks; }

for model in "$fx/hf-llama-tiny" "$fx/hf-mla-tiny" "$tmp/hybrid.h5"; do
  name=$(basename "$model")
  g=(--max-new 12 --ignore-eos)
  ref=$(alone "$model" "${g[@]}")
  same "$name greedy --batch 2 == alone" "$(batch "$model" 2 "${g[@]}")" "$ref"
  same "$name greedy --batch 5 == alone" "$(batch "$model" 5 "${g[@]}")" "$ref"
  # --stop: the 4th token of prompt 0 ends it early (and any other prompt that makes it)
  stop=$(echo "$ref" | head -1 | awk '{print $5}')
  ref=$(alone "$model" "${g[@]}" --stop "$stop")
  got=$(batch "$model" 2 "${g[@]}" --stop "$stop")
  same "$name --stop $stop --batch 2 == alone" "$got" "$ref"
  n0=$(echo "$got" | head -1 | awk '{print NF - 1}')
  last0=$(echo "$got" | head -1 | awk '{print $NF}')
  if [ "$n0" -le 4 ] && [ "$last0" = "$stop" ]; then ok "$name prompt 0 stops at $stop after $n0 tokens"
  else bad "$name prompt 0 did not stop at $stop: $(echo "$got" | head -1)"; fi
  # sampling: per-prompt streams, independent of the batch and of the TP layout
  s=(--max-new 10 --ignore-eos --temperature 0.9 --top-k 20 --top-p 0.95 --seed 7)
  ref=$(batch "$model" 1 "${s[@]}")
  same "$name sampled --batch 5 == --batch 1" "$(batch "$model" 5 "${s[@]}")" "$ref"
  got=$(mpi 2 "$zebra" generate --tp 2 --model "$model" "${pargs[@]}" --quiet --batch 3 "${s[@]}" 2>/dev/null | blocks)
  same "$name sampled --tp 2 --batch 3 == 1 rank" "$got" "$ref"
  one=$("$zebra" generate --model "$model" --prompt-ids "${P[0]}" --quiet "${s[@]}" 2>/dev/null)
  same "$name sampled prompt 0 alone == in the batch" "0 $one" "$(echo "$ref" | head -1)"
done

# the final stderr line
"$zebra" generate --model "$tmp/hybrid.h5" "${pargs[@]}" --quiet --batch 3 --max-new 4 > /dev/null 2> "$tmp/err"
if tail -1 "$tmp/err" | grep -Eq '^prefill 91 tokens [0-9.]+ tok/s \| decode [0-9]+ tokens [0-9.]+ tok/s \| 5 prompts, batch 3 \| cache [0-9]+ bytes/token, state [0-9]+ bytes/seq \| cache in use [0-9]+ bytes \(peak\), allocated [0-9]+ bytes \| weights f32 \(sgemm, [0-9]+ threads?\), [0-9.]+ GiB/rank \| peak RSS \(VmHWM\) [0-9.]+ GiB$'
then ok "stats line: $(tail -1 "$tmp/err")"; else bad "stats line: $(tail -1 "$tmp/err")"; fi

# HF greedy reference through the CLI (ids of a safetensors int32 tensor with od)
st_ints() {   # st_ints FILE NAME
  local n hdr o
  n=$(od -A n -t u8 -N 8 "$1" | tr -d ' ')
  hdr=$(head -c $((8 + n)) "$1" | tail -c "$n")
  o=($(printf '%s' "$hdr" | grep -o "\"$2\":{[^}]*}" | grep -o '"data_offsets":\[[0-9]*,[0-9]*\]' | grep -o '[0-9][0-9]*'))
  od -v -A n -t d4 -j $((8 + n + o[0])) -N $((o[1] - o[0])) "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}
for m in hf-llama-tiny hf-mla-tiny; do
  prompt=$(st_ints "$fx/$m/ref.safetensors" greedy_prompt | tr ' ' ,)
  want=$(st_ints "$fx/$m/ref.safetensors" greedy_tokens)
  n=$(echo "$want" | wc -w)
  got=$("$zebra" generate --model "$fx/$m" --prompt-ids "$prompt" --max-new "$n" --ignore-eos --quiet 2>/dev/null | sed 's/ $//')
  same "$m HF greedy tokens via --prompt-ids ($n tokens)" "$got" "$want"
  got=$(mpi 2 "$zebra" generate --tp 2 --model "$fx/$m" --prompt-ids "$prompt" --max-new "$n" --ignore-eos --quiet 2>/dev/null | sed 's/ $//')
  same "$m HF greedy tokens at --tp 2" "$got" "$want"
  got=$("$zebra" generate --model "$fx/$m" --prompt-ids 5,6 --prompt-ids "$prompt" --max-new "$n" --ignore-eos --quiet 2>/dev/null | blocks | sed -n 's/^1 //p' | sed 's/ $//')
  same "$m HF greedy tokens as prompt 1 of a batch" "$got" "$want"
done

# chat template: <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>
# <|start_header_id|>assistant<|end_header_id|>\n\n with Llama-3 ids (user 882, \n\n 271,
# Hello 9906, assistant 78191)
want="128000 128006 882 128007 271 9906 128009 128006 78191 128007 271"
same "chat template ids" "$("$zebra" generate --print-ids --chat --tokenizer "$tok" --prompt Hello)" "$want"
printf '{"messages": [{"role": "user", "content": "Hello"}]}\n' > "$tmp/chat.jsonl"
same "JSONL messages == --chat" "$("$zebra" generate --print-ids --tokenizer "$tok" --prompts "$tmp/chat.jsonl")" "$want"
printf '{"prompt": "Hello"}\n\nHello\n{"prompt_ids": [1, 2, 3]}\r\n' > "$tmp/mixed.txt"
same "prompt file: JSON prompt, blank line, text line, ids, CRLF" \
  "$("$zebra" generate --print-ids --tokenizer "$tok" --prompts "$tmp/mixed.txt" | tr '\n' '/')" "128000 9906/128000 9906/1 2 3/"
same "--chat on a prompt file" "$("$zebra" generate --print-ids --chat --tokenizer "$tok" --prompts "$tmp/mixed.txt" | head -2 | tr '\n' '/')" "$want/$want/"
# stdin, under --tp 2 (mpirun gives stdin to rank 0 only): == the same prompts as arguments
ref=$(batch "$fx/hf-mla-tiny" 5 --max-new 6 --ignore-eos)
got=$(printf '{"prompt_ids": [%s]}\n' "${P[@]}" | mpi 2 "$zebra" generate --tp 2 --model "$fx/hf-mla-tiny" --prompts - --quiet --max-new 6 --ignore-eos 2>/dev/null | blocks)
same "--prompts - (stdin) at --tp 2 == arguments" "$got" "$ref"

# --model CONFIG.json: synthetic weights (decode benchmarks without a file): 1 rank, --tp 2 and
# --pp 2 each give --max-new tokens (the values differ: each rank draws its own)
for lay in "1" "2 --tp 2" "2 --pp 2"; do
  set -- $lay
  n=$1; shift
  got=$(mpi "$n" "$zebra" generate --model "$hybrid" --prompt-ids 1,2,3 --max-new 5 --ignore-eos --quiet "$@" 2>"$tmp/err")
  cnt=$(echo "$got" | wc -w)
  if [ "$cnt" = 5 ]; then ok "synthetic weights from a config, $n rank(s) $*: 5 tokens"; else bad "synthetic weights, $n rank(s) $*: '$got' $(head -2 "$tmp/err")"; fi
done
printf '{"hidden_size": 8}\n' > "$tmp/badcfg.json"

# bad input: one line on stderr, non-zero exit
err1() {   # err1 WHAT PATTERN cmd...
  local what=$1 pat=$2; shift 2
  if "$@" > /dev/null 2> "$tmp/err"; then bad "$what: accepted"; return; fi
  if [ "$(err_file_lines "$tmp/err")" = 1 ] && grep -q -- "$pat" "$tmp/err"; then ok "$what: $(cat "$tmp/err")"
  else bad "$what: $(head -3 "$tmp/err")"; fi
}
: > "$tmp/empty.txt"; printf '\n  \n' > "$tmp/blank.txt"
err1 "empty prompts file" "has no prompts" "$zebra" generate --model "$fx/hf-llama-tiny" --prompts "$tmp/empty.txt"
err1 "blank prompts file" "has no prompts" "$zebra" generate --model "$fx/hf-llama-tiny" --prompts "$tmp/blank.txt"
err1 "prompt longer than --ctx" "more than the context of 4" "$zebra" generate --model "$fx/hf-llama-tiny" --prompt-ids 1,2 --prompt-ids 1,2,3,4,5 --ctx 4
err1 "prompt longer than max_position_embeddings" "more than the context of 4096" \
  "$zebra" generate --model "$fx/hf-mla-tiny" --prompt-ids "$(yes 5 | head -4100 | paste -sd,)"
err1 "unknown flag" "unknown option --bogus" "$zebra" generate --model "$fx/hf-llama-tiny" --prompt-ids 1 --bogus
err1 "no prompt" "give a prompt" "$zebra" generate --model "$fx/hf-llama-tiny"
err1 "missing prompts file" "cannot open" "$zebra" generate --model "$fx/hf-llama-tiny" --prompts "$tmp/none.txt"
printf '{"prompt_ids": [1]}\n{"prompt": 3}\n' > "$tmp/bad.jsonl"
err1 "bad JSONL line" "bad.jsonl:2: expected" "$zebra" generate --model "$fx/hf-llama-tiny" --prompts "$tmp/bad.jsonl"
err1 "text without a tokenizer" "needs --tokenizer" "$zebra" generate --model "$fx/hf-llama-tiny" --prompt hi
err1 "ids outside the vocabulary" "outside the vocabulary" "$zebra" generate --model "$fx/hf-llama-tiny" --tokenizer "$tok" --prompt hi
err1 "bad --prompt-ids" "not a list of integers" "$zebra" generate --model "$fx/hf-llama-tiny" --prompt-ids 1,x
err1 "incomplete config as --model" "badcfg.json" "$zebra" generate --model "$tmp/badcfg.json" --prompt-ids 1
err1 "bad --batch" "batch must be" "$zebra" generate --model "$fx/hf-llama-tiny" --prompt-ids 1 --batch 0
echo "$pass passed, $fail failed"
[ $fail = 0 ]
