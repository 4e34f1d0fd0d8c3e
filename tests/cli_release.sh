#!/usr/bin/env bash
# cli_release.sh ZEBRA FIXTURES SRC COMPARE MPIEXEC [PART] — the authors' Zebra-Llama release format
# through the driver (core/release.h, issue 14), on fixtures/zebra-release-tiny:
#  1. the README's user guide, run as written: info, generate with the chat template, eval,
#     continue training (sft) from the release directory, export the result, generate with the
#     export (same tokens as the trained .h5); a 256-id tokenizer with the Llama-3 chat tokens
#     made from configs/bytes-tokenizer.json (bytes 0xFB-0xFF, never in UTF-8, give their ids);
#  2. the release's 16 greedy tokens from `zebra generate` at 1 rank, --tp 2 and --pp 2;
#  3. export / import: the fixture exported again has the same tensor names, shapes, dtypes and
#     bytes (both ways) and the same hybrid_config.json keys; import -> export -> import gives
#     every tensor bit for bit (as stored, --dtype bf16, sharded with an index as HF shards);
#     a pure Llama is written as an HF Llama directory (== the HF fixture); an MLA with llama3
#     RoPE (our older checkpoints) and a hybrid with attention layers are refused, no output;
#     an output that exists is refused and left as it was;
#  4. bad release directories: one clear line, non-zero exit, nothing written, for every command
#     that takes a model (info, generate, import, export, eval).
# PART: "good" runs 1-3, "bad" runs 4 (tests/run-tests reruns it under AddressSanitizer), else all.
set -u
Z=$1; FX=$(cd "$2" && pwd); SRC=$3; CMP=$4; MPIEXEC=$5; PART=${6:-all}
R=$FX/zebra-release-tiny
T=$(mktemp -d /tmp/zb_cli_release.XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T"
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
mpi() { local n=$1; shift; timeout 120 "$MPIEXEC" --allow-run-as-root --oversubscribe -n "$n" "$@"; }
# int64 tensor NAME of a safetensors file, space-separated (od reads the header's offsets)
st_i64() {
  local n hdr o
  n=$(od -A n -t u8 -N 8 "$1" | tr -d ' ')
  hdr=$(head -c $((8 + n)) "$1" | tail -c "$n")
  o=($(printf '%s' "$hdr" | grep -o "\"$2\":{[^}]*}" | grep -o '"data_offsets":\[[0-9]*,[0-9]*\]' | grep -o '[0-9][0-9]*'))
  od -v -A n -t d8 -j $((8 + n + o[0])) -N $((o[1] - o[0])) "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}
# top-level keys of a JSON file written with one key per line (4-space, 2-space or tab indent)
top_keys() { sed -n 's/^\(    \|  \|\t\)"\([^"]*\)":.*/\2/p' "$1" | sort; }

LC_ALL=C sed -e '/"[^"]*": 25[1-5],\{0,1\}$/d' -e 's/\("[^"]*": 250\),$/\1/' \
  -e 's/"id": 256,/"id": 251,/; s/"id": 257,/"id": 252,/; s/"id": 258,/"id": 253,/' \
  -e 's/"id": 259,/"id": 254,/; s/"id": 260,/"id": 255,/' "$SRC/configs/bytes-tokenizer.json" > tok.json
cat > mc.jsonl <<'J'
{"context": "The sky is", "choices": [" blue", " green"], "gold": 0}
{"context": "Two plus two is", "choices": [" four", " five", " six"], "gold": 0}
J
if [ "$PART" != bad ]; then
# ---- 1. the user guide (README) on the tiny release ----
"$Z" info "$R" > info.txt 2>&1
check "info: $(grep layers info.txt | tr -s ' ')" 'grep -q "4: 0 attention, 2 MLA, 2 Mamba2" info.txt'
"$Z" generate --model "$R" --tokenizer tok.json --chat --prompt "What is a hybrid model?" --max-new 8 \
  --temperature 0.7 --seed 1 --print-ids > chat.txt 2> chat.err
check "generate --chat on the release directory ($(head -c 60 chat.txt | tr '\n' ' '))" '[ -s chat.txt ]'
"$Z" eval --model "$R" --tasks mc.jsonl --tokenizer tok.json --json eval.json > eval.txt 2>&1
check "eval --tasks: $(tail -1 eval.txt)" 'grep -q "n=2 acc=" eval.txt && [ -s eval.json ]'
for i in $(seq 1 24); do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"say $i\"}, {\"role\": \"assistant\", \"content\": \"number $i\"}]}"
done > chat.jsonl
"$Z" data --tokenizer tok.json --input chat.jsonl --format chat -o chat --val-fraction 0.2 > data.txt 2>&1
cat > sft.json <<J
{"model": "$R", "data": "chat", "seq_len": 32, "micro_batch": 2, "steps": 4, "lr": 1e-3,
 "log_every": 1, "eval_every": 0, "eval_batches": 1, "out": "sft"}
J
"$Z" train --stage sft --config sft.json > sft.log 2>&1
check "train --stage sft continues the release checkpoint: $(grep -c '"loss"' sft/train.jsonl 2>/dev/null) logged steps" \
  '[ -f sft/model.h5 ] && [ "$(grep -c "\"loss\"" sft/train.jsonl)" -ge 4 ]'
"$Z" export sft/model.h5 -o my-zebra --dtype f32 > export.txt 2>&1
check "export the trained model: $(cat export.txt)" '[ -f my-zebra/hybrid_config.json ] && [ -f my-zebra/model.safetensors ]'
"$CMP" my-zebra sft/model.h5 > cmp1.txt 2>&1   # (the export also holds the tied lm_head.weight)
check "the export holds the trained tensors bit for bit: $(tail -1 cmp1.txt)" 'grep -q " 0 failed" cmp1.txt'
a=$("$Z" generate --model sft/model.h5 --prompt-ids 41,240,144,165 --max-new 12 --ignore-eos --quiet 2>/dev/null)
b=$("$Z" generate --model my-zebra --prompt-ids 41,240,144,165 --max-new 12 --ignore-eos --quiet 2>/dev/null)
check "generate with the export == with the trained .h5: $b" '[ -n "$a" ] && [ "$a" = "$b" ]'

# ---- 2. the release's greedy tokens through the driver, 1 rank / --tp 2 / --pp 2 ----
want=$(st_i64 "$R/ref.safetensors" greedy)
prompt=$(st_i64 "$R/ref.safetensors" input_ids | cut -d' ' -f1-10 | tr ' ' ,)
for lay in "1 1 1" "2 2 1" "2 1 2"; do
  set -- $lay
  if [ "$1" = 1 ]; then got=$("$Z" generate --model "$R" --prompt-ids "$prompt" --max-new 16 --ignore-eos --quiet 2>/dev/null)
  else got=$(mpi "$1" "$Z" generate --tp "$2" --pp "$3" --model "$R" --prompt-ids "$prompt" --max-new 16 --ignore-eos \
             --quiet 2>/dev/null); fi
  got=$(echo $got)
  check "release greedy tokens at --tp $2 --pp $3: $got" '[ -n "$want" ] && [ "$got" = "$want" ]'
done

# ---- 3. export / import ----
"$Z" export "$R" -o again > again.txt 2>&1
check "export the fixture: $(cat again.txt)" '[ -f again/model.safetensors ] && [ -f again/config.json ]'
"$CMP" "$R" again > c1.txt 2>&1; "$CMP" again "$R" > c2.txt 2>&1
check "fixture vs its export, both ways: $(tail -1 c1.txt); $(tail -1 c2.txt) (names, shapes, dtypes, bytes, config)" \
  'grep -q " 0 failed" c1.txt && grep -q " 0 failed" c2.txt'
check "same hybrid_config.json keys ($(top_keys again/hybrid_config.json | wc -l))" \
  '[ "$(top_keys "$R/hybrid_config.json")" = "$(top_keys again/hybrid_config.json)" ]'
check "same config.json keys but _name_or_path / transformers_version" \
  '[ "$(top_keys "$R/config.json" | grep -v "^_name_or_path$\|^transformers_version$")" = "$(top_keys again/config.json)" ]'
"$Z" import "$R" -o a.h5 > /dev/null 2>&1
"$Z" export a.h5 -o a > /dev/null 2>&1 && "$Z" import a -o b.h5 > /dev/null 2>&1
"$CMP" a.h5 b.h5 > c3.txt 2>&1; "$CMP" b.h5 a.h5 > c4.txt 2>&1
check "import -> export -> import, bit for bit: $(tail -1 c3.txt)" 'grep -q " 0 failed" c3.txt && grep -q " 0 failed" c4.txt'
"$Z" export a.h5 -o abf --dtype bf16 > /dev/null 2>&1 && "$Z" import abf -o bf.h5 > /dev/null 2>&1
"$CMP" abf bf.h5 > c5.txt 2>&1
check "--dtype bf16 export -> import, bit for bit: $(tail -1 c5.txt)" \
  'grep -q "\"torch_dtype\": \"bfloat16\"" abf/config.json && grep -q " 0 failed" c5.txt'
"$Z" export a.h5 -o shard --max-shard-size 300KB > shard.txt 2>&1 && "$Z" import shard -o sh.h5 > /dev/null 2>&1
"$CMP" a.h5 sh.h5 > c7.txt 2>&1
check "sharded export (300 KB shards): $(ls shard | tr '\n' ' ')" \
  '[ -f shard/model.safetensors.index.json ] && [ -f shard/model-00003-of-00003.safetensors ] && [ ! -f shard/model.safetensors ] && grep -q "\"total_size\": " shard/model.safetensors.index.json && grep -q " 0 failed" c7.txt'
"$Z" import "$FX/hf-llama-tiny" -o l.h5 > /dev/null 2>&1 && "$Z" export l.h5 -o llama > llama.txt 2>&1
"$CMP" "$FX/hf-llama-tiny" llama > c8.txt 2>&1; "$CMP" llama "$FX/hf-llama-tiny" > c9.txt 2>&1
check "a Llama is exported as an HF Llama directory (no hybrid_config, no tied lm_head) == the HF fixture" \
  '[ ! -f llama/hybrid_config.json ] && grep -q " 0 failed" c8.txt && grep -q " 0 failed" c9.txt'
refused() {   # refused TAG NEEDLE MODEL: export fails with one line naming NEEDLE, nothing left
  local tag=$1 needle=$2
  "$Z" export "$3" -o "r_$tag" > /dev/null 2> "r_$tag.err"; local rc=$?
  check "export refuses $tag: $(cat "r_$tag.err")" \
    '[ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(wc -l < "r_$tag.err")" = 1 ] && grep -qF -- "$needle" "r_$tag.err" && [ "$(ls -d r_$tag*)" = "r_$tag.err" ]'
}
# an MLA config without its own rope keys: it inherits the model's llama3 rope, as every config
# and checkpoint written before mla.rope_scaling existed
cat > old.json <<'J'
{"model_type": "zebra", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 256, "rms_norm_eps": 1e-05,
 "tie_word_embeddings": true, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
 "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
 "layer_kinds": ["mla", "mamba2"],
 "mla": {"n_heads": 4, "q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
         "v_head_dim": 16, "kv_heads": 2, "rope_interleave": true},
 "mamba2": {"d_inner": 64, "nheads": 4, "headdim": 16, "d_state": 16, "x_groups": 2, "b_groups": 2, "c_groups": 4,
            "norm_group_size": 16}}
J
"$Z" init --random --config old.json -o old.h5 > /dev/null 2>&1
refused llama3-mla "llama3-scaled RoPE" old.h5
"$Z" init --random --config "$SRC/tests/tp-hybrid.json" -o attn.h5 > /dev/null 2>&1
refused attention-layers "layer 2 is an attention layer" attn.h5
mkdir full && touch full/keep
"$Z" export "$R" -o full > /dev/null 2> full.err; rc=$?
check "export into a non-empty directory refused, left as it was: $(cat full.err)" \
  '[ $rc -ne 0 ] && [ "$(ls full)" = keep ] && ! ls -d full.tmp.* 2>/dev/null'

fi
if [ "$PART" != good ]; then
# ---- 4. bad release directories ----
mkrel() {   # mkrel: a copy of the fixture (links, hybrid_config.json a real file) in d/
  rm -rf d; mkdir d
  for f in config.json model.safetensors; do ln -s "$R/$f" d/; done
  cp "$R/hybrid_config.json" d/
}
expect_bad() {   # expect_bad NAME NEEDLE: every command fails with one line naming NEEDLE
  local name=$1 needle=$2 c rc
  for c in info generate import export eval; do
    rm -rf o o.h5 o.tmp.* o.h5.tmp*
    case $c in
      info) "$Z" info d ;;
      generate) "$Z" generate --model d --prompt-ids 1,2 --max-new 2 ;;
      import) "$Z" import d -o o.h5 ;;
      export) "$Z" export d -o o ;;
      eval) "$Z" eval --model d --tasks mc.jsonl --tokenizer tok.json ;;
    esac > /dev/null 2> bad.err
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(wc -l < bad.err)" = 1 ] && grep -qF -- "$needle" bad.err &&
       ! ls -d o o.h5 o.tmp.* o.h5.tmp* > /dev/null 2>&1
    then ok "$name ($c): $(cat bad.err)"
    else bad "$name ($c): exit $rc, stderr: $(head -3 bad.err)"; fi
  done
}
mkrel; sed -i 's/^        2$/        7/' d/hybrid_config.json
expect_bad "mla_layers out of range" "hybrid_config.json: key 'mla_layers[1]' = 7 is out of range: the model has layers 0..3"
mkrel; sed -i 's/"kv_lora_rank": 24/"kv_lora_rank": 32/' d/hybrid_config.json
expect_bad "dims disagree with the tensors" "tensor 'model.layers.0.mla.kv_a_proj_with_mqa.weight' has shape [32, 64]"
mkrel; sed -i 's/"rope_type": "yarn"$/"rope_type": "su"/' d/hybrid_config.json
expect_bad "unknown rope_type" "key 'rope_scaling.rope_type': 'su' is not supported"
mkrel; sed -i 's/"rope_type": "yarn"$/"rope_type": "llama3"/' d/hybrid_config.json
expect_bad "llama3 MLA rope (the release builds none)" "the release builds no MLA rope for llama3"
mkrel; rm d/model.safetensors
LC_ALL=C perl -0777 -pe 's/model\.layers\.2\.mla\.q_b_proj\.weight/model.layers.2.mla.q_b_projXweight/' \
  "$R/model.safetensors" > d/model.safetensors
