#!/usr/bin/env bash
# cluster/gpu2-check.sh [--packed PACK.tar.xz | --build DIR | --debs DIR] [OUT_DIR] — the 2-GPU checks and benchmarks,
# one command, on a node with 2 GPUs (nvcc, the CUDA libraries, NCCL, mpirun). Everything runs
# within ZB_DEADLINE seconds (default 370): every step has a hard `timeout`, the steps come in
# the order of their importance, and a step that would not fit in what is left is reported as
# NOT RUN (time) instead of started:
#
#  1. build: --packed: binaries and libraries made by cluster/gpu2-pack.sh on a build machine
#     (Open MPI and OpenBLAS relocated; cuBLAS and NCCL are the node's); --build DIR when its
#     zebra runs here (a -DZB_CUDA=ON tree); else -DZB_CUDA=ON against the .deb files of
#     cluster/debs.txt in the --debs DIR (cluster/build-with-debs.sh; default .debs);
#  2. test_nccl on 2 ranks: every entry of the GPU communication table (parallel/comm_nccl.h)
#     on device buffers for the TP, PP and DP groups, and the all-reduce's bus bandwidth; it
#     prints each step as it enters it and stops on a step that hangs (30 s), naming it;
#     then the 8B shapes (Zebra-8B, Llama-3.1-8B; synthetic bf16 weights, the same model on
#     each layout): `generate --device cuda --tp 2` == 1 GPU, greedy tokens, at batch 1 (128
#     new tokens) and batch 8 (32 each), and their decode tokens/s, 1 GPU vs --tp 2;
#  3. generation: `zebra generate --device cuda --tp 2` (and --pp 2) against 1 GPU, the same
#     greedy tokens (f32), on a small hybrid trained here (20 steps, 1 GPU) and on random models
#     of the Zebra-1B and Llama-3.2-1B shapes cut to 2 layers (full width, heads and vocabulary);
#  4. equivalence, float32 (--precision f32), the method and tolerances of today's mpiexec tests
#     (tests/cli_train_parallel.sh): 20 pretrain steps of the hybrid of tests/tp-hybrid.json on
#     1 GPU (A: 4 rows) against TP=2 (the vocabulary-parallel loss on the GPUs) and PP=2 (1F1B
#     over 4 micro-batches), each within the divergence of A from A2 (1 GPU, each batch as 2
#     accumulated halves) scaled by tests/zb_path's ratio;
#     meanwhile (3 and 4 pinned to the other cores): CPU DP weak scaling to 16 ranks
#     (cluster/scaling.sh, one core each, layouts 1 dp2 dp4 dp8 dp16) on 16 physical cores, when
#     there are >= 24 (else alone, after 5, one CPU per core; ZB_CPU16=0 skips it);
#  5. benchmarks on the otherwise idle machine, median and spread over interleaved repeats:
#     a second repeat of the Zebra-8B decode at batch 1, 1 GPU vs --tp 2; weak DP scaling of
#     the Zebra-1B hybrid's training step (cut to 8 layers, vocabulary 32768, seq 2048, 4 rows
#     per replica, bf16 products), cluster/scaling.sh;
#  6. if time is left: DP=2 (small buckets on the side stream), DP=2 ZeRO-1 and 1 GPU == CPU;
#     strong TP and PP scaling of the training step.
# ZB_G2_CPU_ONLY=1: after 1, only the CPU DP weak scaling to 16 ranks, alone and one rank per
# core (see its section). ZB_G2_EQ_ONLY=1: only 2 and 4. ZB_G2_ZERO_ONLY=1: after 1, only the
# weak DP scaling with and without ZeRO-1 (see its section).
# Prints one summary (PASS / FAIL / NOT RUN lines, the tables); logs in OUT_DIR (default
# gpu2-check-out). NCCL_NVLS_ENABLE=0 throughout (NVLink multicast must stay off).
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
DEADLINE=${ZB_DEADLINE:-370}
left() { echo $(( DEADLINE - ($(date +%s) - t_start) )); }
# lim N: a step's time limit, N or what is left; fits N: is there N seconds left
lim() { local l; l=$(left); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
fits() { [ "$(left)" -ge "$1" ]; }
notrun() { summary+=("NOT RUN $1 (time: $(left) s left)"); echo "${summary[-1]}"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export ZB_TP_ALLREDUCE=${ZB_TP_ALLREDUCE:-nccl}   # p2p: the TP decode's small sums through peer memory
export ZB_TP_FUSED=${ZB_TP_FUSED:-1}   # 0: the TP decode's sums by NCCL, then add_rmsnorm (default: fused, through peer memory)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} OPENBLAS_NUM_THREADS=1
MPIX="mpirun --allow-run-as-root -x NCCL_NVLS_ENABLE -x ZB_TP_ALLREDUCE -x ZB_TP_FUSED -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PATH"
MPI="$MPIX --bind-to none"
fail=0
summary=()
check() {   # check WHAT CONDITION: a PASS / FAIL line; the status of the condition
  if eval "$2"; then summary+=("PASS $1"); echo "${summary[-1]}"; return 0; fi
  summary+=("FAIL $1"); fail=1; echo "${summary[-1]}"; return 1
}

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; nvidia-smi topo -m; mpirun --version | head -1;
  lscpu | grep -E '^(Model name|Socket|Core|Thread|CPU\(s\)|NUMA node)'; } > "$out/log-machine.txt" 2>&1
# tail LOG: the end of a failing step's log, in the summary's stream (the logs may not come back)
tail_of() { [ -f "$1" ] && { echo "  --- tail of $(basename "$1")"; grep -v '^\s*$' "$1" | tail -${2:-6} | cut -c1-240 | sed 's/^/  | /'; }; }

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

# scaled OUT_DIR: its tables, also when the harness was stopped by its time limit
scaled() {
  [ -s "$1/scaling.md" ] || { [ -s "$1/runs.jsonl" ] && AGGREGATE_ONLY=1 OUT="$1" WORKDIR="$1/work" ZEBRA=/bin/true \
    timeout 30 bash cluster/scaling.sh > /dev/null 2>&1; }
  [ -s "$1/scaling.md" ]
}
decode_md() {   # decode.jsonl -> decode.md: median and spread per model, batch and GPU count
  python3 - "$out/decode.jsonl" > "$out/decode.md" <<'PY'
import json, statistics as st, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print("| model (synthetic bf16 weights) | batch | GPUs | runs | decode tok/s (median) | spread (min..max) | speed-up vs 1 GPU |")
print("|---|---|---|---|---|---|---|")
for m, b in dict.fromkeys((r["model"], r.get("batch", 1)) for r in rs):
    med = {}
    for g in (1, 2):
        v = [r["decode_tps"] for r in rs if r["model"] == m and r.get("batch", 1) == b and r["gpus"] == g]
        if not v: continue
        med[g] = st.median(v)
        if g == 2 and 1 not in med:   # a variant of a model ("zebra-8b+p2p"): against its 1 GPU
            v1 = [r["decode_tps"] for r in rs if r["model"] == m.split("+")[0] and r.get("batch", 1) == b and r["gpus"] == 1]
            if v1: med[1] = st.median(v1)
        print("| %s | %d | %d | %d | %.1f | %.1f..%.1f | %s |" % (m, b, g, len(v), med[g], min(v), max(v),
              "%.2fx" % (med[g] / med[1]) if g == 2 and 1 in med else "1.00x" if g == 1 else "—"))
PY
}

# ---- ZB_G2_ZERO_ONLY=1: the DP paths' float32 equivalence on the GPUs (the tied hybrid: DP=2,
# DP=2 on the paths before, ZeRO-1, its gather either way; ~45 s), then the weak DP scaling of
# step 5 with ZeRO-1 beside it, on the otherwise idle GPUs (ZB_DEADLINE, default 230 s): layouts ZB_G2_ZERO_LAYOUTS (default 1, dp2,
# dp2:old = dp2 on the DP paths before S6 (ZB_DP_MEAN=0 ZB_DP_SPARSE_EMBED=0 ZB_DP_MLP_EARLY=0),
# dp2z = ZeRO-1), 3 interleaved repeats of 6 steps (ZB_G2_ZERO_REPEAT), the DP split as the
# device ran it; then, if time is left, dp2z with ZB_ZERO_REDUCE=after. Prints the tables.
if [ -n "${ZB_G2_ZERO_ONLY:-}" ]; then
  DEADLINE=${ZB_DEADLINE:-230}
  zscale() {   # zscale OUT LAYOUTS LIMIT [VAR=VALUE...]
    local o=$1 lays=$2 t=$3; shift 3
    env ZEBRA=$Z DEVICE=cuda PRECISION=bf16 CONFIG="$SRC/configs/zebra-1b.json" LAYERS=${BLAYERS:-8} D=2048 \
      VOCAB=32768 SEQ=2048 ROWS=${BROWS:-4} STEPS=${BSTEPS:-6} REPEAT=${ZB_G2_ZERO_REPEAT:-3} MODES=weak LAYOUTS="$lays" \
      ENV_old="ZB_DP_MEAN=0 ZB_DP_SPARSE_EMBED=0 ZB_DP_MLP_EARLY=0" "$@" \
      OUT="$out/$o" MPIEXEC="$MPIX" timeout -k 5 "$(lim "$t")" bash cluster/scaling.sh >> "$out/log-scaling.txt" 2>&1
    if scaled "$out/$o"; then echo; echo "$o:"; sed -n '3,$p' "$out/$o/scaling.md"
    else echo "FAIL $o: no table"; tail_of "$out/log-scaling.txt" 12; fi
  }
  # first (~45 s) the DP paths' float32 equivalence on the GPUs: the tied hybrid of
  # tests/tp-hybrid.json, 20 steps of 4 x 32 tokens, each DP layout against 1 GPU within the
  # floor of tests/cli_train_parallel.sh (1 GPU against its split run x tests/zb_path's ratio)
  . tests/cli_lib.sh
  if [ ! -f "$SRC/tests/tp-hybrid.json" ]; then notrun "the DP float32 equivalence (no tests/tp-hybrid.json in this tree)"
  else ( W=$out/work-dp-eq; rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
    dev=(--device cuda --precision f32); [ "${ZB_CHECK_DEVICE:-cuda}" = cpu ] && dev=()
    "$Z" data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" -o shards --val-fraction 0.2 --seed 1 >/dev/null 2>&1
    sed -e 's/"vocab_size": 256/"vocab_size": 264/' -e 's/"tie_word_embeddings": false/"tie_word_embeddings": true/' \
      "$SRC/tests/tp-hybrid.json" > tied.json
    printf '%s\n' '{"model": "tied.json", "data": "shards", "seq_len": 32, "micro_batch": 4, "grad_accum": 1,' \
      ' "steps": 20, "lr": 3e-3, "min_lr": 3e-4, "warmup": 2, "log_every": 1, "eval_batches": 0, "seed": 3' > base.json
    dq() {   # dq NP OUT MICRO_BATCH EXTRA_JSON [VAR=VALUE...]: 20 steps, the env also to every rank
      local np=$1 o=$2 mb=$3 extra=$4 mx=() v; shift 4
      for v in "$@"; do mx+=(-x "${v%%=*}"); done
      printf '%s\n' "$(sed -e "s/\"micro_batch\": 4/\"micro_batch\": $mb/" -e "s/\"grad_accum\": 1/\"grad_accum\": ${GA:-1}/" \
        base.json)$extra, \"out\": \"$o\"}" > "$o.json"
      env "$@" timeout -k 5 "$(lim 40)" $MPIX "${mx[@]}" --bind-to none -n "$np" "$Z" train --stage pretrain --config "$o.json" \
        "${dev[@]}" > "$o.log" 2>&1
      grep '"loss"' "$o/train.jsonl" 2>/dev/null | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/' > "$o.txt"
      [ "$(wc -l < "$o.txt")" = 20 ] || tail_of "$o.log"
    }
    sq() { local m; m=$(loss_maxrel "$2" "$3"); check "$1: max rel diff $m (<= $4)" "[ \"\$(wc -l < $3)\" = 20 ] && loss_within $2 $3 $4 1"; }
    dq 1 A 4 ""; GA=2 dq 1 A2 2 ""
    f=$(loss_maxrel A.txt A2.txt); sc=$("$ZP" 32 128 tied.json); FA=$(awk -v f="$f" -v s="$sc" 'BEGIN { printf "%.3g", f * s }')
    check "tied hybrid, 1 GPU split run differs from 1 GPU by rounding ($f; x $sc = $FA)" "awk 'BEGIN{exit !($f > 0 && $f < 1e-3 && $sc > 0)}'"
    dq 2 D 2 ', "bucket_mb": 0.002'
    sq "DP=2 (the embedding's token rows apart, the tied head during the blocks, MLP buckets early, ncclAvg) == 1 GPU" A.txt D.txt "$FA"
    dq 2 DO 2 ', "bucket_mb": 0.002' ZB_DP_SPARSE_EMBED=0 ZB_DP_MEAN=0 ZB_DP_MLP_EARLY=0
    sq "DP=2 on the paths before S6 == 1 GPU" A.txt DO.txt "$FA"
    dq 2 DZ 2 ', "zero": true, "bucket_mb": 0.002'
    sq "DP=2 ZeRO-1 (ncclAvg reduces, the parameters gathered during the next forward) == 1 GPU" A.txt DZ.txt "$FA"
    dq 2 DZA 2 ', "zero": true, "bucket_mb": 0.002' ZB_ZERO_GATHER=after
    # (a copy either way, but two GPU runs differ in their last bits: the embedding backward's
    # atomicAdd order; bit for bit on CPU ranks, tests/cli_train_parallel.sh)
    sq "DP=2 ZeRO-1: the bucketed gather (DZ) == one all-gather after the optimizer (ZB_ZERO_GATHER=after)" DZ.txt DZA.txt "$FA"
    exit $fail ) || fail=1
  fi
  stamp "DP float32 equivalence done"
  zl=${ZB_G2_ZERO_LAYOUTS:-1 dp2 dp2:old dp2z}
  stamp "weak DP scaling: $zl (dp2:old = the DP paths before S6), then dp2z with ZB_ZERO_REDUCE=after"
  zscale scaling-zero "$zl" $(( $(left) - 25 ))
  if fits 40; then zscale scaling-zero-after "dp2z" 90 ZB_ZERO_REDUCE=after REPEAT=1; else notrun "dp2z with ZB_ZERO_REDUCE=after"; fi
  grep -h "DP gradients" "$out"/scaling-zero*/work/run-weak-dp2*-r1.log 2>/dev/null | sort -u
  ( cd "$out" && tar czf results.tgz --exclude=shards --exclude='*.bin' --exclude='*.idx' --exclude='*.h5' log-* scaling-* 2>/dev/null
    for d in scaling-*/; do d=${d%/}; [ -f "$d/scaling.md" ] && cp "$d/scaling.md" "$d-scaling.md"; done
    rm -rf scaling-*/ )
  stamp "done"
  exit 0
