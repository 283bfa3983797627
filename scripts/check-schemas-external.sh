#!/usr/bin/env bash
# Check kiln's committed JSON Schemas (schemas/*.schema.json) and the bundled YAML
# documents (models/*.yaml, recipes/*.yaml) with two independent, non-Rust tools:
#
#   1. ajv-cli (ajv 8, draft-07, strict mode): compile both schemas, validate every
#      bundled file against the schema for its folder (YAML read both by ajv-cli's
#      own loader and after conversion with the `yaml` package), and make sure
#      deliberately broken documents are rejected.
#   2. yaml-language-server (the engine of the VS Code YAML extension), through its
#      language-service API: scripts/yamlls-check.cjs.
#
# Usage: scripts/check-schemas-external.sh
#
# Needs node and npm (and the npm registry the first time). The npm packages go to
# ${KILN_NODE_DIR:-/tmp/kiln-node}, outside the repository; set
# KILN_NODE_REINSTALL=1 to reinstall them. Exits 0 when every check passes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
node_dir="${KILN_NODE_DIR:-/tmp/kiln-node}"
packages=(
  ajv-cli@5
  ajv-formats@3
  yaml@2
  yaml-language-server@1
  vscode-languageserver-textdocument@1
)

command -v node >/dev/null || { echo "error: node not found" >&2; exit 2; }
command -v npm >/dev/null || { echo "error: npm not found" >&2; exit 2; }

installed() {
  local p
  for p in ajv-cli ajv-formats yaml yaml-language-server vscode-languageserver-textdocument; do
    [[ -f "$node_dir/node_modules/$p/package.json" ]] || return 1
  done
}
if [[ "${KILN_NODE_REINSTALL:-0}" == 1 ]] || ! installed; then
  echo "== installing ${packages[*]} into $node_dir"
  mkdir -p "$node_dir"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "${packages[@]}" >&2
fi

ajv="$node_dir/node_modules/.bin/ajv"
version() { node -p "require('$node_dir/node_modules/$1/package.json').version"; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kiln-schema-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

cd "$repo"
schemas=(schemas/model.schema.json schemas/recipe.schema.json)
shopt -s nullglob
models=(models/*.yaml models/*.yml)
recipes=(recipes/*.yaml recipes/*.yml)
shopt -u nullglob
(( ${#models[@]} > 0 && ${#recipes[@]} > 0 )) || { echo "error: no bundled models/recipes found" >&2; exit 1; }

# strict: every strict* option is an error, not a log line (unknown keywords, unknown
# formats, ignored keywords, union types, tuples, `required` naming undefined properties).
# ajv-formats is loaded so that a `format` in the schema is checked, not reported as unknown.
ajv_opts=(--spec=draft7 --strict=true --strict-schema=true --strict-numbers=true --strict-types=true
          --strict-tuples=true --strict-required=true -c ajv-formats)

failed=0   # set to 1 by any failing check; every check still runs
fail() { echo "FAIL: $*"; failed=1; }

echo "== ajv-cli $(version ajv-cli) (ajv $(version ajv)), strict mode"
compiled=0
for s in "${schemas[@]}"; do
  if "$ajv" compile "${ajv_opts[@]}" -s "$s" 2>&1; then
    compiled=$((compiled + 1))
  else
    fail "ajv (strict) does not compile $s"
  fi
done

schema_for() { # bundled file -> its schema
  case "$1" in
    recipes/*) echo schemas/recipe.schema.json ;;
    *) echo schemas/model.schema.json ;;
  esac
}

# 1a. YAML read by ajv-cli itself (js-yaml).
valid=0
for f in "${models[@]}" "${recipes[@]}"; do
  if "$ajv" validate "${ajv_opts[@]}" --all-errors --errors=text -s "$(schema_for "$f")" -d "$f" 2>&1; then
    valid=$((valid + 1))
  else
    fail "ajv: $f is invalid against $(schema_for "$f")"
  fi
done

# 1b. The same files converted to JSON with the `yaml` package (YAML 1.2 core schema,
# the parser yaml-language-server uses), so a js-yaml quirk cannot hide a problem.
mkdir -p "$tmp/json"
valid_yaml=0
if NODE_PATH="$node_dir/node_modules" node -e '
  const fs = require("fs"), path = require("path"), YAML = require("yaml");
  const out = process.argv[1];
  let bad = 0;
  for (const f of process.argv.slice(2)) {
    const doc = YAML.parseDocument(fs.readFileSync(f, "utf8"), { version: "1.2", uniqueKeys: true });
    if (doc.errors.length) { console.log(`FAIL: ${f}: ${doc.errors.join("; ")}`); bad = 1; continue; }
    fs.writeFileSync(path.join(out, f.replace(/\//g, "__") + ".json"), JSON.stringify(doc.toJS()));
  }
  process.exit(bad);' "$tmp/json" "${models[@]}" "${recipes[@]}"; then :; else failed=1; fi
for f in "${models[@]}" "${recipes[@]}"; do
  j="$tmp/json/${f//\//__}.json"
  [[ -f "$j" ]] || continue
  if out="$("$ajv" validate "${ajv_opts[@]}" --all-errors --errors=text -s "$(schema_for "$f")" -d "$j" 2>&1)"; then
    valid_yaml=$((valid_yaml + 1))
  else
    echo "$out"
    fail "ajv: $f (parsed with the yaml package) is invalid against $(schema_for "$f")"
  fi
done
echo "(the same files parsed with yaml $(version yaml) instead of js-yaml: $valid_yaml valid)"

# 1c. Broken documents (the ones scripts/yamlls-check.cjs uses) must be rejected, with
# an error that names the offending key.
mkdir -p "$tmp/broken"
node "$repo/scripts/yamlls-check.cjs" --node-dir "$node_dir" --dump-samples "$tmp/broken"
rejected=0
nbroken=0
for f in "$tmp/broken"/*.yaml; do
  nbroken=$((nbroken + 1))
  base="$(basename "$f" .yaml)"        # <schema>--<key>
  kind="${base%%--*}"; key="${base#*--}"
  if out="$("$ajv" validate "${ajv_opts[@]}" --errors=line -s "schemas/$kind.schema.json" -d "$f" 2>&1)"; then
    cat "$f"
    fail "ajv accepted the broken $kind sample ($key) above"
  elif ! grep -q "$key" <<<"$out"; then
    echo "$out"
    fail "ajv rejected the broken $kind sample but no error mentions '$key'"
  else
    echo "broken $kind sample ($key): rejected, error names '$key'"
    rejected=$((rejected + 1))
  fi
done

total=$(( ${#models[@]} + ${#recipes[@]} ))
ajv_summary="ajv: $valid/$total files valid (js-yaml), $valid_yaml/$total (yaml), against $compiled/${#schemas[@]} schemas compiled in strict draft-07 mode; $rejected/$nbroken broken samples rejected"

echo
echo "== yaml-language-server $(version yaml-language-server)"
if ! node "$repo/scripts/yamlls-check.cjs" --node-dir "$node_dir" > "$tmp/yamlls.log" 2>&1; then
  failed=1
fi
cat "$tmp/yamlls.log"
yamlls_summary="$(tail -n 1 "$tmp/yamlls.log")"

echo
echo "== summary"
echo "$ajv_summary"
echo "$yamlls_summary"
if (( failed )); then
  echo "external schema check FAILED"
  exit 1
fi
echo "external schema check passed"
