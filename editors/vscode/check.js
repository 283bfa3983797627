// A check of the extension's packaging, without VS Code: the manifest names an entry point
// that exists and exports activate/deactivate, activates on YAML, and the extension starts
// `kiln lsp` for file-scheme YAML documents (checked with stand-ins for the two modules it
// loads). Run by editors/vscode/check.sh where node is installed.
const assert = require("assert");
const fs = require("fs");
const path = require("path");
const Module = require("module");

const dir = __dirname;
const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
assert.ok(pkg.name && pkg.version && pkg.publisher, "name, version and publisher");
assert.ok(pkg.engines && pkg.engines.vscode, "engines.vscode");
assert.deepStrictEqual(pkg.activationEvents, ["onLanguage:yaml"]);
assert.ok(pkg.dependencies["vscode-languageclient"], "depends on vscode-languageclient");
const main = path.join(dir, pkg.main);
assert.ok(fs.existsSync(main), `main ${pkg.main} exists`);

let started = null;
const stubs = {
  vscode: { workspace: { getConfiguration: () => ({ get: () => "/opt/kiln" }) } },
  "vscode-languageclient/node": {
    LanguageClient: class {
      constructor(id, name, server, options) {
        started = { id, name, server, options };
      }
      start() { return Promise.resolve(); }
      stop() { return Promise.resolve(); }
    },
  },
};
const load = Module._load;
Module._load = function (request, parent, isMain) {
  return request in stubs ? stubs[request] : load(request, parent, isMain);
};
const ext = require(main);
assert.strictEqual(typeof ext.activate, "function");
assert.strictEqual(typeof ext.deactivate, "function");
const subscriptions = [];
ext.activate({ subscriptions });
assert.deepStrictEqual(started.server.run, { command: "/opt/kiln", args: ["lsp"] });
assert.deepStrictEqual(started.options.documentSelector, [{ scheme: "file", language: "yaml" }]);
assert.strictEqual(subscriptions.length, 1);
console.log(`ok: ${pkg.name} ${pkg.version} starts \`${started.server.run.command} lsp\` for YAML files`);
