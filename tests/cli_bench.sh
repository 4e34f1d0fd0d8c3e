#!/usr/bin/env bash
# cli_bench — `zebra bench` end to end on the small demo teacher / hybrid (issue 7): ceilings,
# one row per (model, batch, context) with positive speeds, the cache bytes per token of each
# model equal to what `zebra info` computes, the speed-up line, an SVG with both curves; f32
# and bf16 weights. (Speeds themselves are benchmarks, never asserted.)
# args: ZEBRA FIXTURES SRCDIR
set -euo pipefail
Z=$1; SRC=$3
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"
fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
T=$SRC/configs/demo-llama.json; H=$SRC/configs/demo-zebra.json
kvb() { $Z info --json "$1" | sed 's/.*"kv_bytes_per_token": *\([0-9]*\).*/\1/'; }
tb=$(kvb "$T"); hb=$(kvb "$H")
for w in f32 bf16; do
  $Z bench --teacher "$T" --hybrid "$H" --contexts 64,300 --batches 1,3 --decode-steps 2 --prefill-len 8 \
    --weights $w --md b-$w.md --svg b-$w.svg > b-$w.log 2>&1 || { echo "FAIL bench $w: $(tail -1 b-$w.log)"; fail=1; continue; }
  rows=$(grep -c '^| \(teacher\|hybrid\) |' b-$w.md || true)
  check "$w: 8 rows (2 models x 2 batches x 2 contexts): $rows" '[ "$rows" = 8 ]'
  check "$w: ceilings measured first ($(grep -o 'sgemm [0-9.]* GFLOP/s' b-$w.md), $(grep -o 'read bandwidth [0-9.]* GB/s' b-$w.md))" \
    'grep -q "sgemm [0-9.]* GFLOP/s" b-$w.md && grep -q "read bandwidth [0-9.]* GB/s" b-$w.md'
  # columns: model | params | cache B/token | batch | context | prefill | % | decode tok/s | GB/s | %
  check "$w: cache bytes per token == zebra info (teacher $tb, hybrid $hb)" \
    "awk -F'|' '/^\| teacher \|/ { if (\$4+0 != $tb) bad = 1 } /^\| hybrid \|/ { if (\$4+0 != $hb) bad = 1 } END { exit bad }' b-$w.md"
  check "$w: every decode and prefill speed > 0" \
    "awk -F'|' '/^\| (teacher|hybrid) \|/ { if (!(\$7+0 > 0 && \$9+0 > 0)) bad = 1 } END { exit bad }' b-$w.md"
  check "$w: speed-up line and an SVG with two curves" \
    'grep -q "hybrid / teacher decode speed-up" b-$w.md && [ "$(grep -c "<polyline" b-$w.svg)" -ge 2 ]'
done
exit $fail
