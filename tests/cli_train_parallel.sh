#!/usr/bin/env bash
# cli_train_parallel — `zebra train` across ranks (SPEC §9) on a hybrid model
# (MLA + Mamba2 + attention, tests/tp-hybrid.json with a 264-token vocabulary), 20 steps each,
# losses from the JSONL logs compared per step with the 1-rank run A (1 rank x 4 rows):
#   NP=2: TP=2 (within the split-run floor, below); TP=2 stop at 10 + --resume == straight TP=2;
#         the TP=2-written checkpoint resumed on 1 rank (TP=1: model + sliced moments) == A;
#         DP=2 with tiny gradient buckets (many overlapped MPI_Iallreduce) == A;
#         DP=2 ZeRO-1 (buckets reduce-scattered during the backward, node-shared memory) == DP=2,
#         == ZeRO-1 with one reduce-scatter after the backward and == MPI_Ireduce_scatter buckets
#         bit for bit, and == its parameters' all-gather after the optimizer in one call instead
#         of bucket by bucket waited for by the forward (bit for bit); a ZeRO DP=2 checkpoint
#         resumed at DP=1 == A; the buckets through
#         MPI_Iallreduce (with and without a progress thread) == through node-shared memory, bit
#         for bit (also at DP=4 and DP=3 under NP=4).
#         The embedding's token rows reduced apart and the MLP buckets early (the defaults) ==
#         the dense paths before bit for bit (untied); tied embeddings at DP=2 (and x 2
#         accumulated micro-batches, and with ZB_DP_SPARSE_EMBED=0) == 1 rank.
#   NP=4: TP=2 x DP=2 == A; TP=2 x DP=2 ZeRO (MPI_Ireduce_scatter buckets) == the same without;
#         DP=4 ZeRO == DP=4; the ZeRO DP=4 checkpoint resumed at TP=2 x DP=2 == A;
#         TP=4 == A; sizes that do not divide: one clear error, every rank stops.
#   NP=2 also: KD with the teacher TP-sharded (TP=2 == 1 rank).
#   PP (1F1B over grad_accum micro-batches): NP=2: PP=2 == A; stop at 10 + resume ==
#         straight; the PP checkpoint resumed on 1 rank == A.
#   Distillation under PP (teacher / reference pipelined), each == its 1-rank run:
#         NP=2: KD PP=2 (+ resume), KD from a shallower teacher PP=2, ILD PP=2, DP=2 and TP=2 (and
#         DP=2 of the mixer_mse form), SFT PP=2, DPO PP=2; NP=4: KD TP2xPP2 and PP=4, ILD PP2xDP2
#         ZeRO and TP2xPP2, DPO TP2xPP2.
#         NP=4: TP=2 x PP=2 == A; PP=2 x DP=2 == A; tied embeddings: PP=4 == 1 rank, PP=2 x DP=2
#         (buckets) and PP=2 x DP=2 ZeRO == 1 rank, its checkpoint resumed at TP=2 x PP=2 == 1 rank.
# args: ZEBRA FIXTURES SRCDIR MPIEXEC NP
# Comparisons (tests/cli_lib.sh): a layout against its 1-rank reference X within the divergence
# of X from X2 (the same 1-rank run with each batch as two accumulated halves: the same
# mathematics, another summation order) scaled by the ratio of the two first-step gradient
# perturbations (tests/zb_path); ZeRO against plain DP within A's; a resume against the
# straight run and SFT at PP=2 (the same micro-batches, each row by the same code) bit for bit.
set -euo pipefail
. "$(dirname "$0")/cli_lib.sh"
Z=$1; SRC=$3; MPIEXEC=$4; NP=$5
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"
MPI="$MPIEXEC --allow-run-as-root --oversubscribe"
fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
losses() { grep '"loss"' "$1" | sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/'; }
same() {   # name A B TOL: both 20 steps and max rel diff <= TOL (a scaled floor, below)
  local m; m=$(loss_maxrel "$2" "$3")
  check "$1: max rel diff $m (<= $4)" "[ \"\$(wc -l < $2)\" = 20 ] && [ \"\$(wc -l < $3)\" = 20 ] && loss_within $2 $3 $4 1"
}
exact() {   # name A B: both 20 steps, the same losses bit for bit
  check "$1: bit for bit" "[ \"\$(wc -l < $2)\" = 20 ] && cmp -s $2 $3"
}
PATHTOOL=$(dirname "$Z")/tests/zb_path; [ -x "$PATHTOOL" ] || PATHTOOL=$(dirname "$Z")/zb_path
floor() {   # floor VAR REF SPLIT ROWS MODEL [TEACHER]: VAR = the tolerance of layouts against REF:
            # loss_maxrel of REF and its split run (which must differ, by rounding only) x the
            # ratio of zb_path for ROWS x 32 tokens (cli_lib.sh)
  local f s; f=$(loss_maxrel "$2" "$3"); s=$("$PATHTOOL" 32 $(($4 * 32)) "${@:5}")
  check "split run $3 differs from $2 by rounding ($f; x $s)" "awk 'BEGIN{exit !($f > 0 && $f < 1e-3 && $s > 0)}'"
  printf -v "$1" '%s' "$(awk -v f="$f" -v s="$s" 'BEGIN { printf "%.3g", f * s }')"
}
run() {   # run NP OUT MICRO_BATCH EXTRA_JSON [zebra args...]; env GA: grad_accum (1), MODEL (hyb.json),
          # STAGE (pretrain), DATA (shards)
  local np=$1 out=$2 mb=$3 extra=$4; shift 4
  printf '%s\n' "$(sed -e "s/\"micro_batch\": 4/\"micro_batch\": $mb/" -e "s/\"grad_accum\": 1/\"grad_accum\": ${GA:-1}/" \
    -e "s/\"hyb.json\"/\"${MODEL:-hyb.json}\"/" -e "s/\"shards\"/\"${DATA:-shards}\"/" -e "s/\"lr\": 3e-3/\"lr\": ${LR:-3e-3}/" base.json)$extra, \"out\": \"$out\"}" > "$out.json"
  if [ "$np" = 1 ]; then $Z train --stage "${STAGE:-pretrain}" --config "$out.json" "$@" >> "$out.log" 2>&1 || true
  else $MPI -n "$np" $Z train --stage "${STAGE:-pretrain}" --config "$out.json" "$@" >> "$out.log" 2>&1 || true; fi
  losses "$out/train.jsonl" > "$out.txt" 2>/dev/null || true
}

