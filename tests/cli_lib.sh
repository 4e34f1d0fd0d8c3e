# tests/cli_lib.sh — sourced by the cli_*.sh tests.
# Rank 0 may print one environment notice before any command's own output (OpenBLAS running
# its generic core on a CPU with AVX2 / AVX-512, launch/cmd_runtime.c): a property of the
# machine, not of the command. The one-line-error checks count the other lines:
#   err_lines TEXT   lines of TEXT (as `printf '%s\n' TEXT | wc -l` would) less that notice
#   err_file_lines F the same for a file (as `wc -l < F`)
zb_env_notice='^zebra: warning: OpenBLAS chose its generic core'
err_lines() { printf '%s\n' "$1" | grep -vc "$zb_env_notice"; }
err_file_lines() { grep -vc "$zb_env_notice" "$1"; }
