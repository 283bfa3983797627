#!/bin/sh
# Checks the VS Code extension's packaging (editors/vscode/check.js) where node is installed;
# with `vsce` installed as well, also packs it (npx --no-install: nothing is downloaded).
# Exits 0 (and says so) where node is absent.
set -e
cd "$(dirname "$0")"
if ! command -v node >/dev/null 2>&1; then
  echo "node is not installed: the VS Code extension check is skipped"
  exit 0
fi
node check.js
if command -v vsce >/dev/null 2>&1 && [ -d node_modules ]; then
  out="$(mktemp -d)/kiln-lsp.vsix"
  vsce package --allow-missing-repository --skip-license --out "$out" </dev/null \
    && echo "packed $out"
fi
