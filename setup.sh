#!/usr/bin/env bash
# setup.sh — install zebra's Debian dependencies, build, and run the embedded default job.
#   ./setup.sh              install + build + run the demo (no file from outside the repo)
#   ./setup.sh --deps-only  install the packages only
#   ./setup.sh --build-only install + build
#   ./setup.sh --cuda       install + build with the CUDA backend (needs nvcc and the CUDA
#                           libraries, e.g. /usr/local/cuda; no GPU needed to build)
set -euo pipefail
cd "$(dirname "$0")"

# libopenblas-openmp-dev: OpenBLAS on OpenMP's threads, one pool with our kernels (CMakeLists.txt)
# clang-14 + libclang-rt-14-dev: libFuzzer with ASan/UBSan for the fuzz harnesses (tests/fuzz)
PKGS="build-essential cmake pkg-config libopenmpi-dev openmpi-bin libopenblas-dev libopenblas-openmp-dev liblapacke-dev
      libhdf5-openmpi-dev libcjson-dev libpcre2-dev python3.11-doc
      clang-14 libclang-rt-14-dev"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
[ "${1:-}" = "--deps-only" ] && exit 0

CUDA_FLAG=""
[ "${1:-}" = "--cuda" ] && CUDA_FLAG="-DZB_CUDA=ON"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release $CUDA_FLAG >/dev/null
cmake --build build -j"$(nproc)"
[ "${1:-}" = "--build-only" ] || [ "${1:-}" = "--cuda" ] && exit 0

# Running as root (CI, containers) needs Open MPI's consent.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec bash cluster/demo.sh
