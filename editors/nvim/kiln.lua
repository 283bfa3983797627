-- kiln's language server in Neovim (0.8+ built-in client). Put this in your config
-- (e.g. ~/.config/nvim/after/ftplugin/yaml.lua), or `:luafile editors/nvim/kiln.lua`.
-- It starts `kiln lsp` for YAML buffers inside a folder with recipes/ or models/ (or a .git),
-- beside yaml-language-server if you run that too: kiln's diagnostics carry source "kiln".
vim.api.nvim_create_autocmd("FileType", {
  pattern = "yaml",
  callback = function(args)
    local root = vim.fs.root and vim.fs.root(args.buf, { "recipes", "models", ".git" })
      or vim.fn.getcwd()
    vim.lsp.start({
      name = "kiln",
      cmd = { vim.env.KILN or "kiln", "lsp" },
      root_dir = root,
    })
  end,
})
