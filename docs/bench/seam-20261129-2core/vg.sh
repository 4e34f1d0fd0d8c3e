#!/usr/bin/env bash
# (as run on 2026-11-29: the paths are that session's spare worktrees and binaries)
# instructions (valgrind callgrind's Ir) of `zebra generate` before/after, two decode lengths
cd /tmp/arch_bench
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
B=/work/zb-arch-before/build/zebra A=/tmp/arch_bench/zebra-after-6e1d770
for m in h t; do for n in 16 80; do for w in before after; do
  z=$B; [ $w = after ] && z=$A
  ir=$(nice valgrind --tool=callgrind --callgrind-out-file=/dev/null $z generate --model $m.h5 \
        --prompt-ids 1,2,3,4,5,6,7,8 --max-new $n --ignore-eos --quiet 2>&1 | sed -n 's/.*Collected : //p')
  echo "$m $n $w $ir" >> vg.txt
done; done; done
echo done >> vg.txt
