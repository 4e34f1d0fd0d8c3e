#!/usr/bin/env bash
# cli_train — `zebra train` end to end on a byte-level shard set made from the repository's
# own sources: (1) resume equality: 6 steps straight == 3 steps, stop, --resume, 3 steps
# (bit-for-bit losses on 1 rank); (2) data parallel: 2 ranks x micro-batch 2 == 1 rank x 4
# (losses within the divergence of the 1-rank run from its own split run, scaled: cli_lib.sh); (3) ild and kd stages run and reduce their loss; (4) sft on chat
# data with loss masks; (5) zebra plot writes an SVG.
# args: ZEBRA FIXTURES SRCDIR
set -euo pipefail
. "$(dirname "$0")/cli_lib.sh"
Z=$1; SRC=$3
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"
MPI="mpiexec --allow-run-as-root --oversubscribe"
fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
losses() { grep '"loss"' "$1" | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/'; }

$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" -o shards --val-fraction 0.2 --seed 1 >/dev/null 2>&1
cat > base.json <<J
{"model": "$SRC/configs/demo-llama.json", "data": "shards", "seq_len": 32, "micro_batch": 4,
 "steps": 6, "lr": 3e-3, "min_lr": 3e-4, "warmup": 2, "log_every": 1, "eval_every": 3, "eval_batches": 2,
 "save_every": 3, "seed": 3
J
printf '%s\n' "$(cat base.json), \"out\": \"A\"}" > A.json
printf '%s\n' "$(cat base.json), \"out\": \"B\"}" > B.json
$Z train --stage pretrain --config A.json > A.log 2>&1
$Z train --stage pretrain --config B.json --stop-after 3 > B1.log 2>&1
$Z train --stage pretrain --config B.json --resume B/ckpt-000003.h5 > B2.log 2>&1
losses A/train.jsonl > a.txt; losses B/train.jsonl > b.txt
check "resume: 3 + 3 steps == 6 steps bit-for-bit ($(wc -l < a.txt) losses; last $(tail -1 a.txt))" \
  '[ "$(wc -l < a.txt)" = 6 ] && cmp -s a.txt b.txt'
check "resume: checkpoint and final model written" '[ -f B/ckpt-000006.h5 ] && [ -f B/model.h5 ]'

# data parallel: 2 ranks x 2 rows == 1 rank x 4 rows
printf '%s\n' "$(sed 's/"micro_batch": 4/"micro_batch": 2/' base.json), \"out\": \"D\"}" > D.json
$MPI -n 2 $Z train --stage pretrain --config D.json > D.log 2>&1
losses D/train.jsonl > d.txt
# the floor: 1 rank, the same 4 rows as 2 accumulated micro-batches of 2
printf '%s\n' "$(sed 's/"micro_batch": 4/"micro_batch": 2, "grad_accum": 2/; s/"save_every": 3/"save_every": 0/' base.json), \"out\": \"SPLIT\"}" > SPLIT.json
$Z train --stage pretrain --config SPLIT.json > SPLIT.log 2>&1
losses SPLIT/train.jsonl > split.txt
fl=$(loss_maxrel a.txt split.txt)
ptool=$(dirname "$Z")/tests/zb_path; [ -x "$ptool" ] || ptool=$(dirname "$Z")/zb_path
sc=$("$ptool" 32 128 "$SRC/configs/demo-llama.json")
check "dp=2 x 2 rows == 1 rank x 4 rows: max rel diff $(loss_maxrel a.txt d.txt) (<= the split-run floor $fl x $sc)" \
  '[ "$(wc -l < d.txt)" = 6 ] && loss_within a.txt d.txt "$fl" "$sc"'

# ild and kd from the pretrained teacher to a random hybrid
$Z init --random --config "$SRC/configs/demo-zebra.json" -o student.h5 --seed 4 >/dev/null 2>&1
printf '%s\n' "$(sed 's/"steps": 6/"steps": 12/; s/"save_every": 3/"save_every": 0/; s#"model": "[^"]*"#"model": "student.h5"#' base.json), \"teacher\": \"A/model.h5\", \"out\": \"I\"}" > I.json
$Z train --stage ild --config I.json > I.log 2>&1
losses I/train.jsonl > i.txt
check "ild loss falls: $(head -1 i.txt | cut -d' ' -f2) -> $(tail -1 i.txt | cut -d' ' -f2)" \
  'awk "NR==1{a=\$2} END{exit !(\$2 < a)}" i.txt'
printf '%s\n' "$(sed 's/"steps": 6/"steps": 12/; s/"save_every": 3/"save_every": 0/; s#"model": "[^"]*"#"model": "I/model.h5"#' base.json), \"teacher\": \"A/model.h5\", \"kl_weight\": 1, \"ce_weight\": 0.5, \"out\": \"K\"}" > K.json
$Z train --stage kd --config K.json > K.log 2>&1
losses K/train.jsonl > k.txt
check "kd loss falls: $(head -1 k.txt | cut -d' ' -f2) -> $(tail -1 k.txt | cut -d' ' -f2)" \
  'awk "NR==1{a=\$2} END{exit !(\$2 < a)}" k.txt'

# sft on chat data (loss mask on the assistant turns)
for i in $(seq 1 40); do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"say $i\"}, {\"role\": \"assistant\", \"content\": \"number $i is $((i*i))\"}]}"
done > chat.jsonl
$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input chat.jsonl --format chat -o chat --val-fraction 0.2 >/dev/null 2>&1
printf '%s\n' "$(sed 's/"save_every": 3/"save_every": 0/; s#"model": "[^"]*"#"model": "A/model.h5"#; s#"data": "shards"#"data": "chat"#' base.json), \"out\": \"S\"}" > S.json
$Z train --stage sft --config S.json > S.log 2>&1
losses S/train.jsonl > s.txt
check "sft runs on masked chat data: $(head -1 s.txt | cut -d' ' -f2) -> $(tail -1 s.txt | cut -d' ' -f2)" \
  '[ "$(wc -l < s.txt)" = 6 ]'

# dpo on preference pairs: the first step's loss is log 2 (policy == frozen reference), then falls
for i in $(seq 1 40); do
  echo "{\"prompt\": \"what is $i squared?\", \"chosen\": \"$((i*i))\", \"rejected\": \"no idea, sorry\"}"
done > pref.jsonl
$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input pref.jsonl --format pref -o pref --val-fraction 0.2 >/dev/null 2>&1
printf '%s\n' "$(sed 's/"save_every": 3/"save_every": 0/; s#"model": "[^"]*"#"model": "A/model.h5"#; s#"data": "shards"#"data": "pref"#; s/"micro_batch": 4/"micro_batch": 2/; s/"lr": 3e-3/"lr": 1e-3/' base.json), \"beta\": 0.5, \"out\": \"P\"}" > P.json
$Z train --stage dpo --config P.json > P.log 2>&1
losses P/train.jsonl > p.txt
check "dpo: first loss log 2 = $(head -1 p.txt | cut -d' ' -f2), falls to $(tail -1 p.txt | cut -d' ' -f2)" \
  'awk "NR==1{a=\$2} END{exit !(\$2 < a && a > 0.6931 && a < 0.6932)}" p.txt'

# the release's run.json examples (configs/run-*.json) parse: the run stops at the missing model
for f in "$SRC"/configs/run-*.json; do
  st=$(basename "$f" .json); st=${st##*-}
  $Z train --stage "$st" --config "$f" > rj.log 2>&1 || true
  check "$(basename "$f") parses (stage $st): $(tail -1 rj.log)" 'grep -q "\.h5: cannot open" rj.log'
done

$Z plot A/train.jsonl I/train.jsonl -o loss.svg
check "plot writes an SVG with curves" 'grep -q "<polyline" loss.svg && grep -q "</svg>" loss.svg'
if [ $fail != 0 ]; then for f in *.log; do echo "== $f"; tail -5 "$f"; done; fi
exit $fail
