#!/usr/bin/env bash
# (as run on 2026-11-29: the paths are that session's spare worktrees and binaries)
# CPU seconds of one `zebra train` run (demo-zebra, 40 steps): before the comm seam (f071899), before
# the backend seam (304693e), after (arch 6e1d770); interleaved, rotating order
cd /tmp/arch_bench/tr3
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
declare -A Z=([comm0]=/work/zb-arch-before-comm/build/zebra [be0]=/work/zb-arch-before/build/zebra [after]=/tmp/arch_bench/zebra-after-6e1d770)
orders=("comm0 be0 after" "be0 after comm0" "after comm0 be0")
for r in 1 2 3 4 5 6; do
  for w in ${orders[$((r % 3))]}; do
    rm -rf OUT
    /usr/bin/time -f "$w %U %S %e" -a -o cpu.txt nice ${Z[$w]} train --stage pretrain --config run.json > $w-$r.log 2>&1
  done
done
echo done >> cpu.txt
