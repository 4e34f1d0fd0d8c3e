#!/usr/bin/env bash
# cli_bench — `zebra bench` end to end on the small demo teacher / hybrid: ceilings,
# one row per (model, batch, context) with positive speeds, the cache bytes per token of each
# model equal to what `zebra info` computes, a speed-up line per batch size, an SVG with both
# curves, the --breakdown table (parts of a decode step add up to no more than the step); f32
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
    --weights $w --md b-$w.md --svg b-$w.svg --breakdown > b-$w.log 2>&1 || { echo "FAIL bench $w: $(tail -1 b-$w.log)"; fail=1; continue; }
  rows=$(grep -c '^| \(teacher\|hybrid\) | [0-9.e+]*M |' b-$w.md || true)
  check "$w: 8 rows (2 models x 2 batches x 2 contexts): $rows" '[ "$rows" = 8 ]'
  check "$w: ceilings measured first ($(grep -o 'sgemm [0-9.]* GFLOP/s' b-$w.md), $(grep -o 'read bandwidth [0-9.]* GB/s' b-$w.md))" \
    'grep -q "sgemm [0-9.]* GFLOP/s" b-$w.md && grep -q "read bandwidth [0-9.]* GB/s" b-$w.md'
  # columns: model | params | cache B/token | batch | context | prefill | % | decode tok/s | GB/s | %
  check "$w: cache bytes per token == zebra info (teacher $tb, hybrid $hb)" \
    "awk -F'|' '/^\| teacher \| [0-9.e+]*M \|/ { if (\$4+0 != $tb) bad = 1 } /^\| hybrid \| [0-9.e+]*M \|/ { if (\$4+0 != $hb) bad = 1 } END { exit bad }' b-$w.md"
  check "$w: every decode and prefill speed > 0" \
    "awk -F'|' '/^\| (teacher|hybrid) \| [0-9.e+]*M \|/ { if (!(\$7+0 > 0 && \$9+0 > 0)) bad = 1 } END { exit bad }' b-$w.md"
  check "$w: a speed-up line per batch and an SVG with two curves" \
    '[ "$(grep -c "hybrid / teacher decode speed-up (batch [13])" b-$w.md)" = 2 ] && [ "$(grep -c "<polyline" b-$w.svg)" -ge 2 ]'
  # breakdown rows: model | batch | context | 7 parts | total; a step's ms = 1000 * batch / tok/s
  awk -F'|' '/^\| (teacher|hybrid) \| [0-9.e+]*M \|/ { step[$2 $5 $6] = 1000 * $5 / $9 }
             /^\| (teacher|hybrid) \| [0-9]+ \| [0-9]+ \|/ { n++; k = $2 "" $3 "" $4; t = $12 + 0
               if (!(t > 0 && t <= 1.02 * step[k] + 0.01)) { bad = 1; print "part total", t, "step", step[k] } }
             END { print n; exit bad || n != 8 }' b-$w.md > parts-$w.txt 2>&1 && ok=1 || ok=0
  check "$w: breakdown: 8 rows, each total > 0 and <= the step's time ($(tr '\n' ' ' < parts-$w.txt))" '[ $ok = 1 ]'
  # prefill rows: "teacher prefill" | batch | context | parts | total <= the prefill's ms (batch x 8 tokens)
  awk -F'|' '/^\| (teacher|hybrid) \| [0-9.e+]*M \|/ { pre[$2 $5 $6] = 1000 * $5 * 8 / $7 }
             /^\| (teacher|hybrid) prefill \| [0-9]+ \| [0-9]+ \|/ { n++; k = $2; sub(/ prefill /, " ", k); k = k $3 $4
               t = $12 + 0; if (!(t > 0 && t <= 1.02 * pre[k] + 0.01)) { bad = 1; print "part total", t, "prefill", pre[k] } }
             END { print n; exit bad || n != 8 }' b-$w.md > pre-$w.txt 2>&1 && ok=1 || ok=0
  check "$w: prefill breakdown: 8 rows, each total > 0 and <= the prefill's time ($(tr '\n' ' ' < pre-$w.txt))" '[ $ok = 1 ]'
done
exit $fail
