#!/bin/bash
# cli_import.sh ZEBRA FIXTURES COMPARE — `zebra import` on both HF fixtures (the .h5 must hold
# every tensor bit-exactly, checked by zb_store_compare), then broken inputs: each must exit
# non-zero with one stderr line naming the file, and leave no output (nor temp file) behind.
set -u
. "$(dirname "$0")/cli_lib.sh"
Z=$1; FX=$(cd "$2" && pwd); CMP=$3
T=$(mktemp -d /tmp/zb_cli_import.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0; pass=0
ok()  { pass=$((pass+1)); [ -n "${ZB_TEST_VERBOSE:-}" ] && echo "PASS $*"; return 0; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }

for m in hf-llama-tiny hf-mla-tiny; do
  if "$Z" import "$FX/$m" -o "$T/$m.h5" >"$T/out" 2>"$T/err"; then ok "import $m"; else bad "import $m: $(cat "$T/err")"; fi
  grep -q "imported" "$T/out" && ok "summary $m" || bad "no summary for $m"
  if "$CMP" "$FX/$m" "$T/$m.h5" >"$T/cmp" 2>&1; then ok "compare $m"; else bad "compare $m: $(cat "$T/cmp")"; fi
  # re-import from the .h5 itself gives the same tensors
  if "$Z" import "$T/$m.h5" -o "$T/$m.again.h5" >/dev/null 2>"$T/err" && "$CMP" "$T/$m.h5" "$T/$m.again.h5" >/dev/null 2>&1
  then ok "h5 -> h5 $m"; else bad "h5 -> h5 $m: $(cat "$T/err")"; fi
done

# expect_fail NAME NEEDLE ARGS... : non-zero exit, one stderr line containing NEEDLE, no output left
expect_fail() {
  local name=$1 needle=$2; shift 2
  rm -f "$T"/out.h5*
  "$Z" import "$@" >/dev/null 2>"$T/err"; local rc=$?
  local lines; lines=$(err_file_lines "$T/err")
  if [ $rc -ne 0 ] && [ $rc -lt 128 ]; then ok "$name: exit $rc"; else bad "$name: exit $rc"; fi
  if [ "$lines" -eq 1 ]; then ok "$name: one line"; else bad "$name: $lines stderr lines: $(cat "$T/err")"; fi
  if grep -qF -- "$needle" "$T/err"; then ok "$name: names $needle"; else bad "$name: stderr lacks '$needle': $(cat "$T/err")"; fi
  if ls "$T"/out.h5* >/dev/null 2>&1; then bad "$name: output left behind: $(ls "$T"/out.h5*)"; else ok "$name: no output"; fi
  [ -n "${ZB_TEST_VERBOSE:-}" ] && echo "  $name -> $(cat "$T/err")"
  return 0
}

expect_fail "missing dir" "$T/no_such_dir" "$T/no_such_dir" -o "$T/out.h5"
expect_fail "no -o" "-o" "$FX/hf-llama-tiny"
expect_fail "unknown option" "--bogus" "$FX/hf-llama-tiny" -o "$T/out.h5" --bogus

# a model dir assembled from links to the fixture, with one thing broken
mkdir_llama() {
  rm -rf "$T/d"; mkdir "$T/d"
  for f in "$FX"/hf-llama-tiny/model-0000*-of-00003.safetensors "$FX/hf-llama-tiny/model.safetensors.index.json" \
           "$FX/hf-llama-tiny/config.json"; do ln -s "$f" "$T/d/"; done
}
mkdir_llama
rm "$T/d/config.json"; printf '{"model_type": "llama", "hidden_size": 64,' >"$T/d/config.json"
expect_fail "malformed config.json" "config.json" "$T/d" -o "$T/out.h5"

mkdir_llama
rm "$T/d/config.json"; sed 's/"hidden_size": 64/"hidden_size": "64"/' "$FX/hf-llama-tiny/config.json" >"$T/d/config.json"
expect_fail "config wrong type" "hidden_size" "$T/d" -o "$T/out.h5"

mkdir_llama
rm "$T/d/config.json"; sed 's/"num_hidden_layers": 3/"num_hidden_layers": 4/' "$FX/hf-llama-tiny/config.json" >"$T/d/config.json"
expect_fail "config implies a missing tensor" "model.layers.3.input_layernorm.weight" "$T/d" -o "$T/out.h5"

mkdir_llama
rm "$T/d/config.json"; sed 's/"intermediate_size": 160/"intermediate_size": 128/' "$FX/hf-llama-tiny/config.json" >"$T/d/config.json"
expect_fail "wrong shape" "expected shape [128, 64], found [160, 64]" "$T/d" -o "$T/out.h5"

mkdir_llama
rm "$T/d/model-00002-of-00003.safetensors"
head -c 50000 "$FX/hf-llama-tiny/model-00002-of-00003.safetensors" >"$T/d/model-00002-of-00003.safetensors"
expect_fail "truncated shard" "model-00002-of-00003.safetensors" "$T/d" -o "$T/out.h5"

mkdir_llama
rm "$T/d/model-00003-of-00003.safetensors"
expect_fail "missing shard" "model-00003-of-00003.safetensors" "$T/d" -o "$T/out.h5"

expect_fail "unwritable output" "/nonexistent-dir/out.h5" "$FX/hf-llama-tiny" -o /nonexistent-dir/out.h5
printf 'not hdf5' >"$T/fake.h5"
expect_fail "not an HDF5 input" "not an HDF5 file" "$T/fake.h5" -o "$T/out.h5"

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
