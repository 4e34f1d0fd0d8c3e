#!/usr/bin/env bash
# tests/check_layers.sh SRC_DIR — the layering rules of docs/ARCHITECTURE.md, checked on the
# sources so that they cannot rot:
#   core/      one rank: no mpi.h, no header of parallel/ or launch/ (other ranks only through
#              core/comm.h, which parallel/ fills);
#   core/*.c, parallel/, launch/  kernels only through core/backend.h: no header of the
#              backends' own directories (core/cpu/, core/cuda/) outside those directories,
#              but parallel/ may include core/cuda/cuda_common.h (the device layer: which GPU,
#              its stream) for the GPU communication, and launch/cmd_bench*.c cuda_ops.h for
#              the GPU's ceilings;
#   parallel/  no header of launch/;
#   sizes      no source file of core/, parallel/, launch/ over 800 lines, no function over 120
#              (tests/fnlen.awk measures them). core/cuda/ is left out of the size rule while its
#              kernels are being written (issue 17).
# One line per broken rule (file:line and the rule), exit 1 if any.
set -uo pipefail
src=${1:-$(dirname "$0")/..}
cd "$src" || exit 2
bad=0
fail() { echo "check_layers: $*"; bad=1; }

# headers of a directory (basenames), as an alternation for grep -E
hdrs() { find "$@" -maxdepth 1 \( -name '*.h' -o -name '*.cuh' \) -printf '%f\n' 2>/dev/null | sed 's/\./\\./g' | paste -sd'|'; }
inc_of() {   # inc_of PATTERN FILES... : lines including one of the headers
    local pat=$1; shift
    [ -n "$pat" ] && [ $# -gt 0 ] && grep -HnE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]([^\">]*/)?($pat)[\">]" "$@"
}
core_files=$(find core -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)
top_core=$(find core -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' \) | sort)
par_files=$(find parallel -type f \( -name '*.c' -o -name '*.h' \) | sort)
launch_files=$(find launch -type f \( -name '*.c' -o -name '*.h' \) | sort)
kernels=$(hdrs core/cpu core/cuda)

while IFS= read -r l; do [ -n "$l" ] && fail "$l: core/ includes MPI or a parallel/ / launch/ header (core/comm.h is the way out)"; done \
    < <(inc_of "mpi\.h|$(hdrs parallel launch)" $core_files)
# `zebra bench` measures the machine's own ceilings (cmd_bench*.c: the GPU's raw bf16 GEMM and
# its name, as OpenBLAS's sgemm for the CPU): the one place of launch/ that includes
# core/cuda/cuda_ops.h. (Where it should go: a backend entry for the ceilings; issue 17.)
launch_kern=$(for f in $launch_files; do case $f in launch/cmd_bench*.c) ;; *) echo "$f" ;; esac; done)
launch_bench=$(for f in $launch_files; do case $f in launch/cmd_bench*.c) echo "$f" ;; esac; done)
kernels_bench=$(echo "$kernels" | tr '|' '\n' | grep -vx 'cuda_ops\\.h' | paste -sd'|')
while IFS= read -r l; do [ -n "$l" ] && fail "$l: a backend's kernel header outside its backend (call the kernels through core/backend.h)"; done \
    < <(inc_of "$kernels" $top_core $launch_kern; inc_of "$kernels_bench" $launch_bench)
# parallel/'s GPU communication (comm_nccl.c, grid.c) drives this process's GPU, its choice and
# its stream, through the CUDA backend's device layer: the one backend header it may include
kernels_par=$(echo "$kernels" | tr '|' '\n' | grep -vx 'cuda_common\\.h' | paste -sd'|')
while IFS= read -r l; do [ -n "$l" ] && fail "$l: a backend's kernel header in parallel/ (only core/cuda/cuda_common.h, the device layer)"; done \
    < <(inc_of "$kernels_par" $par_files)
while IFS= read -r l; do [ -n "$l" ] && fail "$l: parallel/ includes a launch/ header"; done \
    < <(inc_of "$(hdrs launch)" $par_files)

sized=$(find core parallel launch -path core/cuda -prune -o -type f \( -name '*.c' -o -name '*.h' \) -print | sort)
for f in $sized; do
    n=$(wc -l < "$f")
    [ "$n" -gt 800 ] && fail "$f: $n lines (more than 800: split it along a seam)"
done
while read -r n where name; do
    [ "$n" -gt 120 ] && fail "$where: function $name is $n lines (more than 120)"
done < <(awk -f "$src/tests/fnlen.awk" $sized)

[ $bad = 0 ] && echo "check_layers: core/, parallel/, launch/ keep their include and size rules"
exit $bad
