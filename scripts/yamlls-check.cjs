#!/usr/bin/env node
// Validate kiln's bundled YAML documents with yaml-language-server's language
// service (the engine behind the VS Code YAML extension), driven directly through
// its API: no editor, no LSP connection.
//
//   node scripts/yamlls-check.cjs [--node-dir DIR] [--repo DIR]
//
// DIR (default $KILN_NODE_DIR or /tmp/kiln-node) must hold node_modules with
// `yaml-language-server` and `vscode-languageserver-textdocument`
// (scripts/check-schemas-external.sh installs them).
//
// What it checks:
//   1. every models/*.yaml and recipes/*.yaml carries a modeline pointing at the
//      schema for its folder, and `doValidation` (schema taken from that modeline,
//      exactly as the editor does it) reports no problem;
//   2. deliberately broken documents (misspelt keys) DO get a problem diagnostic
//      naming the bad key, so a silently unresolved schema cannot pass as "valid".
// A "problem" is a diagnostic of severity Error or Warning: yaml-language-server
// reports YAML syntax errors as Error but schema violations (unknown property,
// wrong type, missing property) as Warning, so both have to count. Info/Hint
// diagnostics are printed but do not fail the check.
//   3. `doHover` on a field returns the field's description from the schema, and
//      `doComplete` offers a schema property.
// Exit status: 0 when all of that holds, 1 otherwise.
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const { pathToFileURL, fileURLToPath } = require('url');

