#!/usr/bin/env bash
# (as run on 2026-11-29: the paths are that session's spare worktrees and binaries)
# A/B: zebra bench of the commit before the backend merge (304693e) vs the arch branch, interleaved
set -u
B=/work/zb-arch-before/build/zebra A=/tmp/arch_bench/zebra-after-6e1d770 C=/work/zb-arch/configs
cd /tmp/arch_bench
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
for r in 1 2 3 4 5 6; do
  if [ $((r % 2)) = 1 ]; then order="before after"; else order="after before"; fi
  for w in $order; do
    z=$B; [ $w = after ] && z=$A
    nice $z bench --teacher $C/demo-teacher.json --hybrid $C/demo-hybrid.json --contexts 256,1024 --batches 1,4 \
      --decode-steps 32 --prefill-len 128 --md $w-$r.md > $w-$r.log 2>&1
  done
done
echo done > finished