fi

# ---- ZB_G2_CPU_ONLY=1: only the CPU DP weak scaling (1, dp2, dp4, dp8, dp16), alone on the
# node (the GPUs idle), one rank per core (mpirun --bind-to core --map-by core), within
# ZB_DEADLINE (default 240 s here). Per-rank work as in distillation: CSEQ x CROWS tokens (1024 x
# 2) of the Zebra-1B hybrid cut to CLAYERS layers of width CD (4 x 256, 7.2 M parameters): 4x the
# tokens per gradient byte of the older 256 x 2 configuration (1024 x 4 took 8.1 s a step on one
# core of the 32-core Xeon, too long for 10 runs in 4 minutes). Then, while time is left: dp16
# with the buckets through MPI_Iallreduce, 16 independent 1-rank runs at once (the node's own
# compute slowdown, no communication), dp16 with MPI plus a progress thread, the older 256 x 2
# configuration (1 and dp16). Prints the tables, the efficiency, the communication share
# (exposed / overlapped) and the step-time model's check.
if [ -n "${ZB_G2_CPU_ONLY:-}" ]; then
  DEADLINE=${ZB_DEADLINE:-240}
  stamp "CPU only: DP weak scaling to 16 ranks, one per core; load $(cut -d' ' -f1-3 /proc/loadavg); $(nproc --all) CPUs;" \
    "/dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $2 " (" $4 " free)"}')"
  cpu_weak() {   # cpu_weak OUT LAYOUTS REPEAT LIMIT [VAR=VALUE...]: cluster/scaling.sh, pinned
    local o=$1 lays=$2 rep=$3 t=$4; shift 4
    ( [ $# -gt 0 ] && export "$@"   # the variables (CD / CSEQ / CROWS, ZB_DP_*) for this run only
      ZEBRA=$Z DEVICE=cpu THREADS=1 LAYOUTS="$lays" MODES=weak REPEAT="$rep" STEPS=${CSTEPS:-3} \
      D=${CD:-256} LAYERS=${CLAYERS:-4} VOCAB=4096 SEQ=${CSEQ:-1024} ROWS=${CROWS:-2} OUT="$out/$o" MPIEXEC="$MPIX" \
      BIND="${CBIND:---bind-to core --map-by core}" timeout -k 5 "$(lim "$t")" bash cluster/scaling.sh ) > "$out/log-$o.txt" 2>&1
    local how; how=$(cat "$out/$o"/work/run-weak-dp16-r1.log 2>/dev/null | grep -m1 "DP gradients" | cut -c8-)
    if scaled "$out/$o"; then summary+=("RAN $o: $lays (${*:-defaults}; dp16: ${how:-?})")
    else summary+=("FAIL $o: no table"); tail_of "$out/log-$o.txt"; fi
  }
  cpu_weak scaling-cpu-weak "1 dp2 dp4 dp8 dp16" "${CREPEAT:-2}" 170
  if fits 25; then cpu_weak scaling-cpu-mpi "dp16" 1 25 ZB_DP_ALLREDUCE=mpi; else notrun "dp16, MPI_Iallreduce buckets"; fi
  # the node's share: 16 independent 1-rank runs at once, one per core, no communication; their
  # step times against the 1-rank run's bound what DP can reach on this node
  wk=$out/scaling-cpu-weak/work
  if [ -s "$wk/run-weak-1-r1.json" ] && fits 30; then
    stamp "16 independent 1-rank runs at once (cores 0-15)"
    ( cd "$wk" && for i in $(seq 0 15); do
        sed "s/\"out\": \"run-weak-1-r1\"/\"out\": \"alone-$i\"/" run-weak-1-r1.json > alone-$i.json; rm -rf alone-$i
        taskset -c "$i" timeout -k 5 "$(lim 30)" $MPIX --bind-to none -n 1 "$Z" train --stage pretrain --config alone-$i.json \
          > alone-$i.log 2>&1 &
      done; wait )
    python3 - "$wk" > "$out/cpu-alone16.md" <<'PY'
import glob, json, os, statistics as st, sys
w = sys.argv[1]
def mean_step(f):
    rs = [json.loads(l) for l in open(f) if '"step_s"' in l]
    rs = [r for r in rs if r["step"] > 1] or rs
    return sum(r["step_s"] for r in rs) / len(rs) if rs else None
t = [x for x in (mean_step(f) for f in glob.glob(os.path.join(w, "alone-*", "train.jsonl"))) if x]
one = [x for x in (mean_step(f) for f in glob.glob(os.path.join(w, "run-weak-1-r*", "train.jsonl"))) if x]
if t and one:
    t1 = st.median(one)
    print("16 independent 1-rank runs at once (%d finished): step s median %.3f, min %.3f, max %.3f; the 1-rank run "
          "alone %.3f: compute alone reaches %.0f%% (median) / %.0f%% (slowest) of the 1-rank speed" % (
          len(t), st.median(t), min(t), max(t), t1, 100 * t1 / st.median(t), 100 * t1 / max(t)))
else:
    print("16 independent 1-rank runs: no result")
PY
    summary+=("RAN $(cat "$out/cpu-alone16.md")")
  else notrun "16 independent 1-rank runs"; fi
  if fits 25; then cpu_weak scaling-cpu-thread "dp16" 1 25 ZB_DP_ALLREDUCE=mpi ZB_DP_PROGRESS=thread:50
  else notrun "dp16, MPI_Iallreduce + progress thread"; fi
  if fits 30; then cpu_weak scaling-cpu-old "1 dp16" 1 30 CD=512 CSEQ=256 CROWS=2; else notrun "the older 256 x 2 configuration"; fi
  python3 - "$out" <<'PY' > "$out/cpu-summary.md"
import json, os, sys
o = sys.argv[1]
def res(d):
    p = os.path.join(o, d, "scaling.json")
    return json.load(open(p))["results"] if os.path.exists(p) else []
main = res("scaling-cpu-weak")
base = next((r for r in main if r["layout"] == "1" and "refused" not in r), None)
print("| run | layout | step s | comm s (share) | DP exposed s | DP overlapped s | compute s | efficiency vs 1 rank |")
print("|---|---|---|---|---|---|---|---|")
for d in ("scaling-cpu-weak", "scaling-cpu-mpi", "scaling-cpu-thread", "scaling-cpu-old"):
    rs = res(d)
    b = next((r for r in rs if r["layout"] == "1" and "refused" not in r), base if d != "scaling-cpu-old" else None)
    for r in rs:
        if "refused" in r: continue
        e = b["step_s_median"] / r["step_s_median"] if b else float("nan")   # weak DP: T1 / TN
        print("| %s | %s | %.3f | %.3f (%.0f%%) | %.3f | %.3f | %.3f | %.0f%% |" % (d[8:], r["layout"], r["step_s_median"],
              r["comm_s_median"], 100 * r["comm_s_median"] / r["step_s_median"], r.get("dp_exposed_s_median", 0),
              r.get("dp_overlap_s_median", 0), r.get("compute_s_median", 0), 100 * e))
PY
  echo; echo "== gpu2-check CPU only ($(grep -m1 'Model name' "$out/log-machine.txt" | sed 's/  */ /g'))"
  printf '%s\n' "${summary[@]}"
  for d in scaling-cpu-weak scaling-cpu-old; do [ -f "$out/$d/scaling.md" ] && { echo; echo "$d:"; sed -n '3,$p' "$out/$d/scaling.md"; }; done
  echo; echo "all CPU runs (efficiency: the 1-rank median of the same configuration):"; cat "$out/cpu-summary.md"
  for d in scaling-cpu-weak scaling-cpu-old; do   # the step-time model against the runs (no binary needed)
    [ -s "$out/$d/scaling.json" ] && python3 cluster/scaling_model.py check "$out/$d" "$out/$d/work/model.json" \
      > "$out/$d-model-check.md" 2>&1 && { echo; echo "model check, $d:"; cat "$out/$d-model-check.md"; }
  done
  ( cd "$out" && tar czf results.tgz --exclude=shards --exclude='*.bin' --exclude='*.idx' log-* scaling-* 2>/dev/null
    for d in scaling-*/; do d=${d%/}; [ -f "$d/scaling.md" ] && cp "$d/scaling.md" "$d-scaling.md"; done
    rm -rf scaling-*/ pack )
  echo "total $(( $(date +%s) - t_start )) s; logs in $out"
  exit $fail
fi

# ---- 2. the communication table
stamp "test_nccl (2 ranks)"
ZB_NCCL_TEST_TIMEOUT=30 timeout -k 5 "$(lim 100)" $MPI -x ZB_NCCL_TEST_TIMEOUT -n 2 "$TN" > "$out/log-nccl.txt" 2>&1
rc=$?
if [ $rc = 77 ]; then summary+=("NOT RUN test_nccl: $(grep -m1 SKIP "$out/log-nccl.txt")"); else
check "test_nccl: every entry on device buffers, TP / PP / DP groups ($(grep -cE '^(ok|PASS)' "$out/log-nccl.txt" || true) checks; rc $rc)" \
  "[ $rc = 0 ]"
[ $rc = 0 ] || { echo "  last steps:"; grep -E '^rank|TIMEOUT|FAIL' "$out/log-nccl.txt" | tail -4; }
# the same with the TP group's small all-reduces through peer memory (core/cuda/cuda_p2p.cu)
if [ -z "${ZB_G2_EQ_ONLY:-}" ] && fits 60; then
  ZB_TP_ALLREDUCE=p2p ZB_TP_FUSED=1 ZB_NCCL_TEST_TIMEOUT=30 timeout -k 5 "$(lim 40)" $MPI -x ZB_NCCL_TEST_TIMEOUT -n 2 "$TN" > "$out/log-nccl-p2p.txt" 2>&1
  rc=$?
  [ $rc = 77 ] && summary+=("NOT RUN test_nccl with ZB_TP_ALLREDUCE=p2p: $(grep -m1 SKIP "$out/log-nccl-p2p.txt")") ||
  check "test_nccl with ZB_TP_ALLREDUCE=p2p ($(grep -cE '^(ok|PASS)' "$out/log-nccl-p2p.txt" || true) checks; rc $rc$(grep -q 'p2p not used' "$out/log-nccl-p2p.txt" && echo ', p2p NOT used'))" \
    "[ $rc = 0 ]" || tail_of "$out/log-nccl-p2p.txt"
fi
fi

# ---- 2b. the 8B shapes under --tp 2 (before anything else loads the machine): Zebra-8B and
# Llama-3.1-8B with synthetic bf16 weights (`--model CONFIG.json`: each rank draws its slice of
# one model), batch 1 and batch 8, 1 GPU against --tp 2 (the TP decode step replayed as one
# CUDA graph with its NCCL calls): the same greedy tokens, and decode tokens/s -> decode.jsonl.
# ZB_G2_TP8B=0 skips it; DEC_NEW / DEC_NEW8 set the new tokens per sequence (128 / 32).
: > "$out/decode.jsonl"; : > "$out/log-decode.txt"
dec() {   # dec CONFIG NP BATCH REP: one run -> decode.jsonl; its tokens in $out/tok-MODEL-bBATCH-NP.txt (env TAG: +TAG to the name)
  local m; m=$(basename "$1" .json)${TAG:++$TAG}
  local a=() log="$out/log-decode-$m-$2-b$3-r$4.txt" p=() tx=()
  [ "$2" = 2 ] && a=(--tp 2)
  # batch > 1, the first repeat: each new token's top-2 logits per row (ZB_GEN_TOP2; a copy of the
  # logits per step, ~1 ms of a batch-8 step), for the tie check of rows that part (same_tokens)
  [ "$3" != 1 ] && [ "$4" = 1 ] && tx=(-x "ZB_GEN_TOP2=$out/top2-$m-b$3-$2.txt")
  for i in $(seq 1 "$3"); do p+=(--prompt-ids "$i,2,3,4,5,6,7,$((8 + i))"); done
  OMP_NUM_THREADS=16 timeout -k 5 "$(lim 75)" $MPI "${tx[@]}" -n "$2" "$Z" generate --model "$1" "${p[@]}" --batch "$3" \
    --max-new "$([ "$3" = 1 ] && echo "${DEC_NEW:-128}" || echo "${DEC_NEW8:-32}")" --ignore-eos --quiet --device cuda \
    --weights bf16 "${a[@]}" > "$out/tok-$m-b$3-$2.txt" 2> "$log"
  local tps; tps=$(grep -o 'decode [0-9]* tokens [0-9.]* tok/s' "$log" | tail -1 | awk '{print $4}')
  local gap; gap=$(grep -o '[0-9.]* ms/step on the device, host gap [0-9.-]* ms/step' "$log" | tail -1 |
                   awk '{print "device " $1 " ms/step, host gap " $8 " ms/step"}')   # zebra generate's timing line
  echo "  $m batch $3, $2 GPU(s) r$4: ${tps:-failed} tok/s${gap:+ ($gap)}$(grep -q 'replayed from a CUDA graph' "$log" && echo ', graph') ($(date +%s) s)" |
    tee -a "$out/log-decode.txt"
  [ -n "$tps" ] || tail_of "$log"
  [ -n "$tps" ] && printf '{"model":"%s","gpus":%d,"batch":%d,"rep":%d,"decode_tps":%s}\n' "$m" "$2" "$3" "$4" "$tps" >> "$out/decode.jsonl"
}
first_diff() {   # where two token files part: per row ("[r]" opens a row), the first new token that differs
  python3 - "$1" "$2" <<'PY'
import re, sys
def rows(f):
    t = open(f).read().split()
    out, cur = [], []
    for w in t:
        if re.fullmatch(r"\[\d+\]", w):
            if cur: out.append(cur)
            cur = []
        elif re.fullmatch(r"-?\d+", w): cur.append(int(w))
    if cur: out.append(cur)
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
for r in range(max(len(a), len(b))):
    x, y = (a[r] if r < len(a) else []), (b[r] if r < len(b) else [])
    k = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), None)
    if k is None and len(x) == len(y): continue
    print("  row %d parts at token %s of %d (1 GPU %s, 2 GPUs %s)" % (r, k if k is not None else min(len(x), len(y)), max(len(x), len(y)),
          x[k] if k is not None else "-", y[k] if k is not None else "-"))
