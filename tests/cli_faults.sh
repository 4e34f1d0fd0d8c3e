#!/usr/bin/env bash
# cli_faults.sh ZEBRA FIXTURES SRCDIR MPIEXEC — hostile inputs and faults (issue 13): each one
# clear line naming the file / option / value, a non-zero exit that is not a crash, no file
# half-written or left behind, the previous checkpoint untouched; under mpiexec every rank
# down within a time bound.
#  - token ids outside the vocabulary in a shard set (>= vocab_size, "negative") and a data
#    set of a larger vocabulary than the model: train and eval name the file and the id;
#  - disk full, simulated by a file size limit (ulimit -f; zebra ignores SIGXFSZ and sees
#    EFBIG): a checkpoint save on 1 and 2 ranks (the earlier checkpoint intact, no .tmp file),
#    zebra data (no temporary directory), zebra import;
#  - a flipped byte in a checkpoint (Fletcher32), NaN weights (the tensor named);
#  - strict command-line numbers, an empty-vocabulary tokenizer, plans with repeated, fractional
#    or out-of-range layers, configs with absurd sizes, a directory where a file is expected, an
#    empty input directory, a full context in generate (said on stderr);
#  - mpiexec: an error on one rank only (NaN in rank 1's slice of a --tp 2 model) and a rank
#    killed with SIGKILL: every rank gone within 60 s (timeout fails the test, never hangs).
set -u
. "$(dirname "$0")/cli_lib.sh"
Z=$1 FX=$2 SRC=$3 MPIEXEC=$4
T=$(mktemp -d /tmp/zb_cli_faults.XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T"
pass=0 fail=0
ok() { pass=$((pass + 1)); [ -n "${ZB_TEST_VERBOSE:-}" ] && echo "PASS $*"; return 0; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
MPI="timeout 60 $MPIEXEC --allow-run-as-root --oversubscribe"

# fails NAME PATTERN CMD...: exit in [1, 127] (an error, not a crash nor a timeout), one stderr
# line containing PATTERN
fails() {
  local name=$1 pat=$2; shift 2
  "$@" > out.txt 2> err.txt; local rc=$?
  if [ $rc -ge 1 ] && [ $rc -lt 124 ] && [ "$(err_file_lines err.txt)" = 1 ] && grep -qF -- "$pat" err.txt; then
    ok "$name: $(grep -v "$zb_env_notice" err.txt)"
  else bad "$name: rc $rc, stderr: $(head -c 600 err.txt)"; fi
}
# fails_run NAME PATTERN CMD...: the same for commands that report progress on stderr
# (train): one error line, containing PATTERN
fails_run() {
  local name=$1 pat=$2; shift 2
  "$@" > out.txt 2> err.txt; local rc=$?
  if [ $rc -ge 1 ] && [ $rc -lt 124 ] && [ "$(grep -c 'error' err.txt)" = 1 ] && grep 'error' err.txt | grep -qF -- "$pat"; then
    ok "$name: $(grep error err.txt)"
  else bad "$name: rc $rc, stderr: $(head -c 600 err.txt)"; fi
}
# mpi_fails NAME PATTERN NP CMD...: under mpiexec: a non-zero exit within the timeout, the
# message among the lines (Open MPI adds its own)
mpi_fails() {
  local name=$1 pat=$2 np=$3; shift 3
  local t0=$SECONDS
  $MPI -n "$np" "$@" > out.txt 2> err.txt; local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$pat" err.txt; then ok "$name: rc $rc in $((SECONDS - t0)) s"
  else bad "$name: rc $rc in $((SECONDS - t0)) s, stderr: $(head -c 800 err.txt)"; fi
}
no_tmp() {   # no_tmp NAME DIR: nothing half-written left in DIR
  local left; left=$(ls -a "$2" 2>/dev/null | grep -E '\.tmp' | tr '\n' ' ')
  if [ -z "$left" ]; then ok "$1: no temporary file left"; else bad "$1: left behind: $left"; fi
}

TOK=$SRC/configs/bytes-tokenizer.json
$Z data --tokenizer "$TOK" --input "$SRC/core/data.c" "$SRC/core/cpu/ops.c" -o sh --val-fraction 0.3 --seed 1 > /dev/null 2>&1 \
  || bad "make a shard set"
$Z init --random --config "$SRC/configs/demo-llama.json" -o m.h5 --seed 3 > /dev/null 2>&1 || bad "init demo-llama"
run() {   # run NAME DATA [extra json]: a run.json of 4 steps on m.h5
  printf '{"model": "m.h5", "data": "%s", "seq_len": 16, "micro_batch": 2, "steps": 4, "lr": 1e-3, "log_every": 1, "eval_batches": 0, "save_every": 2%s, "out": "%s"}\n' \
    "$2" "${3:-}" "$1" > "$1.json"
}

# ---- token ids outside the vocabulary -----------------------------------------------------
cp -r sh big && cp -r sh neg
python3 - <<'PY'
import struct
for d, v in (("big", 300), ("neg", 0xffffffff)):
    for s in ("train", "val"):
        f = open(f"{d}/{s}.bin", "r+b"); f.seek(4 * 5); f.write(struct.pack("<I", v)); f.close()
PY
run R1 big; fails_run "train: id >= vocab_size in the shards" "big/train.bin: token id 300 at token 5 is outside the vocabulary" $Z train --stage pretrain --config R1.json
run R2 neg; fails_run "train: a negative id in the shards" "neg/train.bin: token id -1 at token 5" $Z train --stage pretrain --config R2.json
fails "eval: id >= vocab_size in the shards" "big/val.bin: token id 300" $Z eval --model m.h5 --data big --seq 16 --batch 2
$Z init --random --config "$SRC/configs/tiny-llama.json" -o small.h5 > /dev/null 2>&1
fails "eval: a data set of a larger vocabulary than the model" "outside the vocabulary (the model's vocabulary, 256 ids)" \
  $Z eval --model small.h5 --data sh --seq 16 --batch 2

# ---- disk full: a file size limit (zebra ignores SIGXFSZ: writes fail with EFBIG) -------------
# PMIx needs a few MB of shared memory files: the limit leaves those and the first checkpoint,
# not the second (model + moments)
run F ok; sed -i 's/"data": "ok"/"data": "sh"/' F.json
$Z train --stage pretrain --config F.json --stop-after 2 > /dev/null 2>&1 || bad "train to step 2"
sum0=$(cksum < F/ckpt-000002.h5)
lim=$(( $(stat -c %s F/ckpt-000002.h5) / 1024 + 1200 ))
( ulimit -f $lim; fails_run "save on a full disk (1 rank)" "no room to write tensor" $Z train --stage pretrain --config F.json --resume F/ckpt-000002.h5 )
[ "$(cksum < F/ckpt-000002.h5)" = "$sum0" ] && ok "the previous checkpoint is untouched" || bad "ckpt-000002.h5 changed"
[ ! -e F/ckpt-000004.h5 ] && ok "no new checkpoint at its name" || bad "a ckpt-000004.h5 appeared"
no_tmp "save on a full disk (1 rank)" F
( ulimit -f $lim; mpi_fails "save on a full disk (2 ranks, --tp 2)" "no room to write tensor" 2 $Z train --stage pretrain --config F.json --resume F/ckpt-000002.h5 --tp 2 )
[ "$(cksum < F/ckpt-000002.h5)" = "$sum0" ] && ok "2 ranks: the previous checkpoint is untouched" || bad "2 ranks: ckpt-000002.h5 changed"
no_tmp "save on a full disk (2 ranks)" F
# The same on a real full file system (ENOSPC, not EFBIG): a tmpfs just big enough for the
# previous checkpoint, mounted in a private mount namespace (gone when the namespace ends;
# needs root: skipped otherwise). The checks run inside, their results come back as files.
if unshare -m --propagation private true 2>/dev/null; then
  sed 's/"out": "F"/"out": "tf"/' F.json > TF.json
  kb=$(( $(stat -c %s F/ckpt-000002.h5) / 1024 + 512 ))
  for np in 1 2; do
    rm -f tf.res
    if [ $np = 1 ]; then launch="$Z"; else launch="$MPI -n 2 $Z"; fi
    extra=; [ $np = 2 ] && extra="--tp 2"
    unshare -m --propagation private bash -c "
      mkdir -p tf && mount -t tmpfs -o size=${kb}k tmpfs tf && cp F/ckpt-000002.h5 tf/ || exit 99
      t0=\$SECONDS
      $launch train --stage pretrain --config TF.json --resume tf/ckpt-000002.h5 $extra > tf$np.out 2> tf$np.err
      echo \"rc=\$? secs=\$((SECONDS - t0)) sum=\$(cksum < tf/ckpt-000002.h5 | cut -d' ' -f1) left=\$(ls tf | grep -c '\.tmp') new=\$(ls tf | grep -c 'ckpt-000004')\" > tf.res"
    res=$(cat tf.res 2>/dev/null)
    sum2=$(cksum < F/ckpt-000002.h5 | cut -d' ' -f1)
    if [[ "$res" =~ rc=([0-9]+)\ secs=([0-9]+)\ sum=([0-9]+)\ left=0\ new=0 ]] && [ "${BASH_REMATCH[1]}" != 0 ] \
       && [ "${BASH_REMATCH[1]}" -lt 124 ] && [ "${BASH_REMATCH[3]}" = "$sum2" ] && grep -q "No space left on device" tf$np.err; then
      ok "tmpfs full ($np rank(s)): $res: $(grep -m1 'No space' tf$np.err)"
    else bad "tmpfs full ($np rank(s)): ${res:-no result}: $(head -c 600 tf$np.err)"; fi
  done
else
  echo "SKIP tmpfs disk-full checks: no private mount namespace here (not root)"
fi
( ulimit -f 6000; fails "zebra data on a full disk" "write error" $Z data --tokenizer "$TOK" --input "$FX/llama3-tokenizer/tokenizer.json" -o full --format text )
[ ! -e full ] && ! ls -d full.tmp* > /dev/null 2>&1 && ok "zebra data: no output, no temporary directory" || bad "zebra data left $(ls -d full* 2>/dev/null)"
sed 's/"hidden_size": [0-9]*/"hidden_size": 512/; s/"intermediate_size": [0-9]*/"intermediate_size": 1024/' "$SRC/configs/demo-llama.json" > wide.json
$Z init --random --config wide.json -o wide.h5 > /dev/null 2>&1 || bad "init a 512-wide model"
( ulimit -f 6000; fails "zebra import on a full disk" "no room to write tensor" $Z import wide.h5 -o imp.h5 )
[ ! -e imp.h5 ] && ok "import: nothing at the output name" || bad "import left imp.h5"
no_tmp "import on a full disk" .

# ---- silent garbage: a flipped byte (Fletcher32), NaN weights ---------------------------------
cp m.h5 flip.h5
python3 -c "
import os
n = os.path.getsize('flip.h5'); f = open('flip.h5', 'r+b'); f.seek(n // 2); b = f.read(1); f.seek(n // 2); f.write(bytes([b[0] ^ 0x10]))"
fails "a flipped byte in a checkpoint" "Fletcher32 checksum does not match" $Z generate --model flip.h5 --prompt-ids 1,2 --max-new 2
mkdir nan && cp "$FX"/hf-llama-tiny/* nan/
python3 - <<'PY'
import json, struct
p = "nan/model-00001-of-00003.safetensors"
b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
s = h["model.embed_tokens.weight"]["data_offsets"][0]
b[8 + n + s + 6:8 + n + s + 8] = bytes([0xc0, 0x7f])   # bf16 NaN at index 3
open(p, "wb").write(b)
PY
fails "NaN weights" "tensor 'model.embed_tokens.weight' holds 1 NaN / inf value (first at index 3)" $Z generate --model nan --prompt-ids 1,2 --max-new 2

# ---- command-line numbers ---------------------------------------------------------------------
G=(generate --model m.h5 --prompt-ids 1,2,3)
fails "--max-new abc" "generate: --max-new must be an integer" $Z "${G[@]}" --max-new abc
fails "--max-new 12x" "not '12x'" $Z "${G[@]}" --max-new 12x
fails "--max-new 2^32+1 (no wrap-around)" "generate: --max-new must be an integer" $Z "${G[@]}" --max-new 4294967297
fails "--temperature nan" "generate: --temperature must be a number in [0, 1e+06], not 'nan'" $Z "${G[@]}" --temperature nan
fails "--temperature inf" "not 'inf'" $Z "${G[@]}" --temperature inf
fails "--top-p 2" "generate: --top-p must be a number in [0, 1]" $Z "${G[@]}" --top-p 2
fails "--seed -1" "generate: --seed must be an integer in [0," $Z "${G[@]}" --seed -1
fails "--batch 1.5" "generate: --batch must be an integer" $Z "${G[@]}" --batch 1.5
fails "--tp empty" "generate: --tp must be an integer" $Z "${G[@]}" --tp ""
fails "--prompt-ids 4294967297 (no wrap-around)" "token id 4294967297 is outside the vocabulary" $Z generate --model m.h5 --prompt-ids 4294967297
fails "eval --seq 0" "eval: --seq must be an integer in [1," $Z eval --model m.h5 --data sh --seq 0
fails "init --std -1" "init: --std must be a number" $Z init --random --config "$SRC/configs/demo-llama.json" -o x.h5 --std -1
fails "data --val-fraction empty" "data: --val-fraction must be a number" $Z data --tokenizer "$TOK" --input "$SRC/core/data.c" -o x --val-fraction ""
fails "data --seed -5" "data: --seed must be an integer in [0," $Z data --tokenizer "$TOK" --input "$SRC/core/data.c" -o x --seed -5
fails "bench --batches 2,x" "bench: --batches must be an integer" $Z bench --teacher "$SRC/configs/demo-llama.json" --batches 2,x
fails "plan --ranks 8x" "plan: --ranks must be an integer" $Z plan "$SRC/configs/demo-llama.json" --ranks 8x
fails "plan --tp 2^16 x --pp 2^16 (no product overflow)" "plan: --tp must be an integer in [1, 4096]" $Z plan "$SRC/configs/demo-llama.json" --ranks 8 --tp 65536 --pp 65536
fails "train --stop-after 1e3" "train: --stop-after must be an integer" $Z train --stage pretrain --config F.json --stop-after 1e3

# ---- tokenizer, plans, configs, paths ----------------------------------------------------------
python3 -c "
import json
t = json.load(open('$TOK')); t['model']['vocab'] = {}; t['model']['merges'] = []; t['added_tokens'] = []
json.dump(t, open('empty-tok.json', 'w'))"
fails "an empty-vocabulary tokenizer" "model.vocab is empty" $Z tokenize --tokenizer empty-tok.json --text hi
for plan in '[1, 1]' '[0, 1.5]' '[7]' '[-1]'; do
  echo "{\"mla_layers\": $plan}" > plan.json
  fails "plan $plan" "plan.json: mla_layers" $Z compose --teacher "$FX/hf-llama-tiny" --config "$SRC/configs/tiny-zebra.json" --plan plan.json -o p.h5
done
[ ! -e p.h5 ] && ok "plans: no output" || bad "a plan wrote p.h5"
sed 's/"d_state": [0-9]*/"d_state": 1073741824/' "$SRC/tests/tp-hybrid.json" > huge.json
fails "mamba2.d_state 2^30 (info)" "mamba2.d_state 1073741824 out of range" $Z info huge.json
sed 's/"hidden_size": [0-9]*/"hidden_size": 2147483647/' "$SRC/configs/demo-llama.json" > vast.json
fails "hidden_size 2^31-1" "hidden_size 2147483647 out of range" $Z info vast.json
mkdir adir empty
fails "a directory as --tokenizer" "adir: is a directory, expected a file" $Z tokenize --tokenizer adir --text hi
fails "a directory as --prompts" "adir: is a directory, expected a file" $Z generate --model m.h5 --prompts adir
fails "a directory as --tasks" "adir: is a directory, expected a file" $Z eval --model m.h5 --tasks adir
fails "a directory as run.json" "adir: is a directory, expected a file" $Z train --stage pretrain --config adir
fails "an empty input directory" "empty: a directory with no files to read" $Z data --tokenizer "$TOK" --input empty -o x
$Z generate --model m.h5 --prompt-ids 1,2,3 --ctx 6 --max-new 10 --quiet > out.txt 2> err.txt
grep -q "1 prompt stopped at the full context of 6 tokens before --max-new 10" err.txt \
  && ok "generate says it stopped at the full context" || bad "full context not said: $(cat err.txt)"

# ---- run.json: wrong types, typos, out-of-range values (core/runcfg.c) ------------------------
for kv in '"lerning_rate": 1|unknown key '"'"'lerning_rate'"'"'' '"lr": "abc"|key '"'"'lr'"'"' must be a number' \
          '"lr": -1|key '"'"'lr'"'"' must be > 0' '"beta2": 1.5|key '"'"'beta2'"'"' must be >= 0 and < 1' \
          '"weight_decay": -0.1|key '"'"'weight_decay'"'"' must be >= 0' '"steps": 1.5|key '"'"'steps'"'"' must be an integer'; do
  printf '{"model": "m.h5", "data": "sh", "out": "X", %s}\n' "${kv%%|*}" > X.json
  fails "run.json ${kv%%|*}" "X.json: ${kv#*|}" $Z train --stage pretrain --config X.json
done
[ ! -e X ] && ok "run.json errors: no output directory" || bad "a refused run.json made X/"

# ---- numerical blow-up: a non-finite step is never applied nor saved ---------------------------
run N sh ', "nonfinite": "stop"'; sed -i 's/"lr": 1e-3/"lr": 1e6/' N.json
fails_run "lr 1e6, nonfinite stop" "step 2: the gradient norm is NaN (the first tensor whose gradient is not finite: '" \
  $Z train --stage pretrain --config N.json
[ ! -e N/ckpt-000002.h5 ] && [ ! -e N/model.h5 ] && ok "nonfinite stop: nothing saved" || bad "nonfinite stop saved: $(ls N)"
grep -q '"grad_norm":inf\|"grad_norm":nan\|NaN' N/train.jsonl && bad "train.jsonl holds a non-JSON number" || ok "nonfinite stop: train.jsonl is JSON"
run Sk sh ', "nonfinite": "skip"'; sed -i 's/"lr": 1e-3/"lr": 1e6/' Sk.json
$Z train --stage pretrain --config Sk.json > Sk.log 2>&1
if [ $? = 0 ] && grep -q 'train: step 2 skipped: the gradient norm is NaN' Sk.log \
   && python3 -c "
import json, sys
r = [json.loads(l) for l in open('Sk/train.jsonl')]
sys.exit(not (r[-1]['skipped'] == 3 and all(x['grad_norm'] is None for x in r[1:])))" \
   && $Z generate --model Sk/model.h5 --prompt-ids 1,2 --max-new 2 --quiet > /dev/null 2>&1; then
  ok "nonfinite skip: 3 of 4 steps skipped and counted (grad_norm null in JSONL), the saved model finite"
else bad "nonfinite skip: $(tail -3 Sk.log)"; fi

# ---- the log and checkpoints across resumes and a kill -----------------------------------------
run L sh ', "keep_last": 2'; sed -i 's/"steps": 4/"steps": 8/' L.json
$Z train --stage pretrain --config L.json --stop-after 4 > /dev/null 2>&1
$Z train --stage pretrain --config L.json --resume L/ckpt-000004.h5 > /dev/null 2>&1
[ "$(cd L && ls ckpt-*.h5 | tr '\n' ' ')" = "ckpt-000006.h5 ckpt-000008.h5 " ] \
  && ok "keep_last 2 after --resume: the checkpoints of before counted" || bad "keep_last after resume: $(ls L)"
$Z train --stage pretrain --config L.json --resume L/ckpt-000006.h5 > /dev/null 2>&1
steps() { python3 -c "import json, sys; print(' '.join(str(json.loads(l)['step']) for l in open(sys.argv[1])))" "$1"; }
[ "$(steps L/train.jsonl)" = "1 2 3 4 5 6 7 8" ] && ok "resume from step 6: steps 7-8 of before dropped, logged once" \
  || bad "log after resume: $(steps L/train.jsonl 2>&1)"
run KL sh ', "keep_last": 2'; sed -i 's/"steps": 4/"steps": 100000/; s/"save_every": 2/"save_every": 3/' KL.json
$Z train --stage pretrain --config KL.json > KL.log 2>&1 &
kp=$!
for i in $(seq 1 300); do grep -q '"step":8,' KL/train.jsonl 2>/dev/null && break; sleep 0.1; done
kill -9 $kp; wait $kp 2>/dev/null
last=$(cd KL && ls ckpt-*.h5 | tail -1)
n=$(wc -l < KL/train.jsonl)
if steps KL/train.jsonl > /dev/null 2>&1; then ok "killed run: all $n lines of train.jsonl whole JSON"; else bad "killed run: a torn line: $(tail -c 300 KL/train.jsonl)"; fi
# a kill during a save leaves its temporary (nothing runs to remove it): the next run removes it
stale=KL/ckpt-999999.h5.tmp.999999999; : > $stale
s0=$(echo "$last" | sed 's/ckpt-0*\([0-9]*\).h5/\1/')
$Z train --stage pretrain --config KL.json --resume "KL/$last" --stop-after $((s0 + 2)) > KL2.log 2>&1
! ls KL/*.tmp* > /dev/null 2>&1 && grep -q "train: removed $stale, a save of an earlier run that never finished" KL2.log \
  && ok "resume removes the killed run's unfinished save" || bad "after resume: $(ls KL) $(grep removed KL2.log)"
[ "$(steps KL/train.jsonl)" = "$(seq -s ' ' 1 $((s0 + 2)))" ] && ok "killed at step >= 8, resumed from $last: steps 1..$((s0 + 2)) once each" \
  || bad "resume after kill: $(steps KL/train.jsonl 2>&1)"

# ---- one rank's error, a killed rank: every rank down within the time bound -------------------
mkdir tp1 && cp "$FX"/hf-llama-tiny/* tp1/
python3 - <<'PY'
import json, struct
# a NaN in the last row of layer 0's gate_proj [160, 64]: rows 80.. are TP rank 1's slice
for p in sorted(__import__("glob").glob("tp1/model-*.safetensors")):
    b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    k = "model.layers.0.mlp.gate_proj.weight"
    if k in h:
        s, e = h[k]["data_offsets"]
        b[8 + n + e - 2:8 + n + e] = bytes([0xc0, 0x7f])
        open(p, "wb").write(b)
PY
mpi_fails "an error on rank 1 only (NaN in its --tp 2 slice)" "model.layers.0.mlp.gate_proj.weight' holds 1 NaN" 2 \
  $Z generate --model tp1 --tp 2 --prompt-ids 1,2,3 --max-new 4
run K sh; sed -i 's/"steps": 4/"steps": 100000/; s/"save_every": 2/"save_every": 0/' K.json
t0=$SECONDS
$MPI -n 2 $Z train --stage pretrain --config K.json > K.log 2>&1 &
mp=$!
for i in $(seq 1 300); do grep -q '"step":2,' K/train.jsonl 2>/dev/null && break; sleep 0.2; done
victim=$(pgrep -f "^$Z train --stage pretrain --config K.json" | sort -n | tail -1)
if [ -n "$victim" ]; then
  kill -9 "$victim"
  wait $mp; rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && ! pgrep -f "^$Z train --stage pretrain --config K.json" > /dev/null; then ok "a rank killed with SIGKILL: all gone (rc $rc) in $((SECONDS - t0)) s"
  else bad "killed rank: rc $rc after $((SECONDS - t0)) s; left: $(pgrep -fa 'config K.json')"; fi
else
  bad "killed rank: no rank found to kill ($(tail -3 K.log))"; kill $mp 2>/dev/null; wait $mp
fi

echo "$pass passed, $fail failed"
[ $fail = 0 ]
