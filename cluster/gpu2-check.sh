#!/usr/bin/env bash
# cluster/gpu2-check.sh [--packed PACK.tar.xz | --build DIR | --debs DIR] [OUT_DIR] — the 2-GPU checks and benchmarks,
# one command, on a node with 2 GPUs (nvcc, the CUDA libraries, NCCL, mpirun; about 8 minutes):
#
#  1. build: --packed: binaries and libraries made by cluster/gpu2-pack.sh on a build machine
#     (Open MPI relocated; cuBLAS and NCCL are the node's); --build DIR when its zebra runs here
#     (a -DZB_CUDA=ON tree); else -DZB_CUDA=ON against the .deb files of cluster/debs.txt in the
#     --debs DIR (cluster/build-with-debs.sh; default .debs; needs MPI on the node), only the
#     targets used below;
#  2. test_nccl on 2 ranks: every entry of the GPU communication table (parallel/comm_nccl.h)
#     on device buffers for the TP, PP and DP groups, and the all-reduce's bus bandwidth;
#  3. equivalence, float32 (--precision f32), the method and tolerances of today's mpiexec tests
#     (tests/cli_train_parallel.sh): 20 pretrain steps of the hybrid of tests/tp-hybrid.json on
#     1 GPU (A: 4 rows) against TP=2, DP=2 (2 rows each, small gradient buckets: many overlapped
#     NCCL all-reduces on the side stream), DP=2 with ZeRO-1 (reduce-scatter + all-gatherv) and
#     PP=2 (1F1B over 4 micro-batches, activations GPU to GPU), each within the divergence of A
#     from A2 (1 GPU, each batch as 2 accumulated halves: another summation order) scaled by
#     tests/zb_path's ratio; the 1-GPU run also against the CPU's (same tolerance);
#     `zebra generate --device cuda --tp 2` (and --pp 2) against 1 GPU: the same greedy tokens,
#     on the trained hybrid and on random models of the Zebra-1B and Llama-3.2-1B shapes;
#  4. benchmarks: cluster/scaling.sh on the GPUs (the Zebra-1B hybrid cut to 8 layers, seq 2048,
#     4 rows per replica, bf16 products: weak DP scaling, 2 repeats; strong TP and PP), and
#     decode tokens/s at batch 1, 1 GPU vs --tp 2 (the Zebra-1B shape, random weights, bf16).
# Prints one summary (PASS / FAIL lines, the tables); logs in OUT_DIR (default gpu2-check-out).
# NCCL_NVLS_ENABLE=0 throughout (NVLink multicast must stay off on shared machines).
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
build="" debs=.debs packed=""
while [ $# -gt 0 ]; do
  case $1 in
    --packed) packed=$2; shift 2;;
    --build) build=$2; shift 2;;
    --debs) debs=$2; shift 2;;
    *) break;;
  esac
done
out=${1:-gpu2-check-out}
mkdir -p "$out"; out=$(cd "$out" && pwd)
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start ))s] $*"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} OPENBLAS_NUM_THREADS=1
MPIX="mpirun --allow-run-as-root -x NCCL_NVLS_ENABLE -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PATH"
MPI="$MPIX --bind-to none"
fail=0
summary=()
check() { if eval "$2"; then summary+=("PASS $1"); else summary+=("FAIL $1"); fail=1; fi; echo "${summary[-1]}"; }

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; nvidia-smi topo -m; mpirun --version | head -1; } \
  > "$out/log-machine.txt" 2>&1

# ---- 1. build
if [ -n "$packed" ]; then   # the packed binaries, their libraries and Open MPI (relocated)
  mkdir -p "$out/pack" && tar -C "$out/pack" -xJf "$packed"
  root=$out/pack/pack/root
  build=$out/pack/pack/build
  node_libs=$( (ldconfig -p | awk '/libcublasLt\.so\.13 |libnccl\.so\.2 /{print $NF}';
                find /usr/local/cuda*/ /usr/lib /opt -name 'libcublasLt.so.13*' 2>/dev/null;
                python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null) |
              xargs -r -n1 dirname | awk '!seen[$0]++' | paste -sd:)
  export OPAL_PREFIX=$root/usr PATH=$root/usr/bin:$PATH
  export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/openmpi/lib:$node_libs:${LD_LIBRARY_PATH:-}
  export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_mtl=^ofi,psm,psm2 OMPI_MCA_osc=^ucx
  { echo "node libraries: $node_libs"; ldd "$build/zebra" "$build/tests/test_nccl"; } >> "$out/log-build.txt" 2>&1
  debs=/nonexistent