PY
}
# tie_check F1 F2 T1 T2: rows of the token files F1 (1 GPU) and F2 (--tp 2) that part, decided from
# the top-2 logits (T1, T2: ZB_GEN_TOP2 lines "prompt token id1 logit1 id2 logit2 mdiff") at the
# parting token: a tie up to rounding when the two runs swap the same two tokens and the 1-GPU
# margin l_a - l_b is within B = lambda 2^-7 mdiff. The derivation: both runs compute the same
# bf16 model, in other orders of their float32 sums (TP splits each row-parallel product's sum in
# two; the kernels tile differently). The head reads lnf rounded to bf16 (8 significant bits):
# an element whose float32 values differ between the runs rounds at worst to the neighbouring
# bf16 value, one spacing = at most 2^-7 |lnf_k| away. l_a - l_b = sum_k lnf_k (W_ak - W_bk) then
# moves by sum_k d_k (W_ak - W_bk), |d_k| <= 2^-7 |lnf_k|, the flips independent and of mean zero
# (the rule of tests/zb_test.h, Higham & Mary): Hoeffding, |move| <= lambda 2^-7 mdiff with mdiff
# = sqrt(sum_k (lnf_k (W_ak - W_bk))^2) (zb_gen_top2, 1 GPU), lambda = 5.5 (exceeded by chance
# with probability 5e-7). It counts the head's input as the whole difference (the upstream
# reordering reaching lnf as at most one bf16 flip per element); beyond it: FAIL.
tie_check() {
  python3 - "$@" <<'PY'
import re, sys
def rows(f):   # "[i] tokens...": prompt i's new tokens (printed in the order the rows finish)
    out, cur = {}, None
    for w in open(f).read().split():
        if re.fullmatch(r"\[\d+\]", w):
            cur = out.setdefault(int(w[1:-1]), [])
        elif re.fullmatch(r"-?\d+", w) and cur is not None: cur.append(int(w))
    return out
def top2(f):
    t = {}
    try:
        for l in open(f):
            p = l.split()
            if len(p) == 7: t[(int(p[0]), int(p[1]))] = (int(p[2]), float(p[3]), int(p[4]), float(p[5]), float(p[6]))
    except OSError: pass
    return t
a, b, ta, tb = rows(sys.argv[1]), rows(sys.argv[2]), top2(sys.argv[3]), top2(sys.argv[4])
lam, ok, said = 5.5, True, []
for r in sorted(set(a) | set(b)):
    x, y = a.get(r, []), b.get(r, [])
    k = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), None)
    if k is None:
        if len(x) != len(y): ok = False; said.append("row %d: %d vs %d tokens" % (r, len(x), len(y)))
        continue
    p, q = ta.get((r, k)), tb.get((r, k))
    if not p or not q:
        ok = False; said.append("row %d parts at token %d: no top-2 logits" % (r, k)); continue
    m1, bound, m2 = p[1] - p[3], lam * 2.0 ** -7 * p[4], q[1] - q[3]
    swap = p[0] == x[k] and q[0] == y[k] and p[2] == q[0] and q[2] == p[0]
    fine = swap and p[4] >= 0 and m1 <= bound
    ok &= fine
    said.append("row %d parts at token %d: 1 GPU %d over %d by %.3g, --tp 2 %d over %d by %.3g; bound %.3g "
                "(5.5 x 2^-7 x |lnf o (W_a - W_b)|_2 = %.3g): %s" % (r, k, p[0], p[2], m1, q[0], q[2], m2, bound, p[4],
                "a tie up to bf16 rounding" if fine else "the two tokens swap" if swap else "NOT the same two tokens"))
