#!/usr/bin/env bash
# cluster/corpus.sh — print the input path of the demo's English corpus for `zebra data`,
# installing it first if it is missing.
#
# The corpus is the reStructuredText source of the Python 3.11 documentation from the Debian
# 12 package python3.11-doc: 497 .txt files, ~12 MB of English prose (tutorial, howtos, FAQ,
# language reference, library reference, "what's new"), ~2.6 M Llama-3 tokens. It is plain
# text (no HTML to strip) and installs from the main archive (~70 MB installed, depends only
# on libjs-jquery / libjs-underscore). ZB_CORPUS=PATH overrides it.
#   usage: zebra data --tokenizer T --input "$(bash cluster/corpus.sh)" -o shards/
set -euo pipefail
PKG=python3.11-doc
DIR=/usr/share/doc/python3.11/html/_sources
if [ -n "${ZB_CORPUS:-}" ]; then echo "$ZB_CORPUS"; exit 0; fi
if [ ! -d "$DIR" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "corpus: installing $PKG" >&2
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$PKG"; } >&2
fi
[ -d "$DIR" ] || { echo "corpus: $DIR missing after installing $PKG" >&2; exit 1; }
echo "$DIR"
