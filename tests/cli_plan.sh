#!/usr/bin/env bash
# cli_plan.sh ZEBRA FIXTURES SRC — `zebra plan` (the dry run of a parallel job, cluster/launch.sh
# --dry-run): the grid's arithmetic (TP fastest, then PP, then DP; node = rank / per-node) and
# the splits against what the shards hold (heads and vocabulary rows divided by --tp, the
# pipeline cut the cost model makes), on configs/tiny-zebra.json; --json parses; a layout that
# does not divide fails with one line and a non-zero status, starting nothing.
set -u
zebra=$1 src=$3
. "$(dirname "$0")/cli_lib.sh"
fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
cfg=$src/configs/tiny-zebra.json
out=$("$zebra" plan "$cfg" --ranks 8 --tp 2 --pp 2 --per-node 4 2>&1)
echo "$out"
row() { printf '%s\n' "$out" | awk -v r="$1" '$1 == r'; }
# rank 5 = (dp 1, pp 0, tp 1) on node 1, local rank 1
check "rank 5 coordinates" '[ "$(row 5 | awk "{print \$2, \$3, \$4 \$5 \$6}")" = "1 1 (1,0,1)" ]'
# rank 3 = (dp 0, pp 1, tp 1): the last stage, the upper half of the vocabulary
V=$(python3 -c "import json; print(json.load(open('$cfg'))['vocab_size'])")
check "rank 3 vocabulary rows" 'row 3 | grep -q " $((V / 2))-$((V - 1))/$V (head)"'
check "two stages cover the layers" '[ "$(row 0 | awk "{print \$7}")" != "$(row 2 | awk "{print \$7}")" ]'
L=$(python3 -c "import json; print(json.load(open('$cfg'))['num_hidden_layers'])")
check "last stage ends at layer $L" 'row 2 | grep -q ",$L)"'
j=$("$zebra" plan "$cfg" --ranks 4 --tp 2 --json 2>&1)
check "--json parses, 4 ranks" '[ "$(printf "%s" "$j" | python3 -c "import json,sys; print(len(json.load(sys.stdin)[\"ranks\"]))")" = 4 ]'
err=$("$zebra" plan "$cfg" --ranks 6 --tp 4 2>&1); rc=$?
check "6 ranks at --tp 4 refused ($err)" '[ $rc != 0 ] && [ "$(err_lines "$err")" = 1 ] && printf "%s" "$err" | grep -q "not divisible"'
err=$("$zebra" plan "$cfg" --ranks 64 --pp 64 2>&1); rc=$?
check "more stages than layers refused" '[ $rc != 0 ] && printf "%s" "$err" | grep -q "layers"'
exit $fail