print(("TIE " if ok else "DIFF ") + "; ".join(said))
PY
}
same_tokens() {   # same_tokens MODEL BATCH [VARIANT]: --tp 2 == 1 GPU, greedy (batch > 1: or rows parting at ties)
  local f1="$out/tok-$1-b$2-1.txt" f2="$out/tok-$1${3:++$3}-b$2-2.txt" n
  [ -f "$f1" ] && [ -f "$f2" ] || return   # not run (time)
  n=$(tr ' ' '\n' < "$f1" | grep -cE '^[0-9]+$')
  local t1="$out/top2-$1-b$2-1.txt" t2="$out/top2-$1${3:++$3}-b$2-2.txt"
  if [ "$2" != 1 ] && [ -s "$f1" ] && ! cmp -s "$f1" "$f2" && [ -s "$t1" ] && [ -s "$t2" ]; then
    local v; v=$(tie_check "$f1" "$f2" "$t1" "$t2")
    check "generate --device cuda --tp 2${3:+ ($3)} == 1 GPU up to ties, greedy, $1 (synthetic bf16), batch $2: ${v#* }" \
      "[ '${v%% *}' = TIE ]"
    return
  fi
  check "generate --device cuda --tp 2${3:+ ($3)} == 1 GPU, greedy, $1 (synthetic bf16), batch $2: $n tokens ($(head -c 60 "$f2" | tr '\n' ' ')...)" \
    "[ -s '$f1' ] && cmp -s '$f1' '$f2'" || { echo "  1 GPU: $(head -c 300 "$f1" | tr '\n' ' ')"; echo "  2 GPU: $(head -c 300 "$f2" | tr '\n' ' ')"
      first_diff "$f1" "$f2"; }
}
if [ -z "${ZB_G2_EQ_ONLY:-}" ] && [ "${ZB_CHECK_DEVICE:-cuda}" != cpu ] && [ "${ZB_G2_TP8B:-1}" = 1 ] && [ $have_gpu_table = 1 ]; then
  stamp "the 8B shapes: --tp 2 == 1 GPU (greedy) and decode tokens/s, batch 1 and 8 (synthetic bf16 weights)"
  for m in zebra-8b llama-3.1-8b; do
    for b in 1 8; do
      for np in 1 2; do
        if fits 40; then dec "$SRC/configs/$m.json" $np $b 1; else notrun "decode $m batch $b, $np GPU(s)"; fi
      done
      same_tokens $m $b
    done
  done
  # the TP sums by NCCL, then add_rmsnorm (ZB_TP_FUSED=0), instead of fused with the residual add
  # and the next norm through peer memory (core/cuda/cuda_p2p.cu, the default)
  if fits 40; then TAG=nccl ZB_TP_FUSED=0 dec "$SRC/configs/zebra-8b.json" 2 1 1; same_tokens zebra-8b 1 nccl
  else notrun "decode zebra-8b batch 1, 2 GPUs, ZB_TP_FUSED=0"; fi
  decode_md
  cat "$out/decode.md"
