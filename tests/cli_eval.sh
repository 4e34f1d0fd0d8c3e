#!/usr/bin/env bash
# cli_eval.sh ZEBRA FIXTURES EVAL_CHECK — `zebra eval --tasks` log-likelihoods against HF's
# logits (tests/eval_check.c), on the Llama and the all-MLA fixtures; bad task files fail
# with a one-line error naming file and line.
set -u
zebra=$1 fx=$2 check=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
for m in hf-llama-tiny hf-mla-tiny; do
  "$check" write "$fx/$m" "$tmp/$m.jsonl" >/dev/null || { echo "FAIL write $m"; fail=1; continue; }
  "$zebra" eval --model "$fx/$m" --tasks "$tmp/$m.jsonl" --batch 2 --json "$tmp/$m.json" || { echo "FAIL eval $m"; fail=1; continue; }
  "$check" check "$fx/$m" "$tmp/$m.jsonl" "$tmp/$m.json" || { echo "FAIL check $m"; fail=1; }
done
printf '{"context_ids": [1, 2], "choices_ids": [[3]], "gold": 0}\n' > "$tmp/bad1.jsonl"
printf '{"context_ids": [1, 2], "choices_ids": [[3], [4]], "gold": 0}\nnot json\n' > "$tmp/bad2.jsonl"
for b in bad1 bad2; do
  if "$zebra" eval --model "$fx/hf-llama-tiny" --tasks "$tmp/$b.jsonl" 2>"$tmp/err"; then echo "FAIL: $b accepted"; fail=1; fi
  grep -q "$b.jsonl:[12]" "$tmp/err" || { echo "FAIL: $b error lacks file:line: $(cat "$tmp/err")"; fail=1; }
done
if [ $fail = 0 ]; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed"; fi
exit $fail
