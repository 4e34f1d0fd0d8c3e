#!/usr/bin/env bash
# cluster/launch.sh — start zebra on one node or on the nodes of a plain hostfile (mpirun).
#
#   cluster/launch.sh [--hostfile FILE] [--per-node K] [--cores-per-rank C] [--dry-run] \
#                     [--zebra PATH] -- SUBCOMMAND ARGS...
#
# e.g. two 8-GPU nodes, TP 2 x PP 2 x DP 4:
#   cluster/launch.sh --hostfile hosts -- train --stage kd --config configs/run-8b-kd.json \
#                     --device cuda --tp 2 --pp 2
#   (hosts: one line per node, "node1 slots=8")
#
# One rank per GPU with --device cuda (K = the GPUs of this node, nvidia-smi -L, unless
# --per-node), else K = tp x pp ranks per node (one model replica; more, for data parallelism,
# with --per-node) sharing the node's cores (OpenMP + OpenBLAS threads). The ranks fill a node before the next
# (mpirun --map-by ppr:K:node), so that the TP groups (consecutive ranks, parallel/grid.h) sit
# inside a node; each rank is bound to its C = cores / K cores (--bind-to core, PE=C) and runs
# C threads (OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = C). On GPUs the node-local rank picks the
# device (zebra does it: MPI's shared-memory split, parallel/grid.c), and NCCL's multicast is
# off unless NCCL_NVLS_ENABLE is set (docs/TROUBLESHOOTING.md).
# --dry-run prints the mpirun line and the grid (`zebra plan`: which rank holds which layers,
# heads and vocabulary rows), and starts nothing. Environment: MPIRUN (default mpirun),
# EXTRA_MPI_ARGS (added to the mpirun line), and any NCCL_* / UCX_* / OMPI_* variable set here
# is passed to every rank.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
hostfile="" per_node="" cores="" dry=0 zebra=${ZEBRA:-$here/build/zebra}
while [ $# -gt 0 ]; do
  case $1 in
    --hostfile) hostfile=$2; shift 2;;
    --per-node) per_node=$2; shift 2;;
    --cores-per-rank) cores=$2; shift 2;;
    --dry-run) dry=1; shift;;
    --zebra) zebra=$2; shift 2;;
    --) shift; break;;
    -h|--help) sed -n '2,27p' "$0"; exit 0;;
    *) echo "launch.sh: unknown option '$1' (the zebra command goes after --)" >&2; exit 2;;
  esac
done
[ $# -gt 0 ] || { echo "launch.sh: give the zebra command after --, e.g. -- train --config run.json" >&2; exit 2; }
args=("$@")
# a flag's value among the zebra arguments
argval() { local f=$1 d=$2 i; for ((i = 0; i < ${#args[@]} - 1; i++)); do [ "${args[i]}" = "$f" ] && { echo "${args[i+1]}"; return; }; done; echo "$d"; }
device=$(argval --device cpu)
tp=$(argval --tp 1); pp=$(argval --pp 1)

nodes=1
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || { echo "launch.sh: $hostfile: cannot read the hostfile" >&2; exit 2; }
  nodes=$(grep -cvE '^\s*(#|$)' "$hostfile")
  [ "$nodes" -ge 1 ] || { echo "launch.sh: $hostfile: no host in it" >&2; exit 2; }
fi
if [ -z "$per_node" ]; then
  if [ "$device" = cuda ]; then
    per_node=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "$per_node" -ge 1 ] || { echo "launch.sh: --device cuda but nvidia-smi lists no GPU here; give --per-node" >&2; exit 2; }
  else
    per_node=$(( tp * pp ))   # one model replica per node; more (DP) with --per-node
  fi
fi
ncores=$(nproc)   # this node's; the nodes of a hostfile are taken to be alike
[ -n "$cores" ] || cores=$(( ncores / per_node > 0 ? ncores / per_node : 1 ))
world=$(( nodes * per_node ))
if [ $(( world % (tp * pp) )) != 0 ]; then
  echo "launch.sh: $world ranks ($nodes node(s) x $per_node) are not divisible by --tp $tp x --pp $pp" >&2; exit 2
fi
if [ "$tp" -gt "$per_node" ] || [ $(( per_node % tp )) != 0 ]; then
  echo "launch.sh: warning: --tp $tp does not fit the $per_node ranks of a node: TP groups would span nodes" >&2
fi

mpirun=${MPIRUN:-mpirun}
cmd=("$mpirun" -n "$world" --map-by "ppr:$per_node:node:PE=$cores" --bind-to core --report-bindings)
[ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
[ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
export OMP_NUM_THREADS=$cores OPENBLAS_NUM_THREADS=$cores OMP_PROC_BIND=${OMP_PROC_BIND:-close} OMP_PLACES=${OMP_PLACES:-cores}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
for v in $( (echo OMP_NUM_THREADS OMP_PROC_BIND OMP_PLACES | tr ' ' '\n'; env | grep -oE '^(NCCL|UCX|ZB|OPENBLAS|CUDA)_[A-Z_]*') | sort -u); do
  cmd+=(-x "$v")
done
# shellcheck disable=SC2206
[ -n "${EXTRA_MPI_ARGS:-}" ] && cmd+=(${EXTRA_MPI_ARGS})
cmd+=("$zebra" "${args[@]}")

if [ "$dry" = 1 ]; then
  echo "launch.sh: $nodes node(s) x $per_node rank(s) = $world ranks, $cores core(s) and threads per rank, device $device"
  printf '%q ' "${cmd[@]}"; echo
  model=$(argval --config "")
  [ -n "$model" ] || model=$(argval --model "")
  if [ -n "$model" ]; then
    "$zebra" plan "$model" --ranks "$world" --tp "$tp" --pp "$pp" --per-node "$per_node"
  else
    echo "launch.sh: no --config / --model among the arguments: no grid to print"
  fi
  exit 0
fi
exec "${cmd[@]}"
