#!/usr/bin/env bash
# cluster/build-with-debs.sh DEBS_DIR [BUILD_DIR [CMAKE_ARGS...]]
# Build zebra on a machine where the Debian -dev packages cannot be installed system-wide
# (e.g. a lent benchmark node): unpack the .deb files of cluster/debs.txt with `dpkg -x` into
# a private root and point pkg-config and the loader at it. Prints the env to source.
set -euo pipefail
debs=$(cd "$1" && pwd)
build=${2:-build}
shift $(( $# < 2 ? $# : 2 ))   # the rest goes to cmake (e.g. -DZB_CUDA=ON)
root=$debs/root
mkdir -p "$root"
for d in "$debs"/*.deb; do dpkg -x "$d" "$root"; done
lib=$root/usr/lib/x86_64-linux-gnu
# the unpacked .pc files say prefix=/usr and -I/usr/...: point them into the private root
for pc in "$lib"/pkgconfig/*.pc "$lib"/openblas-*/pkgconfig/*.pc; do
  [ -e "$pc" ] || continue
  sed -i -e "s|\([= ]-\?[IL]\?\)/usr/|\1$root/usr/|g" -e "s|=/usr\$|=$root/usr|" "$pc"
done
export PKG_CONFIG_PATH=$lib/pkgconfig:/usr/lib/x86_64-linux-gnu/pkgconfig:/usr/share/pkgconfig
# OpenBLAS's OpenMP build when its .deb is among them (cluster/debs.txt): CMake finds it there
export LD_LIBRARY_PATH=$lib/openblas-openmp:$lib:$lib/hdf5/openmpi:${LD_LIBRARY_PATH:-}
# unversioned .so links of the dev packages that point at absolute /usr paths: relink them
for l in $(find "$lib" -maxdepth 3 -type l -name '*.so'); do
  t=$(readlink "$l"); case "$t" in /*) ln -sf "$root$t" "$l";; esac
done
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
# ZB_TARGETS: only these targets (e.g. "zebra test_nccl"), else everything
cmake --build "$build" -j"$(nproc)" ${ZB_TARGETS:+--target $ZB_TARGETS} 2>&1 | grep -E "error|warning" >&2 || true
echo "export LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