fi

# ---- the cores: with >= 24 physical cores, the CPU scaling runs on 16 of them (one logical CPU
# each) while the GPU correctness checks run on the others; else it runs alone, later
ncores=$(nproc --all)
mapfile -t firsts < <(lscpu -p=CPU,CORE,SOCKET 2>/dev/null | grep -v '^#' | awk -F, '!seen[$2","$3]++ {print $1}')
CPU16="" PIN=""
[ "${#firsts[@]}" -ge 16 ] && CPU16=$(printf '%s\n' "${firsts[@]:0:16}" | paste -sd,)   # one logical CPU per core
if [ "${#firsts[@]}" -ge 24 ]; then
  keep=$(lscpu -p=CPU,CORE,SOCKET | grep -v '^#' | awk -F, -v c="$CPU16" 'BEGIN{n=split(c,a,",");for(i=1;i<=n;i++)x[a[i]]=1}
         x[$1]{core[$2","$3]=1} {cpu[NR]=$1; key[NR]=$2","$3} END{for(i=1;i<=NR;i++) if(!core[key[i]]) printf "%s%s", (k++?",":""), cpu[i]}')
  PIN="taskset -c $keep"
fi
cpu_scaling() {   # cluster/scaling.sh on CPU ranks, one core each, weak DP to 16 ranks
  ZEBRA=$Z DEVICE=cpu THREADS=1 LAYOUTS="1 dp2 dp4 dp8 dp16" MODES=weak REPEAT=${CREPEAT:-2} STEPS=${CSTEPS:-3} \
    D=${CD:-512} LAYERS=${CLAYERS:-4} VOCAB=4096 SEQ=256 ROWS=${CROWS:-2} OUT="$out/scaling-cpu16" MPIEXEC="$MPIX" \
    $1 timeout -k 5 "$(lim 150)" bash cluster/scaling.sh > "$out/log-scaling-cpu16.txt" 2>&1
}
# ZB_G2_EQ_ONLY=1: only test_nccl and the float32 equivalence of training (no generation, no
# benchmarks, no CPU scaling): a short re-check after a change to the communication layer
[ -n "${ZB_G2_EQ_ONLY:-}" ] && { ZB_CPU16=0; SKIP_BENCH=1; }
cpu_bg=""
if [ "${ZB_CPU16:-1}" = 1 ] && [ -n "$PIN" ] && fits 200; then
  stamp "CPU DP weak scaling to 16 ranks, in the background on CPUs $CPU16 (GPU checks on the other cores)"
  cpu_scaling "taskset -c $CPU16" &
  cpu_bg=$!
fi
MPI0=$MPI
MPI="$PIN $MPI0"   # the correctness checks: off the CPU scaling's cores

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
  timeout -k 5 "$(lim 60)" $MPI -n "$np" "$Z" train --stage pretrain --config "$o.json" "$@" >> "$o.log" 2>&1 || true
  losses "$o/train.jsonl" > "$o.txt" 2>/dev/null || true
  [ "$(wc -l < "$o.txt")" = 20 ] || tail_of "$o.log"
}
same() {
  local m; m=$(loss_maxrel "$2" "$3")
  check "$1: max rel diff $m (<= $4)" "[ \"\$(wc -l < $2)\" = 20 ] && [ \"\$(wc -l < $3)\" = 20 ] && loss_within $2 $3 $4 1"
}
G=(--device cuda --precision f32)
# ZB_CHECK_DEVICE=cpu: the same checks on CPU ranks (to try this script on a machine without GPUs)
[ "${ZB_CHECK_DEVICE:-cuda}" = cpu ] && { G=(); have_gpu_table=1; SKIP_BENCH=1; }
cut_model() {   # cut_model CONFIG LAYERS OUT.json: the config with its first LAYERS layers
  python3 - "$1" "$2" > "$3" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); L = int(sys.argv[2]); c["num_hidden_layers"] = L