fi
if [ -d "$debs" ]; then   # the libraries for the loader (and for building)
  d=$(cd "$debs" && pwd); mkdir -p "$d/root"
  for f in "$d"/*.deb; do dpkg -x "$f" "$d/root"; done
  lib=$d/root/usr/lib/x86_64-linux-gnu
  export LD_LIBRARY_PATH=$lib/openblas-openmp:$lib:$lib/hdf5/openmpi:${LD_LIBRARY_PATH:-}
fi
if [ -n "$build" ] && [ -x "$build/zebra" ] && ! ldd "$build/zebra" | grep -q "not found"; then
  build=$(cd "$build" && pwd); stamp "using $build"
else
  build=build-gpu2
  stamp "building $build (-DZB_CUDA=ON: zebra, test_nccl, zb_path)"
  env_line=$(ZB_TARGETS="zebra test_nccl zb_path" bash cluster/build-with-debs.sh "$debs" "$build" -DZB_CUDA=ON \
             2>>"$out/log-build.txt" | tail -1)
  eval "$env_line"
  [ -x "$build/zebra" ] || { stamp "BUILD FAILED"; tail -30 "$out/log-build.txt"; exit 1; }
  build=$(cd "$build" && pwd)
  grep -q "NCCL: /" "$build/CMakeCache.txt" 2>/dev/null || grep -q "ZB_NCCL_LIB:FILEPATH=/" "$build/CMakeCache.txt" \
    || echo "note: NCCL not found at configure time: device buffers are staged through the host" | tee -a "$out/log-build.txt"
  stamp "built"
fi
Z=$build/zebra
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
probe=$("$Z" train --stage pretrain --config /nonexistent.json --device cuda 2>&1 || true)
have_gpu_table=1
case $probe in *"no CUDA backend"*) have_gpu_table=0;; esac
ZP=$build/tests/zb_path; [ -x "$ZP" ] || ZP=$build/zb_path
TN=$build/tests/test_nccl; [ -x "$TN" ] || TN=$build/test_nccl

# ---- 2. the communication table
stamp "test_nccl (2 ranks)"
timeout 180 $MPI -n 2 "$TN" > "$out/log-nccl.txt" 2>&1
rc=$?
if [ $rc = 77 ]; then summary+=("NOT RUN test_nccl: $(grep -m1 SKIP "$out/log-nccl.txt")"); else
check "test_nccl: every entry on device buffers, TP / PP / DP groups ($(grep -cE '^(ok|PASS)' "$out/log-nccl.txt" || true) checks; rc $rc)" \
  "[ $rc = 0 ]"
fi

# ---- 3. equivalence
. tests/cli_lib.sh
W=$out/work; rm -rf "$W"; mkdir -p "$W"; cd "$W"
losses() { grep '"loss"' "$1" | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/'; }
"$Z" data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" -o shards --val-fraction 0.2 --seed 1 >/dev/null 2>&1
sed 's/"vocab_size": 256/"vocab_size": 264/' "$SRC/tests/tp-hybrid.json" > hyb.json
cat > base.json <<J
{"model": "hyb.json", "data": "shards", "seq_len": 32, "micro_batch": 4, "grad_accum": 1,
 "steps": 20, "lr": 3e-3, "min_lr": 3e-4, "warmup": 2, "log_every": 1, "eval_batches": 0, "seed": 3
J
run() {   # run NP OUT MICRO_BATCH EXTRA_JSON [zebra args]; env GA
  local np=$1 o=$2 mb=$3 extra=$4; shift 4
  printf '%s\n' "$(sed -e "s/\"micro_batch\": 4/\"micro_batch\": $mb/" -e "s/\"grad_accum\": 1/\"grad_accum\": ${GA:-1}/" \
    base.json)$extra, \"out\": \"$o\"}" > "$o.json"
  timeout 240 $MPI -n "$np" "$Z" train --stage pretrain --config "$o.json" "$@" >> "$o.log" 2>&1 || true
  losses "$o/train.jsonl" > "$o.txt" 2>/dev/null || true
}
same() {
  local m; m=$(loss_maxrel "$2" "$3")
  check "$1: max rel diff $m (<= $4)" "[ \"\$(wc -l < $2)\" = 20 ] && [ \"\$(wc -l < $3)\" = 20 ] && loss_within $2 $3 $4 1"
}
G=(--device cuda --precision f32)
# ZB_CHECK_DEVICE=cpu: the same checks on CPU ranks (to try this script on a machine without GPUs)
[ "${ZB_CHECK_DEVICE:-cuda}" = cpu ] && { G=(); have_gpu_table=1; SKIP_BENCH=1; }
stamp "equivalence: training (f32)"
if [ $have_gpu_table = 1 ]; then
  run 1 A 4 "" "${G[@]}"
  GA=2 run 1 A2 2 "" "${G[@]}"
  f=$(loss_maxrel A.txt A2.txt); s=$("$ZP" 32 128 hyb.json)
  FA=$(awk -v f="$f" -v s="$s" 'BEGIN { printf "%.3g", f * s }')
  check "1 GPU split run differs from 1 GPU by rounding ($f; x $s = $FA)" "awk 'BEGIN{exit !($f > 0 && $f < 1e-3 && $s > 0)}'"
  run 1 C 4 ""
  same "1 GPU == CPU (1 rank)" C.txt A.txt "$FA"
  run 2 T 4 "" "${G[@]}" --tp 2
  same "TP=2 on 2 GPUs == 1 GPU" A.txt T.txt "$FA"
  run 2 D 2 ', "bucket_mb": 0.002' "${G[@]}"
  same "DP=2 on 2 GPUs (0.002 MB buckets on the side stream) == 1 GPU" A.txt D.txt "$FA"
  run 2 DZ 2 ', "zero": true' "${G[@]}"
  same "DP=2 ZeRO-1 on 2 GPUs == 1 GPU" A.txt DZ.txt "$FA"
  GA=4 run 2 P 1 "" "${G[@]}" --pp 2
  same "PP=2 on 2 GPUs (1F1B, 4 micro-batches) == 1 GPU" A.txt P.txt "$FA"
  stamp "equivalence: generation (greedy tokens)"
  specs=("A/model.h5:tp" "A/model.h5:pp")
  if [ "${ZB_CHECK_DEVICE:-cuda}" != cpu ]; then   # the 1B shapes (random weights)
    "$Z" init --random --config "$SRC/configs/zebra-1b.json" -o z1b.h5 --seed 11 --dtype bf16 > /dev/null 2>&1
    "$Z" init --random --config "$SRC/configs/llama-3.2-1b.json" -o l1b.h5 --seed 12 --dtype bf16 > /dev/null 2>&1
    specs+=("z1b.h5:tp" "l1b.h5:tp")
  fi
  for spec in "${specs[@]}"; do
    m=${spec%%:*} k=${spec##*:}
    [ -f "$m" ] || { check "generate: $m exists" false; continue; }
    gen() { timeout 180 $MPI -n "$1" "$Z" generate --model "$m" --prompt-ids 1,2,3,4,5,6,7,8 --max-new 24 --ignore-eos \
            --quiet "${G[@]}" "${@:2}" 2>>gen.log; }
    one=$(gen 1); two=$(gen 2 --$k 2)
    check "generate --device cuda --$k 2 == 1 GPU, greedy, $(basename "$m"): '$two'" "[ -n \"$one\" ] && [ \"$one\" = \"$two\" ]"
    [ "$m" = A/model.h5 ] || continue   # sampled: on the small hybrid only (time)
    one=$(gen 1 --temperature 0.9 --top-k 20 --seed 5); two=$(gen 2 --$k 2 --temperature 0.9 --top-k 20 --seed 5)
    check "generate --device cuda --$k 2 == 1 GPU, sampled (T 0.9, top-k 20), $(basename "$m"): '$two'" \
      "[ -n \"$one\" ] && [ \"$one\" = \"$two\" ]"
  done
else
  summary+=("NOT RUN equivalence and benchmarks: this build has no CUDA backend table ($probe)")
fi
cd "$SRC"

# ---- 4. benchmarks
if [ -z "${SKIP_BENCH:-}" ] && [ $have_gpu_table = 1 ]; then
  stamp "benchmarks: scaling.sh on the GPUs"
  ZEBRA=$Z DEVICE=cuda PRECISION=bf16 CONFIG="$SRC/configs/zebra-1b.json" LAYERS=${BLAYERS:-8} D=2048 VOCAB=32768 SEQ=2048 \
    ROWS=${BROWS:-4} STEPS=${BSTEPS:-4} REPEAT=${BREPEAT:-2} MODES=weak LAYOUTS="1 dp2" OUT="$out/scaling-weak" \
    MPIEXEC="$MPIX" timeout 240 bash cluster/scaling.sh > "$out/log-scaling.txt" 2>&1
  ZEBRA=$Z DEVICE=cuda PRECISION=bf16 CONFIG="$SRC/configs/zebra-1b.json" LAYERS=${BLAYERS:-8} D=2048 VOCAB=32768 SEQ=2048 \
    ROWS=${BROWS:-4} STEPS=${BSTEPS:-4} REPEAT=1 MODES=strong LAYOUTS="1 tp2 pp2" OUT="$out/scaling-strong" \
    MPIEXEC="$MPIX" timeout 240 bash cluster/scaling.sh >> "$out/log-scaling.txt" 2>&1
  stamp "benchmarks: decode at batch 1, 1 GPU vs --tp 2"
  if [ -f "$out/work/z1b.h5" ]; then
    for np in 1 2; do
      a=(); [ $np = 2 ] && a=(--tp 2)
      timeout 120 $MPI -n $np "$Z" generate --model "$out/work/z1b.h5" --prompt-ids 1,2,3,4,5,6,7,8 --max-new 256 \
        --ignore-eos --quiet --device cuda --weights bf16 "${a[@]}" > /dev/null 2> "$out/log-decode-$np.txt"
      echo "decode 1B hybrid, batch 1, $np GPU(s): $(grep -o 'decode [0-9]* tokens [0-9.]* tok/s' "$out/log-decode-$np.txt" | tail -1)"
    done | tee "$out/decode.txt"
  fi
fi

echo
echo "== gpu2-check summary ($(head -2 "$out/log-machine.txt" | tail -1))"
printf '%s\n' "${summary[@]}"
grep -E "busbw|allreduce" "$out/log-nccl.txt" | head -6
for f in "$out"/scaling-*/scaling.md; do [ -f "$f" ] && sed -n '3,$p' "$f"; done
[ -f "$out/decode.txt" ] && cat "$out/decode.txt"
echo "total $(( $(date +%s) - t_start )) s; logs in $out"
exit $fail
