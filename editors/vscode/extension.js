// kiln's VS Code extension: starts `kiln lsp` for YAML files. It runs beside the YAML
// extension (yaml-language-server, schema diagnostics); kiln's diagnostics carry source `kiln`.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("kiln").get("path") || "kiln";
  const server = { command, args: ["lsp"] };
  client = new LanguageClient(
    "kiln",
    "kiln",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "yaml" }] }
  );
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