$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input "$SRC/core" -o shards --val-fraction 0.2 --seed 1 >/dev/null 2>&1
sed 's/"vocab_size": 256/"vocab_size": 264/' "$SRC/tests/tp-hybrid.json" > hyb.json
cat > base.json <<J
{"model": "hyb.json", "data": "shards", "seq_len": 32, "micro_batch": 4, "grad_accum": 1,
 "steps": 20, "lr": 3e-3, "min_lr": 3e-4, "warmup": 2, "log_every": 1, "eval_batches": 0, "seed": 3
J
run 1 A 4 ""
GA=2 run 1 A2 2 ""
floor FA A.txt A2.txt 4 hyb.json
# distillation stages under PP: a random student hybrid, the trained A as KD teacher / DPO
# reference, a random all-attention model of the same shape as ILD teacher; preference pairs
$Z init --random --config hyb.json -o student.h5 --seed 4 >/dev/null 2>&1
sed 's/"layer_kinds": \[[^]]*\]/"layer_kinds": ["attention", "attention", "attention", "attention", "attention"]/' hyb.json > att.json
$Z init --random --config att.json -o att.h5 --seed 5 >/dev/null 2>&1
for i in $(seq 1 40); do
  echo "{\"prompt\": \"what is $i squared?\", \"chosen\": \"$((i*i))\", \"rejected\": \"no idea, sorry\"}"
done > pref.jsonl
$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input pref.jsonl --format pref -o pref --val-fraction 0.2 >/dev/null 2>&1
KD=', "teacher": "A/model.h5", "kl_weight": 1, "ce_weight": 0.5'
ILD=', "teacher": "att.h5"'
DPO=', "beta": 0.5'   # at lr 1e-4: at 3e-3 the loss falls to 1e-7 within 4 steps, where its
                      # relative value is the rounding of z = beta * (sums of ~100 log-probs)
MODEL=student.h5 STAGE=kd run 1 KA 4 "$KD"
MODEL=student.h5 STAGE=kd GA=2 run 1 KA2 2 "$KD"
floor FKA KA.txt KA2.txt 4 student.h5 A/model.h5
MODEL=student.h5 STAGE=ild run 1 IA 4 "$ILD"
MODEL=student.h5 STAGE=ild GA=2 run 1 IA2 2 "$ILD"
floor FIA IA.txt IA2.txt 4 student.h5 att.h5
MODEL='A\/model.h5' LR=1e-4 STAGE=dpo DATA=pref run 1 DA 2 "$DPO"
MODEL='A\/model.h5' LR=1e-4 STAGE=dpo DATA=pref GA=2 run 1 DA2 1 "$DPO"
floor FDA DA.txt DA2.txt 2 A/model.h5 A/model.h5
for i in $(seq 1 40); do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"say $i\"}, {\"role\": \"assistant\", \"content\": \"number $i is $((i*i))\"}]}"
done > chat.jsonl
$Z data --tokenizer "$SRC/configs/bytes-tokenizer.json" --input chat.jsonl --format chat -o chat --val-fraction 0.2 >/dev/null 2>&1
sed 's/"tie_word_embeddings": false/"tie_word_embeddings": true/' hyb.json > tied.json
MODEL=tied.json run 1 TA 4 ""
MODEL=tied.json GA=2 run 1 TA2 2 ""
floor FTA TA.txt TA2.txt 4 tied.json
# (sft: each micro-batch's loss is the mean over ITS unmasked tokens, so the reference is
# 1 rank with the same 4 micro-batches of 1 row)
MODEL='A\/model.h5' STAGE=sft DATA=chat GA=4 run 1 SA 1 ""

if [ "$NP" = 2 ]; then
  run 2 T 4 "" --tp 2
  same "TP=2 == 1 rank" A.txt T.txt $FA
  run 2 R 4 "" --tp 2 --stop-after 10
  run 2 R 4 "" --tp 2 --resume R/ckpt-000010.h5
  exact "TP=2: 10 steps + resume (same layout) == 20 steps" T.txt R.txt
  run 2 X 4 "" --tp 2 --stop-after 10
  run 1 X 4 "" --resume X/ckpt-000010.h5
  same "TP=2 checkpoint (model + moments by slices) resumed at TP=1 == 1 rank" A.txt X.txt $FA
  run 2 D 2 ", \"bucket_mb\": 0.002"
  same "DP=2, 2 rows each, 0.002 MB buckets overlapped with the backward == 1 rank x 4 rows" A.txt D.txt $FA
  # the embedding's gradient rows of the step's tokens reduced apart (their union over the ranks)
  # and the MLP's buckets started before its block's mixer backward (parallel/dp.c, the
  # defaults) against the paths before: bit for bit untied (a row outside the tokens is 0 + 0
  # either way, the same sums), within A's floor tied ((h0 + h1) + (e0 + e1), another grouping)
  ZB_DP_SPARSE_EMBED=0 ZB_DP_MLP_EARLY=0 run 2 DE 2 ", \"bucket_mb\": 0.002"
  exact "DP=2: the embedding's token rows reduced apart, MLP buckets early == the dense paths before" D.txt DE.txt
  GA=2 run 2 DG 1 ", \"bucket_mb\": 0.002"
  same "DP=2 x 2 accumulated micro-batches (earlier embedding rows in its dense buckets) == 1 rank" A.txt DG.txt $FA
  MODEL=tied.json run 2 TS 2 ", \"bucket_mb\": 0.002"
  same "tied: DP=2, the head's gradient reduced during the blocks, the token rows apart == 1 rank" TA.txt TS.txt $FTA
  MODEL=tied.json GA=2 run 2 TG 1 ""
  same "tied: DP=2 x 2 accumulated micro-batches, 25 MB buckets == 1 rank" TA.txt TG.txt $FTA
  MODEL=tied.json ZB_DP_SPARSE_EMBED=0 run 2 TE 2 ", \"bucket_mb\": 0.002"
  same "tied: DP=2 with the dense embedding buckets (ZB_DP_SPARSE_EMBED=0) == 1 rank" TA.txt TE.txt $FTA
  # the buckets' paths (parallel/dp.h): node-shared memory (the default here), MPI_Iallreduce
  # progressed by the hooks' tests or by a progress thread: the same additions, the same bits
  ZB_DP_ALLREDUCE=mpi run 2 DM 2 ", \"bucket_mb\": 0.002"
  exact "DP=2: MPI_Iallreduce buckets == the node-shared all-reduce" D.txt DM.txt
  ZB_DP_ALLREDUCE=mpi ZB_DP_PROGRESS=thread:20 run 2 DT 2 ", \"bucket_mb\": 0.002"
  exact "DP=2: MPI_Iallreduce with a progress thread == the node-shared all-reduce" D.txt DT.txt
  ZB_DP_ALLREDUCE=tree run 2 DB 2 ""
  check "ZB_DP_ALLREDUCE=tree: one clear error, no step" "grep -q 'ZB_DP_ALLREDUCE=tree: expected auto, mpi or shm' DB.log && [ ! -s DB.txt ]"
  run 2 Zr 2 ", \"zero\": true, \"bucket_mb\": 0.002"
  same "DP=2 ZeRO-1, 0.002 MB buckets reduce-scattered during the backward == DP=2" D.txt Zr.txt $FA
  # 2 ranks: each float is a + b whichever way it is reduce-scattered
  ZB_ZERO_REDUCE=after run 2 Zw 2 ", \"zero\": true"
  exact "DP=2 ZeRO-1: the buckets' reduce-scatters == one after the backward (ZB_ZERO_REDUCE=after)" Zr.txt Zw.txt
  ZB_ZERO_GATHER=after run 2 Zg 2 ", \"zero\": true, \"bucket_mb\": 0.002"
  exact "DP=2 ZeRO-1: the parameters gathered bucket by bucket, waited for by the next forward == one all-gather after the optimizer (ZB_ZERO_GATHER=after)" Zr.txt Zg.txt
  ZB_ZERO_GATHER=later run 2 ZG 2 ", \"zero\": true"
  check "ZB_ZERO_GATHER=later: one clear error, no step" "grep -q 'ZB_ZERO_GATHER=later: expected overlap or after' ZG.log && [ ! -s ZG.txt ]"
  ZB_DP_ALLREDUCE=mpi run 2 Zm 2 ", \"zero\": true, \"bucket_mb\": 0.002"
  exact "DP=2 ZeRO-1: MPI_Ireduce_scatter buckets == the node-shared reduce-scatter" Zr.txt Zm.txt
  ZB_ZERO_REDUCE=later run 2 ZB 2 ", \"zero\": true"
  check "ZB_ZERO_REDUCE=later: one clear error, no step" "grep -q 'ZB_ZERO_REDUCE=later: expected overlap or after' ZB.log && [ ! -s ZB.txt ]"
  run 2 ZR 2 ", \"zero\": true" --stop-after 10
  run 1 ZR 4 "" --resume ZR/ckpt-000010.h5
  same "ZeRO DP=2 checkpoint (full moments) resumed at DP=1 == 1 rank" A.txt ZR.txt $FA
  GA=2 run 2 G 2 "" --tp 2
  check "TP=2 with grad_accum 2 runs: $(tail -1 G.txt)" '[ "$(wc -l < G.txt)" = 20 ]'
  # pipeline parallel: 2 stages, 1F1B over 4 micro-batches of 1 row == 1 rank x 4 rows
  GA=4 run 2 PP 1 "" --pp 2
  same "PP=2 (1F1B, 4 micro-batches) == 1 rank" A.txt PP.txt $FA
  GA=4 run 2 PM 1 ", \"pp_balance\": \"measured\"" --pp 2
  same "PP=2 cut by measured layer times (rank 0 times, every rank uses its cut) == 1 rank" A.txt PM.txt $FA
  check "PP logs each stage's compute time per step: $(grep -o '"stage_busy_s":[^]]*]' PM/train.jsonl | tail -1)" \
    'grep -q "\"stage_busy_s\":\[[0-9.]*,[0-9.]*\]" PM/train.jsonl && grep -q "pipeline stages (measured)" PM.log'
  GA=4 run 2 PB 1 ", \"pp_balance\": \"fast\"" --pp 2
  check "pp_balance \"fast\": one clear error" 'grep -q "pp_balance is \"model\" or \"measured\"" PB.log && [ ! -s PB.txt ]'
  GA=4 run 2 PR 1 "" --pp 2 --stop-after 10
  GA=4 run 2 PR 1 "" --pp 2 --resume PR/ckpt-000010.h5
  exact "PP=2: 10 steps + resume == 20 steps" PP.txt PR.txt
  GA=4 run 2 PX 1 "" --pp 2 --stop-after 10
  run 1 PX 4 "" --resume PX/ckpt-000010.h5
  same "PP=2 checkpoint (stage-local model + moments) resumed at 1 rank == 1 rank" A.txt PX.txt $FA
  # KD with the teacher TP-sharded too (vocab-parallel KL + CE): TP=2 == 1 rank
  MODEL=student.h5 STAGE=kd run 2 KT 4 "$KD" --tp 2
  same "KD (teacher TP-sharded) at TP=2 == 1 rank" KA.txt KT.txt $FKA
  # the teacher pipelined with the student (its stage forward ahead of the student's, same cut)
  MODEL=student.h5 STAGE=kd GA=4 run 2 KP 1 "$KD" --pp 2
  same "KD, teacher pipelined: PP=2 == 1 rank" KA.txt KP.txt $FKA
  MODEL=student.h5 STAGE=kd GA=4 run 2 KR 1 "$KD" --pp 2 --stop-after 10
  MODEL=student.h5 STAGE=kd GA=4 run 2 KR 1 "$KD" --pp 2 --resume KR/ckpt-000010.h5
  exact "KD PP=2: 10 steps + resume == 20 steps" KP.txt KR.txt
  # a teacher of another depth (3 attention layers for the 5-layer student): each model its own cut
  sed 's/"num_hidden_layers": 5/"num_hidden_layers": 3/; s/"layer_kinds": \[[^]]*\]/"layer_kinds": ["attention", "attention", "attention"]/' hyb.json > t3.json
  $Z init --random --config t3.json -o t3.h5 --seed 5 >/dev/null 2>&1
  KD3=', "teacher": "t3.h5", "kl_weight": 1, "ce_weight": 0.5'
  MODEL=student.h5 STAGE=kd run 1 K3A 4 "$KD3"
  MODEL=student.h5 STAGE=kd GA=2 run 1 K3A2 2 "$KD3"
  floor FK3 K3A.txt K3A2.txt 4 student.h5 t3.h5
  MODEL=student.h5 STAGE=kd GA=4 run 2 K3P 1 "$KD3" --pp 2
  same "KD from a 3-layer teacher to the 5-layer student, both pipelined (own cuts): PP=2 == 1 rank" K3A.txt K3P.txt $FK3
  MODEL=student.h5 STAGE=ild GA=4 run 2 IP 1 "$ILD" --pp 2
  same "ILD, teacher pipelined, each stage its layers: PP=2 == 1 rank" IA.txt IP.txt $FIA
  MODEL=student.h5 STAGE=ild run 2 ID 2 "$ILD, \"bucket_mb\": 0.002"
  same "ILD: DP=2, buckets started as each block's backward ends == 1 rank" IA.txt ID.txt $FIA
  MODEL=student.h5 STAGE=ild run 2 IT2 4 "$ILD" --tp 2
  same "ILD: TP=2 == 1 rank" IA.txt IT2.txt $FIA
  MODEL=student.h5 STAGE=ild run 1 IMA 4 "$ILD, \"ild_loss\": \"mixer_mse\""
  MODEL=student.h5 STAGE=ild GA=2 run 1 IMA2 2 "$ILD, \"ild_loss\": \"mixer_mse\""
  floor FIM IMA.txt IMA2.txt 4 student.h5 att.h5
  MODEL=student.h5 STAGE=ild run 2 IMD 2 "$ILD, \"ild_loss\": \"mixer_mse\""
  same "ILD (mixer_mse): DP=2 == 1 rank" IMA.txt IMD.txt $FIM
  MODEL='A\/model.h5' STAGE=sft DATA=chat GA=4 run 2 SP 1 "" --pp 2
  exact "SFT (masked chat turns, the same 4 micro-batches): PP=2 == 1 rank" SA.txt SP.txt
  MODEL='A\/model.h5' LR=1e-4 STAGE=dpo DATA=pref GA=2 run 2 DP 1 "$DPO" --pp 2
  same "DPO, reference pipelined: PP=2 == 1 rank" DA.txt DP.txt $FDA
fi
if [ "$NP" = 4 ]; then
  run 4 P 2 "" --tp 2
  same "TP=2 x DP=2 == 1 rank" A.txt P.txt $FA
  ZB_DP_ALLREDUCE=mpi run 4 PZ 2 ", \"zero\": true, \"bucket_mb\": 0.002" --tp 2
  same "TP=2 x DP=2 ZeRO-1 == TP=2 x DP=2" P.txt PZ.txt $FA
  run 4 Q 1 ", \"bucket_mb\": 0.01"
  same "DP=4, 1 row each == 1 rank x 4 rows" A.txt Q.txt $FA
  ZB_DP_ALLREDUCE=mpi run 4 QM 1 ", \"bucket_mb\": 0.01"
  ZB_DP_ALLREDUCE=shm run 4 QS 1 ", \"bucket_mb\": 0.01"
  exact "DP=4: MPI_Iallreduce buckets == the node-shared all-reduce" QM.txt QS.txt
  ZB_DP_ALLREDUCE=mpi run 3 Q3M 1 ", \"bucket_mb\": 0.01"
  run 3 Q3S 1 ", \"bucket_mb\": 0.01"
  exact "DP=3 (not a power of two): MPI_Iallreduce buckets == the node-shared all-reduce" Q3M.txt Q3S.txt
  run 4 QZ 1 ", \"zero\": true, \"bucket_mb\": 0.01"
  same "DP=4 ZeRO-1 == DP=4" Q.txt QZ.txt $FA
  run 4 QR 1 ", \"zero\": true" --stop-after 10
  run 4 QR 2 "" --tp 2 --resume QR/ckpt-000010.h5
  same "ZeRO DP=4 checkpoint resumed at TP=2 x DP=2 == 1 rank" A.txt QR.txt $FA
  # pipeline parallel x TP / DP (1F1B with grad_accum 2), tied embeddings (copy on first and last stage)
  GA=2 run 4 PT 2 "" --tp 2 --pp 2
  same "TP=2 x PP=2 == 1 rank" A.txt PT.txt $FA
  GA=2 run 4 PD 1 ", \"bucket_mb\": 0.002" --pp 2
  same "PP=2 x DP=2 == 1 rank" A.txt PD.txt $FA
  MODEL=tied.json GA=4 run 4 TQ 1 "" --pp 4
  same "tied embeddings: PP=4 == 1 rank" TA.txt TQ.txt $FTA
  MODEL=tied.json GA=2 run 4 TD 1 ", \"bucket_mb\": 0.002" --pp 2
  same "tied embeddings: PP=2 x DP=2, buckets overlapping the last backward, then the tied sum == 1 rank" TA.txt TD.txt $FTA
  MODEL=tied.json GA=2 run 4 TZ 1 ", \"zero\": true, \"bucket_mb\": 0.002" --pp 2
  same "tied embeddings: PP=2 x DP=2 ZeRO-1 == 1 rank" TA.txt TZ.txt $FTA
  MODEL=tied.json GA=2 run 4 TR 1 ", \"zero\": true" --pp 2 --stop-after 10
  MODEL=tied.json GA=2 run 4 TR 2 "" --tp 2 --pp 2 --resume TR/ckpt-000010.h5
  same "tied: PP=2 x DP=2 ZeRO checkpoint resumed at TP=2 x PP=2 == 1 rank" TA.txt TR.txt $FTA
  # distillation stages with the teacher / reference pipelined, with TP and DP
  MODEL=student.h5 STAGE=kd GA=2 run 4 KQ 2 "$KD" --tp 2 --pp 2
  same "KD, teacher pipelined: TP=2 x PP=2 == 1 rank" KA.txt KQ.txt $FKA
  MODEL=student.h5 STAGE=kd GA=4 run 4 K4 1 "$KD" --pp 4
  same "KD, teacher pipelined: PP=4 == 1 rank" KA.txt K4.txt $FKA
  MODEL=student.h5 STAGE=ild GA=2 run 4 IQ 1 "$ILD, \"zero\": true" --pp 2
  same "ILD: PP=2 x DP=2 ZeRO-1 == 1 rank" IA.txt IQ.txt $FIA
  MODEL=student.h5 STAGE=ild GA=2 run 4 IT 2 "$ILD" --tp 2 --pp 2
  same "ILD: TP=2 x PP=2 == 1 rank" IA.txt IT.txt $FIA
  MODEL='A\/model.h5' LR=1e-4 STAGE=dpo DATA=pref run 4 DQ 2 "$DPO" --tp 2 --pp 2
  same "DPO, reference pipelined: TP=2 x PP=2 == 1 rank" DA.txt DQ.txt $FDA
  # sizes that do not divide: one clear error, every rank stops
  printf '%s\n' "$(cat base.json), \"out\": \"E\"}" > E.json
  if $MPI -n 4 $Z train --stage pretrain --config E.json --tp 4 > E.log 2>&1; then rc=0; else rc=$?; fi
  losses E/train.jsonl > E.txt
  same "TP=4 == 1 rank" A.txt E.txt $FA
  printf '%s\n' "$(sed "s#\"hyb.json\"#\"$SRC/configs/demo-llama.json\"#" base.json), \"out\": \"F\"}" > F.json
  if $MPI -n 4 $Z train --stage pretrain --config F.json --tp 4 > F.log 2>&1; then rc=0; else rc=$?; fi
  check "TP=4 of a model with 2 KV heads: one clear error on every rank, no hang (rc $rc)" \
    '[ $rc != 0 ] && grep -q "num_key_value_heads 2 is not divisible by --tp 4" F.log'
  if $MPI -n 4 $Z train --stage pretrain --config E.json --tp 3 > E3.log 2>&1; then rc=0; else rc=$?; fi
  check "--tp 3 on 4 ranks: clear error, no hang (rc $rc)" '[ $rc != 0 ] && grep -qi "divide\|divisible" E3.log'
fi
if [ $fail != 0 ]; then for f in *.log; do echo "== $f"; tail -5 "$f"; done; fi
exit $fail
