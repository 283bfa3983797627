#!/bin/sh
# Drives headless Neovim's built-in LSP client against `kiln lsp` with a broken recipe (3 heads
# do not divide the width 16) and prints the diagnostics and the hover it received. Exits 0
# (and says so) where nvim is not installed. KILN names the binary (default: target/debug/kiln,
# else `kiln` on the PATH).
set -e
root="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v nvim >/dev/null 2>&1; then
  echo "nvim is not installed: the Neovim check is skipped"
  exit 0
fi
if [ -z "$KILN" ]; then
  KILN="${CARGO_TARGET_DIR:-$root/target}/debug/kiln"
  [ -x "$KILN" ] || KILN=kiln
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/recipes"
sed 's/heads: 2/heads: 3/' "$root/recipes/anbn-inline.yaml" > "$dir/recipes/broken.yaml"
# check.lua quits on success; a Lua error leaves nvim at its next -c, which exits with status 2.
# `timeout` bounds the whole run where it exists.
bound=""
command -v timeout >/dev/null 2>&1 && bound="timeout 120"
KILN="$KILN" KILN_CHECK_FILE="$dir/recipes/broken.yaml" \
  $bound nvim --headless --clean -n -c "luafile $root/editors/nvim/check.lua" -c "cquit 2" 2>&1
