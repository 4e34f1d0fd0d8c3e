#!/usr/bin/env bash
# cli_compose.sh ZEBRA FIXTURES SRC — `zebra compose` and `zebra smart` on hf-llama-tiny:
#  - compose (f32) writes a checkpoint equal, tensor for tensor, to the in-memory composition
#    (test_compose with the file), prints per-layer lines and the total cache ratio
#    (2 MLA x (32 + 8) = 80 of the teacher's 3 x 2 x 2 x 16 = 192 numbers = 41.67%);
#  - the bf16 output loads and `zebra dump` gives a finite loss;
#  - --init release composes too and prints its reconstruction errors;
#  - the paper's pipeline on it: an all-Mamba2 (plan []) and an all-MLA (plan [0,1,2])
#    composition stand for the two ILD models; smart scores them and writes the plan (L = 3,
#    K = 2: layer 0 and L-2 = 1; --to-last: [0, 2]) with its scores and an SVG; compose
#    --mamba --mla --plan assembles the hybrid, equal tensor for tensor (and config) to compose
#    --teacher --plan of the same plan (untrained models); smart under mpirun -n 2 splits the
#    rows and gives the same plan; a mismatched config fails with a one-line error and no file.
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1 fx=$2 src=$3 cmp=${4:-}
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

"$zebra" compose --teacher "$T" --config "$cfg" --init release -o "$tmp/r.h5" > "$tmp/rel" 2>&1; r=$?
cat "$tmp/rel"
[ $r = 0 ] && grep -q "MLA init release" "$tmp/rel" && grep -q "^MLA reconstruction" "$tmp/rel"; ok $? "compose --init release"

echo '{"mla_layers": []}' > "$tmp/none.json"; echo '{"mla_layers": [0, 1, 2]}' > "$tmp/all.json"
"$zebra" compose --teacher "$T" --config "$cfg" --plan "$tmp/none.json" -o "$tmp/M.h5" > /dev/null 2>&1 &&
"$zebra" compose --teacher "$T" --config "$cfg" --plan "$tmp/all.json" -o "$tmp/A.h5" > /dev/null 2>&1; ok $? "all-Mamba2 and all-MLA compositions"
"$zebra" smart --teacher "$T" --mamba "$tmp/M.h5" --mla "$tmp/A.h5" --data "$T/ref.safetensors" --mla-layers 2 \
  -o "$tmp/plan.json" --svg "$tmp/plan.svg" > "$tmp/smart" 2>&1; r=$?
cat "$tmp/smart"
ok $r "smart"
tr -d ' \n' < "$tmp/plan.json" | grep -q '"mla_layers":\[0,1\]'; ok $? "smart: the rule gives [0, L-2 = 1] of 3"
tr -d ' \n' < "$tmp/plan.json" | grep -q '"even_layers":\[0,2\]'; ok $? "smart: the even control [0, 2]"
grep -q '"scores": \[' "$tmp/plan.json" && grep -q '"kl_mamba"' "$tmp/plan.json"; ok $? "smart: the plan lists the scores"
grep -q "<svg" "$tmp/plan.svg" && grep -q "</svg>" "$tmp/plan.svg" && grep -q "control" "$tmp/plan.svg"; ok $? "smart: SVG written"
"$zebra" smart --teacher "$T" --mamba "$tmp/M.h5" --mla "$tmp/A.h5" --data "$T/ref.safetensors" --mla-layers 2 \
  --to-last -o "$tmp/plan2.json" > /dev/null 2>&1 && tr -d ' \n' < "$tmp/plan2.json" | grep -q '"mla_layers":\[0,2\]'
ok $? "smart --to-last: [0, 2]"
# one row per batch in both runs, so that every row's logits are computed alike; the ranks'
# sums then differ only in the order of two double additions (printed to 9 digits: equal)
"$zebra" smart --teacher "$T" --mamba "$tmp/M.h5" --mla "$tmp/A.h5" --data "$T/ref.safetensors" --mla-layers 2 \
  --batch 1 -o "$tmp/plan1.json" > /dev/null 2>&1
mpirun --allow-run-as-root --oversubscribe -n 2 "$zebra" smart --teacher "$T" --mamba "$tmp/M.h5" --mla "$tmp/A.h5" \
  --data "$T/ref.safetensors" --mla-layers 2 --batch 1 -o "$tmp/plan3.json" > "$tmp/smart3" 2>&1; r=$?
[ $r = 0 ] && grep -q "2 ranks" "$tmp/smart3" && cmp -s "$tmp/plan1.json" "$tmp/plan3.json"
ok $? "smart under mpirun -n 2 (rows split): the same plan file"
"$zebra" compose --mamba "$tmp/M.h5" --mla "$tmp/A.h5" --plan "$tmp/plan.json" -o "$tmp/h.h5" > "$tmp/asm" 2>&1; r=$?
cat "$tmp/asm"
ok $r "compose --mamba --mla --plan (assembly)"
"$zebra" compose --teacher "$T" --config "$cfg" --plan "$tmp/plan.json" -o "$tmp/p.h5" > /dev/null 2>&1; ok $? "compose --plan"
if [ -n "$cmp" ]; then
  "$cmp" "$tmp/p.h5" "$tmp/h.h5" > "$tmp/cmp" 2>&1; r=$?; tail -1 "$tmp/cmp"
  ok $r "assembly of the untrained models == compose --teacher --plan (every tensor, config)"
fi
if "$zebra" compose --mamba "$tmp/A.h5" --mla "$tmp/A.h5" --plan "$tmp/plan.json" -o "$tmp/y.h5" 2> "$tmp/err" > /dev/null; then r=1; else r=0; fi
[ $r = 0 ] && [ ! -e "$tmp/y.h5" ] && grep -q "layer 2 should come from the Mamba2 model" "$tmp/err"
ok $? "assembly with an MLA model as M refused: $(head -1 "$tmp/err")"

if "$zebra" compose --teacher "$T" --config "$src/configs/tiny-zebra.json" -o "$tmp/x.h5" 2> "$tmp/err" > /dev/null; then r=1; else r=0; fi
ok $r "mismatched config (4 layers vs 3) refused"
[ "$(err_file_lines "$tmp/err")" = 1 ] && grep -q "layers" "$tmp/err"; ok $? "one-line error naming the problem: $(head -1 "$tmp/err")"
[ ! -e "$tmp/x.h5" ]; ok $? "no output file on error"
echo "$((n - fail)) passed, $fail failed"
[ $fail = 0 ]
