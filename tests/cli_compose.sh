#!/usr/bin/env bash
# cli_compose.sh ZEBRA FIXTURES SRC — `zebra compose` and `zebra smart` on hf-llama-tiny:
#  - compose (f32) writes a checkpoint equal, tensor for tensor, to the in-memory composition
#    (test_compose with the file), prints per-layer lines and the total cache ratio
#    (2 MLA x (32 + 8) = 80 of the teacher's 3 x 2 x 2 x 16 = 192 numbers = 41.67%);
#  - the bf16 output loads and `zebra dump` gives a finite loss;
#  - smart writes a plan with K layers incl. the first and last, and an SVG; compose --plan
#    reads it; a mismatched config fails with a one-line error and no output file.
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1 fx=$2 src=$3
bindir=$(dirname "$zebra")
tc=$bindir/tests/test_compose; [ -x "$tc" ] || tc=$bindir/test_compose
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0 n=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok: $2"; else echo "FAIL: $2"; fail=$((fail + 1)); fi; }
T=$fx/hf-llama-tiny cfg=$src/tests/compose-tiny.json

"$zebra" compose --teacher "$T" --config "$cfg" -o "$tmp/s.h5" > "$tmp/out" 2>&1; r=$?
cat "$tmp/out"
ok $r "compose f32"
grep -q "41.67%" "$tmp/out"; ok $? "compose prints the total cache ratio 41.67%"
[ "$(grep -cE '^ +[0-9]+  (mla|mamba2) ' "$tmp/out")" = 3 ]; ok $? "compose prints one line per layer"
"$tc" "$fx" "$src/tests" "$tmp/s.h5" > "$tmp/tc" 2>&1; r=$?; tail -2 "$tmp/tc"
ok $r "streamed checkpoint == in-memory composition"
"$zebra" info --json "$tmp/s.h5" | grep -q '"kv_cache_ratio": 0.416667'; ok $? "info of the composed checkpoint"

"$zebra" compose --teacher "$T" --config "$cfg" -o "$tmp/b.h5" --dtype bf16 > /dev/null 2>&1; ok $? "compose bf16"
"$zebra" dump --model "$tmp/b.h5" --input "$T/ref.safetensors" --out "$tmp/d.safetensors" 2> "$tmp/dump"; r=$?
cat "$tmp/dump"
[ $r = 0 ] && grep -qE "loss=[0-9]+\.[0-9]+" "$tmp/dump"; ok $? "dump of the bf16 student: finite loss"

"$zebra" smart --teacher "$T" --data "$T/ref.safetensors" --mla-layers 2 -o "$tmp/plan.json" --svg "$tmp/plan.svg" > "$tmp/smart" 2>&1; r=$?
cat "$tmp/smart"
ok $r "smart"
tr -d ' \n' < "$tmp/plan.json" | grep -q '"mla_layers":\[0,2\]'; ok $? "smart: terminal rule gives [0, 2] of 3"
grep -q "<svg" "$tmp/plan.svg" && grep -q "</svg>" "$tmp/plan.svg"; ok $? "smart: SVG written"
"$zebra" compose --teacher "$T" --config "$cfg" --plan "$tmp/plan.json" -o "$tmp/p.h5" > /dev/null 2>&1; ok $? "compose --plan"

if "$zebra" compose --teacher "$T" --config "$src/configs/tiny-zebra.json" -o "$tmp/x.h5" 2> "$tmp/err" > /dev/null; then r=1; else r=0; fi
ok $r "mismatched config (4 layers vs 3) refused"
[ "$(err_file_lines "$tmp/err")" = 1 ] && grep -q "layers" "$tmp/err"; ok $? "one-line error naming the problem: $(head -1 "$tmp/err")"
[ ! -e "$tmp/x.h5" ]; ok $? "no output file on error"
echo "$((n - fail)) passed, $fail failed"
[ $fail = 0 ]
