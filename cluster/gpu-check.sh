#!/usr/bin/env bash
# cluster/gpu-check.sh DEBS_DIR [OUT_DIR [BUILD_DIR]] — every GPU test, then the GPU benchmarks, on a fresh
# GPU node (nvcc, the CUDA libraries, mpirun; no OpenBLAS / HDF5 / cJSON / PCRE2 dev packages, no
# network): builds zebra with -DZB_CUDA=ON against the .deb files of cluster/debs.txt in DEBS_DIR
# (cluster/build-with-debs.sh), runs the ctest tests labelled gpu, cluster/bench_cuda (the
# ceilings and the kernels), `zebra bench --device cuda` when the build has it, and
# cluster/bench_torch.py (PyTorch + HF transformers on the same GPU, when python3 has torch),
# then prints one summary table. Logs go to OUT_DIR (default gpu-check-out; at most 8 files).
# BUILD_DIR: a tree already built with -DZB_CUDA=ON (e.g. on a Debian 12 machine with the same
# libraries, its ctest paths rewritten): used as it is when its binaries find their libraries
# (the .debs are then only unpacked for the loader), built here otherwise.
# About 6-8 minutes on one H200. Fixtures: ZB_FIXTURES (default ../shared/fixtures).
set -uo pipefail
cd "$(dirname "$0")/.."
debs=${1:?usage: cluster/gpu-check.sh DEBS_DIR [OUT_DIR]}
out=${2:-gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
fix=${ZB_FIXTURES:-$(pwd)/../shared/fixtures}
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start ))s] $*"; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}   # Debian 12's OpenBLAS misreads newer Xeons
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export NCCL_NVLS_ENABLE=0

{
  echo "== environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  mpirun --version 2>&1 | head -1
  cmake --version 2>&1 | head -1
  uname -r; nproc
} > "$out/log-build.txt" 2>&1

build=${3:-}
if [ -n "$build" ] && [ -x "$build/zebra" ]; then
  build=$(cd "$build" && pwd)
  # a tree packed by cluster/gpu-pack.sh: its ctest paths are placeholders
  for f in "$build/CTestTestfile.cmake" "$build/tests/CTestTestfile.cmake"; do
    [ -f "$f" ] && sed -i -e "s|@BUILD@|$build|g" -e "s|@SRC@|$(pwd)|g" -e "s|@FIX@|$fix|g" "$f"
  done
  debs_abs=$(cd "$debs" && pwd)
  mkdir -p "$debs_abs/root"
  for d in "$debs_abs"/*.deb; do dpkg -x "$d" "$debs_abs/root"; done
  lib=$debs_abs/root/usr/lib/x86_64-linux-gnu
  export LD_LIBRARY_PATH=$lib/openblas-openmp:$lib:$lib/hdf5/openmpi:${LD_LIBRARY_PATH:-}
  if ldd "$build/zebra" | grep -q "not found"; then
    ldd "$build/zebra" | grep "not found" >> "$out/log-build.txt"
    stamp "the binaries of $build miss libraries here: building"
    build=""
  else
    stamp "using the binaries of $build"
  fi
fi
if [ -z "$build" ]; then
  build=build-gpu
  stamp "building (cluster/build-with-debs.sh, -DZB_CUDA=ON)"
  env_line=$(bash cluster/build-with-debs.sh "$debs" build-gpu -DZB_CUDA=ON -DZB_FIXTURES="$fix" 2>>"$out/log-build.txt" | tail -1)
  eval "$env_line"
  if [ ! -x build-gpu/zebra ]; then
    echo "== build failed; the full output:" >> "$out/log-build.txt"
    cmake --build build-gpu -j"$(nproc)" >> "$out/log-build.txt" 2>&1
    stamp "BUILD FAILED"; tail -40 "$out/log-build.txt"; exit 1
  fi
  stamp "built"
fi

stamp "GPU tests (ctest -L gpu)"
ZB_TEST_VERBOSE=1 timeout 420 ctest --test-dir "$build" -L gpu -V --timeout 300 > "$out/log-tests.txt" 2>&1
stamp "tests done"

stamp "bench_cuda (ceilings, kernels)"
timeout 150 "$build/bench_cuda" --json "$out/bench_cuda.json" > "$out/log-bench.txt" 2>&1
if [ -f cluster/gpu-bench.sh ]; then
  stamp "zebra bench --device cuda (cluster/gpu-bench.sh)"
  timeout 240 bash cluster/gpu-bench.sh "$build/zebra" "$out" >> "$out/log-bench.txt" 2>&1
fi
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  stamp "bench_torch.py (PyTorch + HF transformers)"
  PYTHONUNBUFFERED=1 timeout 300 python3 cluster/bench_torch.py --json "$out/bench_torch.json" \
    > "$out/log-torch.txt" 2>&1
fi
stamp "done"

# ---- the summary table
echo
echo "== GPU tests"
printf "%-28s %-9s %-24s %s\n" test result checks seconds
grep -E "Test +#[0-9]+: " "$out/log-tests.txt" | while read -r line; do
  num=$(echo "$line" | sed -E 's/.*Test +#([0-9]+): .*/\1/')
  name=$(echo "$line" | sed -E 's/.*Test +#[0-9]+: ([^ ]+).*/\1/')
  res=$(echo "$line" | grep -oE "Passed|Failed|Skipped|Timeout|Not Run" | head -1)
  secs=$(echo "$line" | grep -oE "[0-9.]+ sec" | head -1)
  checks=$(grep -E "^$num: [0-9]+ passed, [0-9]+ failed" "$out/log-tests.txt" | tail -1 | sed "s/^$num: //")
  printf "%-28s %-9s %-24s %s\n" "$name" "${res:-?}" "${checks:-}" "$secs"
done
grep -E "MISMATCH|FAIL \[" "$out/log-tests.txt" | head -40
echo
echo "== zebra kernels and ceilings (cluster/bench_cuda)"
cat "$out/log-bench.txt" 2>/dev/null
if [ -f "$out/log-torch.txt" ]; then
  echo
  echo "== PyTorch + HF transformers (cluster/bench_torch.py)"
  grep -vE "^ +|Traceback|^\s*$" "$out/log-torch.txt" | head -30
fi
echo "total $(( $(date +%s) - t_start )) s"
