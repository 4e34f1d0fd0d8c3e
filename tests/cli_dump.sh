#!/usr/bin/env bash
# cli_dump.sh ZEBRA FIXTURES — `zebra dump` on HF fixtures, compared with HF's numbers by
# test_hf_model; and bad input gives a one-line error and a non-zero exit.
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1 fx=$2
here=$(dirname "$0")
bin=$(dirname "$zebra")/tests/test_hf_llama
[ -x "$bin" ] || bin=$(dirname "$zebra")/test_hf_llama
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
for m in hf-llama-tiny hf-mla-tiny; do
  if ! "$zebra" dump --model "$fx/$m" --input "$fx/$m/ref.safetensors" --out "$tmp/$m.safetensors" --grads; then
    echo "FAIL dump $m"; fail=1; continue
  fi
  "$bin" "$fx/$m" "$tmp/$m.safetensors" || { echo "FAIL compare $m"; fail=1; }
done
# bad input: missing model dir, missing input file
if "$zebra" dump --model "$tmp/nope" --input "$fx/hf-llama-tiny/ref.safetensors" --out "$tmp/x.safetensors" 2>"$tmp/err"; then
  echo "FAIL: missing model accepted"; fail=1
fi
grep -q "nope" "$tmp/err" || { echo "FAIL: error does not name the path: $(cat "$tmp/err")"; fail=1; }
[ "$(err_file_lines "$tmp/err")" -le 1 ] || { echo "FAIL: error is not one line"; cat "$tmp/err"; fail=1; }
[ -e "$tmp/x.safetensors" ] && { echo "FAIL: output written on error"; fail=1; }
if [ $fail = 0 ]; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed"; fi
exit $fail
