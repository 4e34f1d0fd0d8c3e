#!/usr/bin/env bash
# run-fuzz.sh HARNESS FORMAT SECONDS BUILD_DIR [extra libFuzzer flags]
# Fuzz one harness for SECONDS, starting from the seeds made from the fixtures
# (BUILD_DIR/fuzz-seeds/FORMAT), the hand-written ones (tests/fuzz/seeds/FORMAT) and the inputs
# that once crashed (tests/fuzz/regress/FORMAT). New inputs go to BUILD_DIR/fuzz-corpus/FORMAT
# (out of git); a crash is written to BUILD_DIR/fuzz-crashes/FORMAT/ and fails the run.
set -u
harness=$1 fmt=$2 secs=$3 build=$4
shift 4
src=$(cd "$(dirname "$0")" && pwd)
corpus=$build/fuzz-corpus/$fmt crashes=$build/fuzz-crashes/$fmt
mkdir -p "$corpus" "$crashes"
dirs=("$corpus")
for d in "$build/fuzz-seeds/$fmt" "$src/seeds/$fmt" "$src/regress/$fmt"; do
  [ -d "$d" ] && dirs+=("$d")
done
. "$src/limits.sh"
dict=()
[ -f "$src/$fmt.dict" ] && dict=(-dict="$src/$fmt.dict")
# -seed: CI fuzzes one fixed seed (ZB_FUZZ_SEED, default 1) from seeds that are the same bytes on
# every run, so a red run replays on any machine and a green commit stays green; random seeds and
# hours of fuzzing are tests/fuzz/run-long.sh's job (ZB_FUZZ_SEED=0: a random seed here too).
# -timeout: one input taking 10 s is a hang; the memory limits: limits.sh; leaks are errors (a
# parser that fails must free what it took).
asan=$(fz_asan "$fmt")
ASAN_OPTIONS="${asan}${ASAN_OPTIONS:+${asan:+:}$ASAN_OPTIONS}" \
LSAN_OPTIONS="suppressions=$src/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
"$harness" -seed="${ZB_FUZZ_SEED:-1}" -max_total_time="$secs" -timeout=10 $(fz_limits "$fmt") -print_final_stats=1 \
  -artifact_prefix="$crashes/" "${dict[@]}" "$@" "${dirs[@]}" 2>"$build/fuzz-$fmt.log"
rc=$?
tail -n 12 "$build/fuzz-$fmt.log"
if [ $rc -ne 0 ]; then
  echo "fuzz_$fmt: FAILED (exit $rc); full log: $build/fuzz-$fmt.log; input(s):"
  ls -1 "$crashes"
  echo "replay one with: $harness <file>; make it a regression test by adding it to tests/fuzz/regress/$fmt/"
  exit 1
fi
echo "fuzz_$fmt: no crash in ${secs}s"
