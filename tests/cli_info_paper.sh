#!/usr/bin/env bash
# cli_info_paper.sh ZEBRA FIXTURES SRC — `zebra info --json` of the paper's three configs gives
# the paper's KV-cache ratios (SPEC.md §7): 3.91%, 2.01%, 2.73% (to the paper's 2 decimals),
# and the exact numbers per token: 640 of 16384, 1152 of 57344, 1792 of 65536.
set -u
zebra=$1 src=$3
fail=0 n=0
check() {  # config kv_numbers teacher_numbers percent
  local out
  n=$((n + 1))
  if ! out=$("$zebra" info --json "$src/configs/$1"); then echo "FAIL: info $1"; fail=$((fail + 1)); return; fi
  local kv t r
  kv=$(echo "$out" | sed -n 's/.*"kv_numbers_per_token": \([0-9]*\).*/\1/p')
  t=$(echo "$out" | sed -n 's/.*"teacher_kv_numbers_per_token": \([0-9]*\).*/\1/p')
  r=$(echo "$out" | sed -n 's/.*"kv_cache_ratio": \([0-9.]*\).*/\1/p')
  # the paper prints the ratio in percent with 2 decimals: within half a unit of the last one
  if [ "$kv" != "$2" ] || [ "$t" != "$3" ] || ! awk -v r="$r" -v p="$4" 'BEGIN { d = 100 * r - p; exit !(d < 0.005 && d > -0.005) }'; then
    echo "FAIL: $1: kv $kv (want $2) teacher $t (want $3) ratio $r (want $4%)"; fail=$((fail + 1))
  else
    echo "ok: $1: $kv / $t = $(awk -v r="$r" 'BEGIN { printf "%.2f", 100 * r }')% (paper $4%)"
  fi
}
check zebra-1b.json 640 16384 3.91
check zebra-3b.json 1152 57344 2.01
check zebra-8b.json 1792 65536 2.73
echo "$((n - fail)) passed, $fail failed"
[ $fail = 0 ]