if "layer_kinds" in c: c["layer_kinds"] = c["layer_kinds"][:L]
c.pop("teacher", None)
print(json.dumps(c, indent=1))
PY
}

# ---- 3. generation: --tp 2 / --pp 2 == 1 GPU
if [ $have_gpu_table = 1 ]; then
  stamp "generation (greedy tokens): a small hybrid trained on 1 GPU, random 1B shapes"
  run 1 A 4 "" "${G[@]}"
  specs=("A/model.h5:tp:s" "A/model.h5:pp:s")
  [ -n "${ZB_G2_EQ_ONLY:-}" ] && specs=()
  if [ "${ZB_CHECK_DEVICE:-cuda}" != cpu ] && [ -z "${ZB_G2_EQ_ONLY:-}" ]; then   # the 1B shapes (random weights), 2 layers (MLA + Mamba2)
    cut_model "$SRC/configs/zebra-1b.json" 2 z1b.json && cut_model "$SRC/configs/llama-3.2-1b.json" 2 l1b.json
    OMP_NUM_THREADS=16 $PIN timeout -k 5 "$(lim 60)" "$Z" init --random --config z1b.json -o z1b.h5 --seed 11 --dtype bf16 > init.log 2>&1
    OMP_NUM_THREADS=16 $PIN timeout -k 5 "$(lim 60)" "$Z" init --random --config l1b.json -o l1b.h5 --seed 12 --dtype bf16 >> init.log 2>&1
    specs+=("z1b.h5:tp:" "z1b.h5:pp:" "l1b.h5:tp:")
  fi
  gi=0
  for spec in "${specs[@]}"; do
    IFS=: read -r m k sampled <<< "$spec"
    [ -f "$m" ] || { check "generate: $m exists" false; tail_of init.log; continue; }
    fits 20 || { notrun "generate --$k 2, $m"; continue; }
    gen() { gi=$((gi + 1)); timeout -k 5 "$(lim 45)" $MPI -n "$1" "$Z" generate --model "$m" --prompt-ids 1,2,3,4,5,6,7,8 \
            --max-new 24 --ignore-eos --quiet "${G[@]}" "${@:2}" 2> "gen-$gi.log"; }
    one=$(gen 1); two=$(gen 2 --$k 2)
    check "generate --device cuda --$k 2 == 1 GPU, greedy, $(basename "$m"): '$two'" "[ -n \"$one\" ] && [ \"$one\" = \"$two\" ]" ||
      { [ -n "$one" ] || tail_of "gen-$((gi - 1)).log"; [ -n "$two" ] || tail_of "gen-$gi.log"; }
    [ -n "$sampled" ] || continue   # sampled: on the small hybrid only (time)
    one=$(gen 1 --temperature 0.9 --top-k 20 --seed 5); two=$(gen 2 --$k 2 --temperature 0.9 --top-k 20 --seed 5)
    check "generate --device cuda --$k 2 == 1 GPU, sampled (T 0.9, top-k 20), $(basename "$m"): '$two'" \
      "[ -n \"$one\" ] && [ \"$one\" = \"$two\" ]" || tail_of "gen-$gi.log"
  done

  # ---- 4. equivalence of training, float32: TP (the vocabulary-parallel loss on the GPUs) and PP first
  stamp "equivalence: training (f32)"
  [ -f A.txt ] || run 1 A 4 "" "${G[@]}"
  GA=2 run 1 A2 2 "" "${G[@]}"
  f=$(loss_maxrel A.txt A2.txt); s=$("$ZP" 32 128 hyb.json)
  FA=$(awk -v f="$f" -v s="$s" 'BEGIN { printf "%.3g", f * s }')
  check "1 GPU split run differs from 1 GPU by rounding ($f; x $s = $FA)" "awk 'BEGIN{exit !($f > 0 && $f < 1e-3 && $s > 0)}'"
  eq() {   # eq NAME NP OUT MB EXTRA [args]: a run against A, if it fits
    local name=$1; shift
    fits 20 || { notrun "$name"; return; }
    run "$@"; same "$name" A.txt "$2.txt" "$FA"
  }
  eq "TP=2 on 2 GPUs == 1 GPU (vocabulary-parallel loss on the GPUs)" 2 T 4 "" "${G[@]}" --tp 2
  GA=4 eq "PP=2 on 2 GPUs (1F1B, 4 micro-batches) == 1 GPU" 2 P 1 "" "${G[@]}" --pp 2
  cd "$SRC"
