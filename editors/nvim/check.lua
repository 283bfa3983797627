-- Driven by editors/nvim/check.sh: open a file with Neovim's built-in LSP client attached to
-- `kiln lsp`, wait for kiln's diagnostics, hover the first one's line, and print both.
local file = assert(vim.env.KILN_CHECK_FILE)
vim.cmd("edit " .. vim.fn.fnameescape(file))
local buf = vim.api.nvim_get_current_buf()
-- start_client + buf_attach_client: Debian's Neovim 0.7 has no vim.lsp.start yet.
local client_id = vim.lsp.start_client({
  name = "kiln",
  cmd = { vim.env.KILN or "kiln", "lsp" },
  root_dir = vim.fn.fnamemodify(file, ":p:h"),
})
local function out(s) io.stdout:write(s .. "\n") end
if not client_id then
  out("error: the kiln client did not start")
  vim.cmd("cquit 1")
end
vim.lsp.buf_attach_client(buf, client_id)
local ok = vim.wait(20000, function() return #vim.diagnostic.get(buf) > 0 end, 50)
if not ok then
  out("error: no diagnostics within 20 s")
  vim.cmd("cquit 1")
end
for _, d in ipairs(vim.diagnostic.get(buf)) do
  out(string.format("%s:%d:%d: %s[%s] (%s) %s", vim.fn.fnamemodify(file, ":t"), d.lnum + 1,
    d.col + 1, vim.diagnostic.severity[d.severity], tostring(d.code), tostring(d.source),
    (d.message:gsub("\n", " | "))))
end
local first = vim.diagnostic.get(buf)[1]
local params = {
  textDocument = { uri = vim.uri_from_bufnr(buf) },
  position = { line = first.lnum, character = first.col },
}
local res = vim.lsp.buf_request_sync(buf, "textDocument/hover", params, 10000)
for _, r in pairs(res or {}) do
  if r.result and r.result.contents then
    out("hover: " .. (r.result.contents.value:gsub("\n+", " ")))
  end
end
vim.cmd("qall!")
