#!/usr/bin/env bash
# cluster/gpu-bench.sh ZEBRA — issue 17's benchmarks through `zebra bench --device cuda` on one
# GPU (cluster/gpu-check.sh runs it after the GPU tests; docs/BENCHMARKS.md records the figures):
#   training step, bf16, seq 2048 x 8 rows: the Llama-3.2-1B teacher shape and Zebra-1B;
#   KD step: Llama-3.1-8B-shaped teacher forward + Zebra-1B forward / backward;
#   decode, bf16 weights and caches: Llama-3.1-8B vs Zebra-8B at batch 1 and 48, 8k context
#   (greedy: the argmax on the device; batch 48 again with --logits, the sampling path's copy of
#   the logits to the host), and the largest batch each fits at 32k.
# Models are the configs with synthetic weights (speed does not depend on the values).
# ZB_BENCH_STEPS (default 3) timed training steps; each command under its own timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
z=${1:?usage: cluster/gpu-bench.sh ZEBRA}
steps=${ZB_BENCH_STEPS:-3}
run() {
  local limit=$1; shift
  echo "== zebra $*"
  timeout "$limit" "$z" "$@" 2>&1
  echo "rc=$?"
}
# the training steps' ms by part (as many steps again, each part synchronised) unless ZB_BENCH_BREAKDOWN=0
bd=(); [ "${ZB_BENCH_BREAKDOWN:-1}" != 0 ] && bd=(--breakdown)
# ZB_BENCH_QUICK=1: the batch 1 / 48 decode run only (a short lease)
quick=${ZB_BENCH_QUICK:-0}
[ "$quick" = 1 ] || run 90 bench --device cuda --train configs/llama-3.2-1b.json --batch 8 --seq 2048 --steps "$steps" "${bd[@]}"
[ "$quick" = 1 ] || run 90 bench --device cuda --train configs/zebra-1b.json --batch 8 --seq 2048 --steps "$steps" "${bd[@]}"
# ZB_BENCH_FLASH_OTHER=old (or new): the teacher shape again on those flash-attention kernels
# (ZB_FLASH: old = cuda_flash.cu, new = cuda_flash2.cu, the default: ZB_FLASH_DEFAULT in
# core/cuda/cuda_flash.cu); not run unless asked
if [ "$quick" != 1 ] && [ "${ZB_BENCH_FLASH_OTHER:-0}" != 0 ]; then
  echo "== ZB_FLASH=$ZB_BENCH_FLASH_OTHER"
  ZB_FLASH=$ZB_BENCH_FLASH_OTHER run 90 bench --device cuda --train configs/llama-3.2-1b.json --batch 8 --seq 2048 --steps "$steps" "${bd[@]}"
fi
# the Mamba2 mixer's path before issue 17's speed work (float32 projections, the SSD backward on the
# CUDA cores), side by side with the run above while the new one is proven (ZB_BENCH_SSD_OLD=0 skips)
[ "$quick" = 1 ] || [ "${ZB_BENCH_SSD_OLD:-1}" = 0 ] || ZB_SSD=old run 90 bench --device cuda --train configs/zebra-1b.json --batch 8 --seq 2048 --steps 2
# KD at 8 rows: the teacher (bf16 weights, 16 GB) runs an inference forward (one layer's buffers) and
# its logits are made 2k rows at a time inside the loss, so the student's activations set the memory
# (printed by the run). ZB_KD_TEACHER=train: the old training forward (2 rows fit).
# (if 8 rows do not fit on the GPU at hand, 4)
if [ "$quick" != 1 ]; then
  for kb in 8 4; do
    out=$(run 150 bench --device cuda --train configs/zebra-1b.json --kd configs/llama-3.1-8b.json --batch "$kb" --seq 2048 --steps "$steps" "${bd[@]}")
    echo "$out"
    case "$out" in *"rc=0") break ;; esac
  done
fi
run 150 bench --device cuda --weights bf16 --teacher configs/llama-3.1-8b.json --hybrid configs/zebra-8b.json \
  --batches 1,48 --contexts 8192 --decode-steps 16 --prefill-len 512
# the hybrid's batch-1 and 48 decode with the decode paths of 2026-11-30 switched back (the wmma MLA
# kernel, a float32 SSM state, cublasGemmEx's own algorithms, MLA's absorbed products per head of a
# group, the separate small kernels of the decode step, GEMVs without PDL): what they gained, in the
# same run
echo "== (ZB_MLA_DECODE=wmma ZB_M2_STATE=f32 ZB_CUDA_GEMM_TUNE=0 ZB_MLA_ABSORB=loop ZB_DEC_FUSE=0 ZB_DEC_PDL=0)"
ZB_MLA_DECODE=wmma ZB_M2_STATE=f32 ZB_CUDA_GEMM_TUNE=0 ZB_MLA_ABSORB=loop ZB_DEC_FUSE=0 ZB_DEC_PDL=0 \
  run 90 bench --device cuda --weights bf16 --hybrid configs/zebra-8b.json \
  --batches 1,48 --contexts 8192 --decode-steps 16 --prefill-len 512
# the teacher's batch-1 decode with the decode kernels launched plainly (no programmatic dependent
# launch), beside the default run above
echo "== (ZB_DEC_PDL=0)"
ZB_DEC_PDL=0 run 60 bench --device cuda --weights bf16 --teacher configs/llama-3.1-8b.json \
  --batches 1 --contexts 8192 --decode-steps 16 --prefill-len 512
[ "$quick" = 1 ] || run 90 bench --device cuda --weights bf16 --teacher configs/llama-3.1-8b.json --hybrid configs/zebra-8b.json --fit 32768
# the same batch-48 decode with every row's logits copied to the host each step (the sampling path;
# the run above is greedy: the argmax on the device, B ids back)
[ "$quick" = 1 ] || run 120 bench --device cuda --weights bf16 --teacher configs/llama-3.1-8b.json --hybrid configs/zebra-8b.json \
  --batches 48 --contexts 8192 --decode-steps 16 --prefill-len 512 --logits
if [ "${ZB_BENCH_BREAKDOWN:-1}" != 0 ]; then   # decode ms and GB/s per step, the prefill's ms, by part (synchronised after each part)
  run 120 bench --device cuda --weights bf16 --teacher configs/llama-3.1-8b.json --hybrid configs/zebra-8b.json \
    --batches 1,48 --contexts 8192 --decode-steps 4 --prefill-len 512 --breakdown
fi
