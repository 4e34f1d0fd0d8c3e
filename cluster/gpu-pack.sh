#!/usr/bin/env bash
# cluster/gpu-pack.sh BUILD_DIR DEST — carry a tree built with -DZB_CUDA=ON here (Debian 12 with the
# CUDA toolkit) to a bare GPU node that has the NVIDIA driver and the CUDA libraries but not
# OpenBLAS / HDF5 / OpenMPI / cJSON / PCRE2: copies
#   DEST/build     the driver, bench_cuda and the GPU tests (ctest label gpu) with their ctest
#                  files, absolute paths replaced by @BUILD@ / @SRC@ / @FIX@ (gpu-check.sh fills
#                  them in on the node);
#   DEST/root      every shared library they load except the C library, the driver, cuBLAS and
#                  NCCL (the node's: hundreds of MB), and OpenMPI's plugins, help files and
#                  orted, relocated with OPAL_PREFIX=DEST/root/usr;
#   DEST/fixtures  the fixtures (ZB_FIXTURES, default ../shared/fixtures);
#   DEST/src       cluster/, configs/, core/ and the tests' scripts (the benchmarks' model shapes,
#                  the end-to-end test's data).
# Then on the node: DEST/src/cluster/gpu-check.sh --packed DEST [OUT_DIR].
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bld=$(cd "$1" && pwd)
dest=$2
fix=$(cd "${ZB_FIXTURES:-$src/../shared/fixtures}" && pwd)
fix_cfg=$(grep -E "^ZB_FIXTURES:" "$bld/CMakeCache.txt" | cut -d= -f2-)
rm -rf "$dest/build" "$dest/fixtures" "$dest/root" "$dest/src"
mkdir -p "$dest/build/tests" "$dest/fixtures" "$dest/src"
cp -r "$src/cluster" "$src/configs" "$src/core" "$dest/src/"
mkdir -p "$dest/src/tests" && cp "$src"/tests/cli_*.sh "$src"/tests/*.json "$dest/src/tests/"   # (+ the test models)
cp "$bld/zebra" "$bld/bench_cuda" "$dest/build/"
# the GPU tests: their add_test / set_tests_properties lines and the executables they name
tests=$(grep -oE "^add_test\(([a-z0-9_]+)" "$bld/tests/CTestTestfile.cmake" | sed 's/add_test(//')
: > "$dest/build/tests/CTestTestfile.cmake"
for t in $tests; do
  grep -qE "set_tests_properties\($t PROPERTIES.*LABELS \"gpu\"" "$bld/tests/CTestTestfile.cmake" || continue
  grep -E "^(add_test|set_tests_properties)\($t " "$bld/tests/CTestTestfile.cmake" >> "$dest/build/tests/CTestTestfile.cmake"
  # the build's executables among its arguments (not bash or mpiexec)
  for exe in $(grep -E "^add_test\($t " "$bld/tests/CTestTestfile.cmake" | grep -oE "\"$bld/tests/[^\"]+\"" | tr -d '"'); do
    [ -x "$exe" ] && [ -f "$exe" ] && cp "$exe" "$dest/build/tests/"
  done
done
# mpiexec: the packed OpenMPI's (gpu-check.sh puts it first on PATH)
sed -i -E 's#"/[^"]*/(mpiexec|mpirun)"#"\1"#g' "$dest/build/tests/CTestTestfile.cmake"
[ -x "$bld/tests/zb_path" ] && cp "$bld/tests/zb_path" "$dest/build/tests/"   # cli_lib.sh's bound tool
printf 'subdirs("tests")\n' > "$dest/build/CTestTestfile.cmake"
sed -i -e "s|$fix_cfg|@FIX@|g" -e "s|$fix|@FIX@|g" -e "s|$bld|@BUILD@|g" -e "s|$src|@SRC@|g" \
    "$dest/build/tests/CTestTestfile.cmake"
cp -r "$fix"/. "$dest/fixtures/"

# the libraries: the closure of the binaries and of OpenMPI's plugins
lib=$dest/root/usr/lib/x86_64-linux-gnu
ompi=/usr/lib/x86_64-linux-gnu/openmpi
mkdir -p "$lib" "$dest/root/usr/bin" "$dest/root/usr/share"
cp -r "$ompi" "$lib/"
cp -r /usr/share/openmpi "$dest/root/usr/share/"
cp "$(readlink -f /usr/bin/orted)" "$dest/root/usr/bin/orted"
cp "$(readlink -f /usr/bin/mpirun)" "$dest/root/usr/bin/orterun"
ln -sf orterun "$dest/root/usr/bin/mpirun"
ln -sf orterun "$dest/root/usr/bin/mpiexec"
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libcuda\.|libcublas|libcublasLt|libnccl|libnvidia)'
libs=$( { ldd "$dest"/build/zebra "$dest"/build/bench_cuda "$dest"/build/tests/* /usr/bin/orted
          find "$ompi" -name "*.so" -exec ldd {} \; ; } 2>/dev/null |
        awk '$2 == "=>" && $3 ~ /^\// {print $1 "=" $3}' | sort -u || true)
for l in $libs; do
  name=${l%%=*}
  if [[ ! $name =~ $skip ]]; then cp -L "${l#*=}" "$lib/$name"; fi
done
du -sh "$dest"
