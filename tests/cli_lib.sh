# tests/cli_lib.sh — sourced by the cli_*.sh tests.
# Rank 0 may print one environment notice before any command's own output (OpenBLAS running
# its generic core on a CPU with AVX2 / AVX-512, launch/cmd_runtime.c): a property of the
# machine, not of the command. The one-line-error checks count the other lines:
#   err_lines TEXT   lines of TEXT (as `printf '%s\n' TEXT | wc -l` would) less that notice
#   err_file_lines F the same for a file (as `wc -l < F`)
zb_env_notice='^zebra: warning: OpenBLAS chose its generic core'
err_lines() { printf '%s\n' "$1" | grep -vc "$zb_env_notice"; }
err_file_lines() { grep -vc "$zb_env_notice" "$1"; }

# Training curves of two layouts (1 rank against TP / PP / DP ...). Training amplifies rounding
# differences (Adam divides by sqrt(v): a gradient at the rounding level moves its weight by
# lr), and no a-priori bound follows them through the steps. So the amplification is measured:
# the reference X against X2, the same 1-rank run with each batch as two accumulated halves
# (the same mathematics; it re-associates each gradient's final sum over the tokens), and a
# layout may differ from X by that divergence times the ratio of the two first-step gradient
# perturbations, 2 lambda u path M against u sqrt(N) M (zb_test.h; printed by tests/zb_path).
#   loss_maxrel A B   the largest per-step |a - b| / |a| of two "step loss" files ("1" when the
#                     steps differ or a file is empty)
#   loss_within A B FLOOR SCALE   loss_maxrel A B <= SCALE x FLOOR (FLOOR: loss_maxrel of the
#                     reference and its split run; it must not be 0, else it measured nothing)
loss_maxrel() {
  if [ ! -s "$1" ] || [ ! -s "$2" ] || [ "$(wc -l < "$1")" != "$(wc -l < "$2")" ]; then echo 1; return; fi
  paste "$1" "$2" | awk '{if($1!=$3){print 1; exit} r=($2-$4)/$2; if(r<0)r=-r; if(r>m)m=r} END{printf "%.2e\n", m+0}'
}
loss_within() {
  local m; m=$(loss_maxrel "$1" "$2")
  awk -v m="$m" -v f="$3" -v s="$4" 'BEGIN { exit !(f > 0 && m <= s * f) }'
}

# The PASS / FAIL tally of a test script: ok WHAT and bad WHAT count and print a line; same WHAT
# GOT REF passes when GOT is not empty and equals REF (else both are shown); mpi N CMD... runs CMD
# on N ranks through $mpiexec, 120 s at most. The script ends with "$pass passed, $fail failed".
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
same() {   # same WHAT GOT REF
  if [ -n "$3" ] && [ "$2" = "$3" ]; then ok "$1"; else bad "$1"; echo "  got: $2" | head -5; echo "  ref: $3" | head -5; fi
}
mpi() { local n=$1; shift; timeout 120 "$mpiexec" --allow-run-as-root --oversubscribe -n "$n" "$@"; }
