#!/usr/bin/env bash
# cluster/demo.sh — the embedded default job (run by ./setup.sh): everything it uses is made
# here from files in the repository. Until the training driver lands, it builds a small
# Llama teacher and a small Zebra hybrid (random weights), shows what each costs, checks the
# HDF5 round trip, and generates with both through their caches under MPI.
set -euo pipefail
cd "$(dirname "$0")/.."
Z=${ZEBRA:-build/zebra}
out=${ZB_DEMO_DIR:-out/demo}
mkdir -p "$out"
MPIRUN="mpirun --oversubscribe -n 1"
[ "$(id -u)" = 0 ] && MPIRUN="mpirun --allow-run-as-root --oversubscribe -n 1"

echo "== models (random weights) =="
$MPIRUN $Z init --random --config configs/tiny-llama.json -o "$out/teacher.h5" --seed 1
$MPIRUN $Z init --random --config configs/tiny-zebra.json -o "$out/hybrid.h5" --seed 2
for m in teacher hybrid; do echo "-- $m"; $MPIRUN $Z info "$out/$m.h5"; done
echo "== the paper's configurations =="
for c in llama-3.2-1b zebra-1b llama-3.2-3b zebra-3b llama-3.1-8b zebra-8b; do
  printf '%-14s ' "$c"; $MPIRUN $Z info --json configs/$c.json
done
echo "== generation (greedy, KV / latent / SSM caches) =="
for m in teacher hybrid; do
  echo "-- $m"; $MPIRUN $Z generate --model "$out/$m.h5" --prompt-ids 1,72,101,108,108,111 --max-new 24 --ignore-eos
done