else
  summary+=("NOT RUN equivalence and benchmarks: this build has no CUDA backend table ($probe)")
fi

# ---- the CPU scaling, when it ran beside: waited for
cpu_done() {
  if scaled "$out/scaling-cpu16"; then summary+=("RAN CPU DP weak scaling to 16 ranks (table below)")
  else summary+=("FAIL CPU DP weak scaling to 16 ranks: no table"); tail_of "$out/log-scaling-cpu16.txt"; fi
}
if [ -n "$cpu_bg" ]; then
  stamp "waiting for the CPU scaling runs"
  wait "$cpu_bg"
  cpu_done
fi
MPI=$MPI0

# ---- 5. benchmarks (the machine otherwise idle): decode at batch 1 (8B shapes), weak DP scaling
if [ -z "${SKIP_BENCH:-}" ] && [ $have_gpu_table = 1 ]; then
  if [ "${ZB_G2_TP8B:-1}" = 1 ] && fits 230; then   # a second repeat of Zebra-8B at batch 1 (interleaved)
    stamp "benchmarks: decode zebra-8b at batch 1, a second repeat"
    for np in 1 2; do dec "$SRC/configs/zebra-8b.json" $np 1 2; done
    decode_md
  fi

  stamp "benchmarks: weak DP scaling of the training step (cluster/scaling.sh)"
  if fits 90; then
    ZEBRA=$Z DEVICE=cuda PRECISION=bf16 CONFIG="$SRC/configs/zebra-1b.json" LAYERS=${BLAYERS:-8} D=2048 VOCAB=32768 SEQ=2048 \
      ROWS=${BROWS:-4} STEPS=${BSTEPS:-4} REPEAT=${BREPEAT:-2} MODES=weak LAYOUTS="1 dp2" OUT="$out/scaling-weak" \
      MPIEXEC="$MPIX" timeout -k 5 "$(lim 150)" bash cluster/scaling.sh > "$out/log-scaling.txt" 2>&1
    scaled "$out/scaling-weak" || tail_of "$out/log-scaling.txt"
  else notrun "weak DP scaling on the GPUs"; fi
