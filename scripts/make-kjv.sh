#!/usr/bin/env bash
# Rebuild data/kjv.txt, the text task's bundled corpus: the King James Version of the Bible
# (public domain) as printed by Debian's `bible-kjv` program from the `bible-kjv-text`
# package (version 4.38 gave the committed file: 4 298 239 bytes, SHA-256
# 6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda).
# Needs root (apt-get) on a Debian or Ubuntu machine.
set -euo pipefail
out="${1:-data/kjv.txt}"
if ! command -v bible >/dev/null; then
  apt-get install -y bible-kjv bible-kjv-text
fi
# One verse per line (no wrapping), a heading per chapter.
bible -l100000 "Gen1:1-Rev22:21" > "$out"
sha256sum "$out"
