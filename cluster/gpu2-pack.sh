#!/usr/bin/env bash
# cluster/gpu2-pack.sh BUILD_DIR DEST.tar.xz — what cluster/gpu2-check.sh --packed needs, from a
# tree built here with -DZB_CUDA=ON (zebra, test_nccl, zb_path), for a GPU node that has the
# driver, the CUDA libraries and NCCL but not OpenBLAS / HDF5 / OpenMPI / cJSON / PCRE2:
#   build/   the three binaries;
#   root/    every shared library they load except the C library, the driver, cuBLAS and NCCL
#            (the node's own: hundreds of MB), and Open MPI's plugins, help files, orted and
#            mpirun, relocated with OPAL_PREFIX=root/usr.
# Compressed (xz), it stays well under the 64 MiB a lent machine's working tree may carry.
set -euo pipefail
bld=$(cd "$1" && pwd)
dest=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
p=$tmp/pack
mkdir -p "$p/build/tests" "$p/root/usr/bin" "$p/root/usr/share"
cp "$bld/zebra" "$p/build/"
for t in test_nccl zb_path; do cp "$bld/tests/$t" "$p/build/tests/"; done
lib=$p/root/usr/lib/x86_64-linux-gnu
ompi=/usr/lib/x86_64-linux-gnu/openmpi
mkdir -p "$lib"
cp -r "$ompi" "$lib/"
cp -r /usr/share/openmpi "$p/root/usr/share/"
cp "$(readlink -f /usr/bin/orted)" "$p/root/usr/bin/orted"
cp "$(readlink -f /usr/bin/mpirun)" "$p/root/usr/bin/orterun"
ln -sf orterun "$p/root/usr/bin/mpirun"
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libcuda\.|libcublas|libcublasLt|libnvidia|libnccl)'
libs=$( { ldd "$p"/build/zebra "$p"/build/tests/* /usr/bin/orted; find "$ompi" -name "*.so" -exec ldd {} \; ; } 2>/dev/null |
        awk '$2 == "=>" && $3 ~ /^\// {print $1 "=" $3}' | sort -u || true)
for l in $libs; do
  name=${l%%=*}
  [[ $name =~ $skip ]] || cp -L "${l#*=}" "$lib/$name"
done
tar -C "$tmp" -cJf "$dest" pack
ls -la "$dest"