fi

# ---- the CPU scaling alone (fewer than 24 physical cores: not beside the GPU checks)
if [ "${ZB_CPU16:-1}" = 1 ] && [ -z "$cpu_bg" ]; then
  if [ -n "$CPU16" ] && [ -z "${SKIP_BENCH:-}" ] && fits 75; then
    stamp "CPU DP weak scaling to 16 ranks (CPUs $CPU16, one per core)"
    cpu_scaling "taskset -c $CPU16"
    cpu_done
  else notrun "CPU DP weak scaling to 16 ranks ($ncores CPUs, ${#firsts[@]} cores)"; fi
fi

# ---- 6. if time is left: the rest of the equivalence, Llama-3.1-8B decode, strong TP / PP
if [ $have_gpu_table = 1 ]; then
  cd "$W"
  eq "DP=2 on 2 GPUs (0.002 MB buckets on the side stream) == 1 GPU" 2 D 2 ', "bucket_mb": 0.002' "${G[@]}"
  eq "DP=2 ZeRO-1 on 2 GPUs (0.002 MB buckets reduce-scattered on the side stream) == 1 GPU" 2 DZ 2 ', "zero": true, "bucket_mb": 0.002' "${G[@]}"
  if fits 20; then run 1 C 4 ""; same "1 GPU == CPU (1 rank)" C.txt A.txt "$FA"; else notrun "1 GPU == CPU"; fi
  cd "$SRC"
fi
if [ -z "${SKIP_BENCH:-}" ] && [ $have_gpu_table = 1 ]; then
  if fits 80; then
    stamp "benchmarks: strong TP / PP scaling on the GPUs"
    ZEBRA=$Z DEVICE=cuda PRECISION=bf16 CONFIG="$SRC/configs/zebra-1b.json" LAYERS=${BLAYERS:-8} D=2048 VOCAB=32768 SEQ=2048 \
      ROWS=${BROWS:-4} STEPS=${BSTEPS:-4} REPEAT=1 MODES=strong LAYOUTS="1 tp2 pp2" OUT="$out/scaling-strong" \
      MPIEXEC="$MPIX" timeout -k 5 "$(lim 120)" bash cluster/scaling.sh >> "$out/log-scaling.txt" 2>&1
    scaled "$out/scaling-strong" || true
  else notrun "strong TP / PP scaling on the GPUs"; fi
fi

# the step-time model (cluster/scaling_model.py) against each scaling run
for d in "$out"/scaling-*/; do
  d=${d%/}
  [ -s "$d/scaling.json" ] && [ -s "$d/work/model.json" ] &&
    ZEBRA=$Z python3 cluster/scaling_model.py check "$d" "$d/work/model.json" > "$d/model-check.md" 2>&1
done

# what comes back stays small and few (a lent machine returns a limited number of files): the
# summary tables as files, everything else in one archive; no binaries, models or shards
[ -n "$packed" ] && rm -rf "$out/pack"
find "$out" -type f \( -name '*.h5' -o -size +8M \) -delete 2>/dev/null
( cd "$out" && tar czf results.tgz --exclude=shards --exclude='*.bin' --exclude='*.idx' log-* tok-* top2-* decode.* scaling-* work 2>/dev/null;
  for d in scaling-*/; do d=${d%/}; for f in scaling.md model-check.md; do [ -f "$d/$f" ] && cp "$d/$f" "$d-$f"; done; done
  rm -rf work scaling-*/ log-decode-*-r*.txt tok-*.txt top2-*.txt )

echo
echo "== gpu2-check summary ($(head -2 "$out/log-machine.txt" | tail -1))"
printf '%s\n' "${summary[@]}"
grep -E "busbw|allreduce|latency|per call" "$out/log-nccl.txt" | head -16
grep -E "fused .*(bits|worst)" "$out/log-nccl-p2p.txt" 2>/dev/null | head -4
grep -E "allreduce|per call" "$out/log-nccl-p2p.txt" 2>/dev/null | head -6 | sed 's/^/  ZB_TP_ALLREDUCE=p2p ZB_TP_FUSED=1:/'
[ -f "$out/decode.md" ] && cat "$out/decode.md"
for f in "$out"/scaling-*-scaling.md; do [ -f "$f" ] && { echo; sed -n '1p;3,$p' "$f"; }; done
for f in "$out"/scaling-*-model-check.md; do [ -f "$f" ] && { echo; echo "model check, $(basename "$f" -model-check.md):"; cat "$f"; }; done
echo "total $(( $(date +%s) - t_start )) s; logs in $out"
exit $fail
