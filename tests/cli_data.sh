#!/bin/bash
# zebra data: a small run end to end, and one-line errors with a non-zero exit on bad input
# (malformed JSONL names file and line, missing file, bad flags), never a half-written set.
# usage: cli_data.sh ZEBRA FIXTURES
set -u
. "$(dirname "$0")/cli_lib.sh"
zebra=$1
tok=$2/llama3-tokenizer/tokenizer.json
fail=0
d=$(mktemp -d /tmp/zb_cli_data_XXXXXX)
trap 'rm -rf "$d"' EXIT
check() { if [ "$2" = "$3" ]; then echo "PASS $1"; else echo "FAIL $1: got '$2' want '$3'"; fail=1; fi; }
# expect_fail NAME PATTERN ARGS...: non-zero exit, exactly one line on stderr, containing PATTERN
expect_fail() {
  local name=$1 pat=$2; shift 2
  err=$("$zebra" data "$@" 2>&1 >/dev/null); rc=$?
  check "$name: non-zero exit" "$([ $rc -ne 0 ] && echo yes)" "yes"
  check "$name: one line" "$(err_lines "$err")" "1"
  case "$err" in *"$pat"*) echo "PASS $name: $err";; *) echo "FAIL $name: '$err' lacks '$pat'"; fail=1;; esac
}

printf 'One small document.\n' > "$d/a.txt"
printf 'Another one, a little longer than the first.\n' > "$d/b.txt"
out=$("$zebra" data --tokenizer "$tok" --input "$d/a.txt" "$d/b.txt" -o "$d/ok" --val-fraction 0.5)
check "good run exits 0" "$?" "0"
case "$out" in "data: 2 files, 2 docs (1 val)"*) echo "PASS summary: $out";; *) echo "FAIL summary: $out"; fail=1;; esac
check "manifest written" "$(grep -c '"format":	"zebra-shards"' "$d/ok/manifest.json")" "1"
# rerunning onto an existing shard set replaces it
"$zebra" data --tokenizer "$tok" --input "$d/a.txt" -o "$d/ok" --val-fraction 0 >/dev/null
check "replaced set" "$(grep -c '"val_fraction":	0,' "$d/ok/manifest.json")" "1"

printf '{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken\n{"text": "never read"}\n' > "$d/bad.jsonl"
expect_fail "malformed jsonl" "$d/bad.jsonl:3: malformed JSON" --tokenizer "$tok" --input "$d/bad.jsonl" -o "$d/x"
printf '{"text": "fine"}\n{"body": "no text"}\n' > "$d/notext.jsonl"
expect_fail "jsonl without text" "$d/notext.jsonl:2: no \"text\" string" --tokenizer "$tok" --input "$d/notext.jsonl" -o "$d/x"
printf '{"messages": [{"role": "user"}]}\n' > "$d/chat.jsonl"
expect_fail "chat without content" "$d/chat.jsonl:1:" --tokenizer "$tok" --format chat --input "$d/chat.jsonl" -o "$d/x"
printf '{"prompt": "p", "chosen": "c"}\n' > "$d/pref.jsonl"
expect_fail "pref without rejected" "$d/pref.jsonl:1:" --tokenizer "$tok" --format pref --input "$d/pref.jsonl" -o "$d/x"
expect_fail "missing file" "$d/nope.txt" --tokenizer "$tok" --input "$d/a.txt" "$d/nope.txt" -o "$d/x"
expect_fail "missing tokenizer" "/nonexistent/tokenizer.json" --tokenizer /nonexistent/tokenizer.json --input "$d/a.txt" -o "$d/x"
expect_fail "no -o" "-o" --tokenizer "$tok" --input "$d/a.txt"
expect_fail "bad format" "--format" --tokenizer "$tok" --input "$d/a.txt" -o "$d/x" --format yaml
expect_fail "bad val fraction" "--val-fraction" --tokenizer "$tok" --input "$d/a.txt" -o "$d/x" --val-fraction 1.5
mkdir -p "$d/precious" && echo keep > "$d/precious/file"
expect_fail "foreign output dir" "not a shard set" --tokenizer "$tok" --input "$d/a.txt" -o "$d/precious"
check "foreign dir untouched" "$(cat "$d/precious/file")" "keep"
check "no output after failures" "$(ls -d "$d"/x* 2>/dev/null | wc -l)" "0"
check "no temp dirs left" "$(ls -d "$d"/*.tmp-* 2>/dev/null | wc -l)" "0"
# a failed run leaves an existing good set as it was
"$zebra" data --tokenizer "$tok" --input "$d/bad.jsonl" -o "$d/ok" 2>/dev/null
check "good set survives a failed rewrite" "$(grep -c '"val_fraction":	0,' "$d/ok/manifest.json")" "1"
exit $fail
