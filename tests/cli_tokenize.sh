#!/bin/bash
# zebra tokenize: reference ids for one case, --decode back, clean failure on bad input.
# usage: cli_tokenize.sh ZEBRA FIXTURES
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1
tok=$2/llama3-tokenizer/tokenizer.json
fail=0
check() { if [ "$2" = "$3" ]; then echo "PASS $1"; else echo "FAIL $1: got '$2' want '$3'"; fail=1; fi; }

out=$("$zebra" tokenize --tokenizer "$tok" --text "I'm sure they'll say it's what we've done, isn't it? I'D SAY SO.")
check "ids from --text" "$out" "40 2846 2771 814 3358 2019 433 596 1148 584 3077 2884 11 4536 956 433 30 358 28805 85729 5745 13"

out=$(printf 'Hello world' | "$zebra" tokenize --tokenizer "$tok")
check "ids from stdin" "$out" "9906 1917"

out=$(echo "128000 9906 1917 128009" | "$zebra" tokenize --tokenizer "$tok" --decode)
check "decode" "$out" "<|begin_of_text|>Hello world<|eot_id|>"

err=$("$zebra" tokenize --tokenizer /nonexistent/tokenizer.json --text hi 2>&1 >/dev/null); rc=$?
check "missing file fails" "$([ $rc -ne 0 ] && echo yes)" "yes"
check "missing file: one line" "$(err_lines "$err")" "1"
case "$err" in *"/nonexistent/tokenizer.json"*) echo "PASS error names the file: $err";;
  *) echo "FAIL error does not name the file: $err"; fail=1;; esac

bad=$(mktemp /tmp/zb_cli_tok_XXXXXX.json)
echo '{"model": {' > "$bad"
err=$("$zebra" tokenize --tokenizer "$bad" --text hi 2>&1 >/dev/null); rc=$?
rm -f "$bad"
check "malformed json fails" "$([ $rc -ne 0 ] && echo yes)" "yes"
check "malformed json: one line" "$(err_lines "$err")" "1"

err=$("$zebra" tokenize --tokenizer "$tok" --decode --text "1 99999999" 2>&1 >/dev/null); rc=$?
check "unknown id fails" "$([ $rc -ne 0 ] && echo yes)" "yes"
exit $fail
