#!/usr/bin/env bash
# cluster/gpu-pack.sh BUILD_DIR DEST — carry a tree built with -DZB_CUDA=ON (on a machine with
# nvcc, e.g. Debian 12 with the CUDA toolkit) to a GPU node without building there: copies the
# driver, the GPU tests and bench_cuda with the ctest files, their absolute paths replaced by
# @BUILD@ / @SRC@ / @FIX@, which cluster/gpu-check.sh DEBS OUT DEST/build fills in on the node;
# and the fixtures (ZB_FIXTURES, default ../shared/fixtures) to DEST/fixtures.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bld=$(cd "$1" && pwd)
dest=$2
fix=$(cd "${ZB_FIXTURES:-$src/../shared/fixtures}" && pwd)
fix_cfg=$(grep -E "^ZB_FIXTURES:" "$bld/CMakeCache.txt" | cut -d= -f2-)
rm -rf "$dest/build" "$dest/fixtures"
mkdir -p "$dest/build/tests" "$dest/fixtures"
cp "$bld/zebra" "$bld/bench_cuda" "$dest/build/"
cp "$bld"/tests/test_cuda_* "$dest/build/tests/"
cp "$bld/CTestTestfile.cmake" "$dest/build/"
# only the GPU tests travel: keep their add_test / set_tests_properties lines
grep -E "^(add_test|set_tests_properties)\((test_cuda_)" "$bld/tests/CTestTestfile.cmake" > "$dest/build/tests/CTestTestfile.cmake"
for f in "$dest/build/CTestTestfile.cmake" "$dest/build/tests/CTestTestfile.cmake"; do
  sed -i -e "s|$fix_cfg|@FIX@|g" -e "s|$fix|@FIX@|g" -e "s|$bld|@BUILD@|g" -e "s|$src|@SRC@|g" "$f"
done
cp -r "$fix"/. "$dest/fixtures/"
du -sh "$dest"