expect_bad "missing tensor" "tensor 'model.layers.2.mla.q_b_proj.weight' is missing"
mkrel; sed -i 's/"n_layer": 4/"n_layer": 5/' d/hybrid_config.json
expect_bad "n_layer disagrees with config.json" "key 'n_layer' = 5 disagrees with config.json's num_hidden_layers 4"
mkrel; printf '{"hidden_size": 64,' > d/hybrid_config.json
expect_bad "malformed hybrid_config.json" "hybrid_config.json: malformed JSON"
mkrel; sed -i 's/"repeat_kv_before_conv": false/"repeat_kv_before_conv": true/' d/hybrid_config.json
expect_bad "a Mamba2 option zebra does not compute" "'repeat_kv_before_conv' = true is not supported"
mkrel; rm d/model.safetensors; cp "$R/model.safetensors" d/; chmod u+w d/model.safetensors
n=$(od -A n -t u8 -N 8 d/model.safetensors | tr -d ' ')
off=$(head -c $((8 + n)) d/model.safetensors | tail -c "$n" | grep -o '"lm_head.weight":{[^}]*}' \
      | grep -o '"data_offsets":\[[0-9]*' | grep -o '[0-9]*$')
printf '\x7f' | dd of=d/model.safetensors bs=1 seek=$((8 + n + off + 3)) conv=notrunc 2> /dev/null
expect_bad "tied lm_head.weight differing from the embedding" "lm_head.weight differs from model.embed_tokens.weight"
fi
echo "$pass passed, $fail failed"
[ $fail = 0 ]
