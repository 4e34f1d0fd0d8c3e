# tests/fnlen.awk — print "LINES FILE:LINE NAME" for each C function definition (the project's
# style: the signature starts in column 0, the body closes with "}" in column 0).
# Used by tests/check_layers.sh; run by hand: awk -f tests/fnlen.awk core/*.c | sort -rn | head
FNR == 1 { cand = 0; infn = 0 }
infn {
    if ($0 ~ /^}/) { print FNR - start + 1, FILENAME ":" start, name; infn = 0 }
    next
}
/^[A-Za-z_]/ && index($0, "(") && !(index($0, "=") && index($0, "=") < index($0, "(")) {
    cand = 1; start = FNR
    name = substr($0, 1, index($0, "(") - 1); sub(/.*[ *]/, "", name)
}
cand {
    if ($0 ~ /;[ \t]*$/ && $0 !~ /\{/) { cand = 0; next }
    if ($0 ~ /\{[ \t]*(\/\*.*\*\/)?[ \t]*$/) { cand = 0; infn = 1; next }
    if ($0 ~ /\{.*\}[ \t]*$/) { print 1, FILENAME ":" start, name; cand = 0 }
}
