#!/usr/bin/env bash
# run-long.sh BUILD_DIR [SECONDS [FORMAT...]] — the long fuzz runs of docs/RELIABILITY.md: each
# harness in turn (one at a time, nice'd) for SECONDS (default 600) in libFuzzer's fork mode,
# so that a crash is recorded in BUILD_DIR/long-crashes/FORMAT/ and the run goes on. The corpus
# grows in BUILD_DIR/long-corpus/FORMAT (out of git); one line per harness in
# BUILD_DIR/long-summary.txt. Needs the seeds: ctest --test-dir BUILD_DIR -R fuzz_seeds.
set -u
build=$1 secs=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
src=$(cd "$(dirname "$0")" && pwd)
. "$src/limits.sh"
formats=${*:-config tokenizer safetensors shards hdf5 plan encode runcfg}
for f in $formats; do
  h=$build/tests/fuzz/fuzz_$f
  [ -x "$h" ] || { echo "$f: no harness $h" >> "$build/long-summary.txt"; continue; }
  mkdir -p "$build/long-corpus/$f" "$build/long-crashes/$f"
  dirs=("$build/long-corpus/$f")
  for d in "$build/fuzz-seeds/$f" "$src/seeds/$f" "$src/regress/$f"; do [ -d "$d" ] && dirs+=("$d"); done
  dict=()
  [ -f "$src/$f.dict" ] && dict=(-dict="$src/$f.dict")
  start=$(date +%s)
  ASAN_OPTIONS="$(fz_asan "$f")" LSAN_OPTIONS="suppressions=$src/lsan.supp" nice -n 15 "$h" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 \
    -ignore_ooms=1 -max_total_time="$secs" -timeout=10 $(fz_limits "$f") -artifact_prefix="$build/long-crashes/$f/" \
    "${dict[@]}" "${dirs[@]}" > "$build/long-$f.log" 2>&1
  echo "$f: rc=$? $(( $(date +%s) - start ))s inputs=$(grep -o '^#[0-9]*' "$build/long-$f.log" | tail -1) " \
       "found=$(ls "$build/long-crashes/$f" | wc -l)" >> "$build/long-summary.txt"
done