function argValue(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const repo = path.resolve(argValue('--repo', path.join(__dirname, '..')));
const nodeDir = path.resolve(argValue('--node-dir', process.env.KILN_NODE_DIR || '/tmp/kiln-node'));
const req = createRequire(path.join(nodeDir, 'package.json'));

const yamlls = req('yaml-language-server');
const { TextDocument } = req('vscode-languageserver-textdocument');
const lsVersion = req('yaml-language-server/package.json').version;

const SEVERITY = { 1: 'error', 2: 'warning', 3: 'info', 4: 'hint' };

// Schemas are only ever read from local files. Anything else (http(s), an
// unresolvable $ref, a $id the service tries to fetch) is recorded and refused, so
// it surfaces as a diagnostic instead of silently hitting the network.
const refusedRequests = [];
const requestedSchemas = new Set();
function schemaRequestService(uri) {
  if (uri.startsWith('file://')) {
    const file = fileURLToPath(uri);
    requestedSchemas.add(path.relative(repo, file));
    return fs.promises.readFile(file, 'utf8');
  }
  refusedRequests.push(uri);
  return Promise.reject(`refusing non-local schema request: ${uri}`);
}

const workspaceContext = {
  resolveRelativePath: (relativePath, resource) => new URL(relativePath, resource).toString(),
};

const ls = yamlls.getLanguageService({ schemaRequestService, workspaceContext });
ls.configure({
  validate: true,
  hover: true,
  completion: true,
  format: false,
  isKubernetes: false,
  yamlVersion: '1.2',
  // No `schemas` entries on purpose: association comes from each file's modeline,
  // which is what an editor user gets.
});

const expectedSchema = { models: 'model.schema.json', recipes: 'recipe.schema.json' };
const MODELINE = /^#\s*yaml-language-server:\s*\$schema=(\S+)/;

function fmtDiag(d) {
  const sev = SEVERITY[d.severity] || `severity${d.severity}`;
  const pos = `${d.range.start.line + 1}:${d.range.start.character + 1}`;
  const msg = String(d.message).replace(/\s*\n\s*/g, ' | ');
  return `${pos} ${sev}: ${msg}${d.source ? ` [${d.source}]` : ''}`;
}

const isProblem = (d) => d.severity === 1 || d.severity === 2;

function summarize(diags) {
  const n = (sev) => diags.filter((d) => d.severity === sev).length;
  const other = diags.length - n(1) - n(2);
  return `${n(1)} error(s), ${n(2)} warning(s)${other ? `, ${other} info/hint` : ''}`;
}

function docFor(absPath, text) {
  return TextDocument.create(pathToFileURL(absPath).toString(), 'yaml', 1, text);
}

// Position (line/character) of the first `needle` in `text` at or after `from`.
function positionOf(doc, text, needle, from = 0) {
  const off = text.indexOf(needle, from);
  if (off < 0) throw new Error(`'${needle}' not found`);
  return doc.positionAt(off + 1);
}

function hoverText(h) {
  if (!h) return '';
  const c = h.contents;
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map((x) => (typeof x === 'string' ? x : x.value)).join('\n');
  return c.value || '';
}

// Deliberately broken documents. `line` is the 1-based line the problem is on,
// `expect` a pattern the diagnostic's message must match. Also written out as files
// by --dump-samples DIR (as DIR/<schema>--<badKey>.yaml) so the ajv check in
// check-schemas-external.sh rejects exactly the same documents.
const SAMPLES = [
  {
    schema: 'recipe',
    badKey: 'stpes',
    what: 'misspelt train.steps',
    line: 7,
    expect: /stpes/,
    text: [
      '# yaml-language-server: $schema=../schemas/recipe.schema.json',
      'kind: recipe',
      'name: broken',
      'model: ../models/lstm.yaml',
      'task: {type: grammar, language: aNbN, max_length: 32}',
      'train:',
      '  stpes: 300',
      '',
    ].join('\n'),
  },
  {
    schema: 'model',
    badKey: 'hedas',
    what: 'misspelt attention.heads',
    line: 5,
    expect: /hedas/,
    text: [
      '# yaml-language-server: $schema=../schemas/model.schema.json',
      'kind: model',
      'layers:',
      '  - {type: embedding, dim: 16}',
      '  - {type: attention, hedas: 4}',
      '  - {type: head}',
      '',
    ].join('\n'),
  },
  {
    schema: 'model',
    badKey: 'heads',
    what: 'attention.heads neither an integer nor a $var',
    line: 6,
    expect: /integer|pattern/i,
    text: [
      '# yaml-language-server: $schema=../schemas/model.schema.json',
      'kind: model',
      'vars: {n_heads: 4}',
      'layers:',
      '  - {type: embedding, dim: 16}',
      '  - {type: attention, heads: four}',
      '  - {type: attention, heads: $n_heads}',
      '  - {type: head}',
      '',
    ].join('\n'),
  },
];

async function main() {
  const dumpDir = argValue('--dump-samples', null);
  if (dumpDir) {
    fs.mkdirSync(dumpDir, { recursive: true });
    for (const b of SAMPLES) fs.writeFileSync(path.join(dumpDir, `${b.schema}--${b.badKey}.yaml`), b.text);
    return;
  }

  let failures = 0;
  const fail = (msg) => {
    failures++;
    console.log(`  FAIL: ${msg}`);
  };

  console.log(`yaml-language-server ${lsVersion} (language service API)`);

  // 1. Bundled documents.
  let files = 0;
  let errors = 0;
  let warnings = 0;
  for (const dir of Object.keys(expectedSchema)) {
    const names = fs.readdirSync(path.join(repo, dir)).filter((n) => /\.ya?ml$/.test(n)).sort();
    for (const name of names) {
      const abs = path.join(repo, dir, name);
      const rel = path.relative(repo, abs);
      const text = fs.readFileSync(abs, 'utf8');
      files++;
      const m = text.split('\n', 1)[0].match(MODELINE);
      const want = `../schemas/${expectedSchema[dir]}`;
      if (!m) {
        console.log(`${rel}:`);
        fail('first line is not a `# yaml-language-server: $schema=...` modeline');
        errors++;
        continue;
      }
      if (m[1] !== want) {
        console.log(`${rel}:`);
        fail(`modeline names ${m[1]}, expected ${want}`);
        errors++;
        continue;
      }
      const diags = await ls.doValidation(docFor(abs, text), false);
      const e = diags.filter((d) => d.severity === 1).length;
      const w = diags.filter((d) => d.severity === 2).length;
      errors += e;
      warnings += w;
      console.log(`${rel}: ${diags.length === 0 ? 'ok (no diagnostics)' : summarize(diags)}  [schema ${m[1]}]`);
      for (const d of diags) console.log(`    ${fmtDiag(d)}`);
    }
  }

  // The schemas must really have been loaded from disk through the modelines,
  // otherwise "no diagnostics" proves nothing.
  for (const s of Object.values(expectedSchema)) {
    if (!requestedSchemas.has(path.join('schemas', s))) fail(`schema schemas/${s} was never loaded`);
  }

  // 2. Deliberately broken documents: in-memory only, with URIs inside the
  //    recipes/ and models/ folders so the relative modelines resolve as usual.
  const broken = SAMPLES.map((b) => ({
    ...b,
    name: `${b.schema}s/__broken_${b.badKey}__.yaml (${b.what})`,
    path: path.join(repo, `${b.schema}s`, `__broken_${b.badKey}__.yaml`),
  }));
  let brokenProblems = 0;
  for (const b of broken) {
    const diags = await ls.doValidation(docFor(b.path, b.text), false);
    const probs = diags.filter(isProblem);
    brokenProblems += probs.length;
    console.log(`broken sample ${b.name}: ${summarize(diags)}`);
    for (const d of diags) console.log(`    ${fmtDiag(d)}`);
    if (probs.length === 0) fail(`no problem reported for broken sample ${b.name}`);
    else if (!probs.some((d) => b.expect.test(String(d.message)) && d.range.start.line + 1 === b.line))
      fail(`no diagnostic on line ${b.line} matching ${b.expect} in ${b.name}`);
  }

  // 3. Hover and completion.
  {
    const abs = path.join(repo, 'recipes', 'anbn-inline.yaml');
    const text = fs.readFileSync(abs, 'utf8');
    const doc = docFor(abs, text);
    const pos = positionOf(doc, text, 'heads:');
    const h = hoverText(await ls.doHover(doc, pos));
    const want = 'Number of query heads.';
    console.log(`hover on 'heads' (${path.relative(repo, abs)}:${pos.line + 1}:${pos.character + 1}): ${JSON.stringify(h)}`);
    if (!h.includes(want)) fail(`hover on 'heads' does not contain ${JSON.stringify(want)}; got ${JSON.stringify(h)}`);
  }
  {
    const abs = path.join(repo, 'recipes', '__completion__.yaml');
    const text = [
      '# yaml-language-server: $schema=../schemas/recipe.schema.json',
      'kind: recipe',
      'model: ../models/lstm.yaml',
      'task: {type: grammar, language: aNbN}',
      'train:',
      '  ',
    ].join('\n');
    const doc = docFor(abs, text);
    const list = await ls.doComplete(doc, { line: 5, character: 2 }, false);
    const labels = (list.items || []).map((i) => i.label).sort();
    console.log(`completion under 'train:': ${labels.join(', ')}`);
    if (!labels.includes('steps')) fail(`completion under 'train:' does not offer 'steps'`);
  }

  if (refusedRequests.length) {
    for (const u of refusedRequests) fail(`schema service asked for a non-local URI: ${u}`);
  }

  console.log(
    `yaml-language-server: ${files} files, ${errors} errors, ${warnings} schema warnings; ` +
      `broken samples: ${brokenProblems} problems detected in ${broken.length} documents; ` +
      `${failures === 0 && errors === 0 && warnings === 0 ? 'OK' : 'FAILED'}`,
  );
  process.exit(failures === 0 && errors === 0 && warnings === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
