#!/usr/bin/env bash
# cluster/gpu-check.sh DEBS_DIR [OUT_DIR [BUILD_DIR]]
# cluster/gpu-check.sh --packed PACK_DIR [OUT_DIR]
# Every GPU test, then the GPU benchmarks, on a fresh GPU node (nvcc, the CUDA libraries; no
# OpenBLAS / HDF5 / cJSON / PCRE2 / OpenMPI dev packages, no network), and one summary table.
#  - DEBS_DIR: builds zebra with -DZB_CUDA=ON against the .deb files of cluster/debs.txt in
#    DEBS_DIR (cluster/build-with-debs.sh); BUILD_DIR: a tree already built with -DZB_CUDA=ON,
#    used as it is when its binaries find their libraries.
#  - --packed PACK_DIR: a tree made by cluster/gpu-pack.sh on a build machine (binaries, every
#    library they load but the driver and cuBLAS, OpenMPI relocated, the fixtures): nothing is
#    built on the node.
# Runs the ctest tests labelled gpu, cluster/bench_cuda (the ceilings and the kernels),
# cluster/gpu-bench.sh (zebra bench --device cuda: training, KD and decode) and
# cluster/bench_torch.py (PyTorch + HF transformers on the same GPU, when python3 has torch).
# Logs go to OUT_DIR (default gpu-check-out; at most 8 files). About 8 minutes on one H200.
# Fixtures: ZB_FIXTURES (default ../shared/fixtures, or PACK_DIR/fixtures).
set -uo pipefail
cd "$(dirname "$0")/.."
packed=""
if [ "${1:-}" = "--packed" ]; then packed=$(cd "${2:?usage: cluster/gpu-check.sh --packed PACK_DIR [OUT_DIR]}" && pwd); shift; fi
debs=${1:?usage: cluster/gpu-check.sh DEBS_DIR [OUT_DIR [BUILD_DIR]] | --packed PACK_DIR [OUT_DIR]}
out=${2:-gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -n "$packed" ]; then fix=${ZB_FIXTURES:-$packed/fixtures}; else fix=${ZB_FIXTURES:-$(pwd)/../shared/fixtures}; fi
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start ))s] $*"; }
# each stage's time limit: its own, or what is left of ZB_DEADLINE seconds (a lent node's limit)
lim() { local left=$(( ${ZB_DEADLINE:-100000} - ($(date +%s) - t_start) )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}   # Debian 12's OpenBLAS misreads newer Xeons
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export NCCL_NVLS_ENABLE=0
export PMIX_MCA_pcompress_base_silence_warning=1 PMIX_MCA_mca_base_component_show_load_errors=0

{
  echo "== environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  mpirun --version 2>&1 | head -1
  cmake --version 2>&1 | head -1
  uname -r; nproc
} > "$out/log-build.txt" 2>&1

build=${3:-}
if [ -n "$packed" ]; then
  # the packed libraries and OpenMPI (relocated), cuBLAS from the node: the toolkit's or PyTorch's
  build=$packed/build
  for f in "$build/CTestTestfile.cmake" "$build/tests/CTestTestfile.cmake"; do
    sed -i -e "s|@BUILD@|$build|g" -e "s|@SRC@|$(pwd)|g" -e "s|@FIX@|$fix|g" "$f"
  done
  root=$packed/root
  cublas=$(dirname "$( (ldconfig -p | awk '/libcublasLt\.so\.13 /{print $NF}';
                        find /usr/local/cuda*/ /usr/lib /opt -name 'libcublasLt.so.13*' 2>/dev/null) | head -1)")
  export OPAL_PREFIX=$root/usr PATH=$root/usr/bin:$PATH
  nccl=$(dirname "$( (ldconfig -p | awk '/libnccl\.so\.2 /{print $NF}';
                      find /usr/local/cuda*/ /usr/lib /opt -name 'libnccl.so.2*' 2>/dev/null) | head -1)")
  export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/openmpi/lib:$cublas:$nccl:${LD_LIBRARY_PATH:-}
  export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_mtl=^ofi,psm,psm2 OMPI_MCA_osc=^ucx
  echo "cuBLAS: $cublas; NCCL: $nccl" >> "$out/log-build.txt"
  ldd "$build/zebra" | grep "not found" >> "$out/log-build.txt"
  stamp "using the packed binaries of $packed"
elif [ -n "$build" ] && [ -x "$build/zebra" ]; then
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

# ZB_STAGES: which stages run (default all four)
stages=" ${ZB_STAGES:-tests bench_cuda zebra torch} "
on() { [[ $stages == *" $1 "* ]]; }
on tests && stamp "GPU tests (ctest -L gpu)"
on tests && ZB_TEST_VERBOSE=1 timeout "$(lim "${ZB_TEST_TIMEOUT:-360}")" ctest --test-dir "$build" -L gpu -V --timeout 300 > "$out/log-tests.txt" 2>&1
stamp "tests done"

on bench_cuda && stamp "bench_cuda (ceilings, kernels)"
on bench_cuda && timeout "$(lim 120)" "$build/bench_cuda" --json "$out/bench_cuda.json" > "$out/log-bench.txt" 2>&1
if on zebra && [ -f cluster/gpu-bench.sh ]; then
  stamp "zebra bench --device cuda (cluster/gpu-bench.sh)"
  timeout "$(lim "${ZB_BENCH_TIMEOUT:-300}")" bash cluster/gpu-bench.sh "$build/zebra" > "$out/log-zebra.txt" 2>&1
fi
if on torch && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  stamp "bench_torch.py (PyTorch + HF transformers)"
  PYTHONUNBUFFERED=1 timeout "$(lim "${ZB_TORCH_TIMEOUT:-240}")" python3 cluster/bench_torch.py --json "$out/bench_torch.json" \
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
if [ -f "$out/log-zebra.txt" ]; then
  echo
  echo "== zebra bench --device cuda (cluster/gpu-bench.sh)"
  head -c 9000 "$out/log-zebra.txt"
fi
if [ -f "$out/log-torch.txt" ]; then
  echo
  echo "== PyTorch + HF transformers (cluster/bench_torch.py)"
  grep -vE "^ +|Traceback|^\s*$" "$out/log-torch.txt" | head -30
fi
echo "total $(( $(date +%s) - t_start )) s"
