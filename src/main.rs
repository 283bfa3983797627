fn main() {
    // Like other command-line tools, stop quietly when the reader of stdout goes away
    // (`kiln ... | head`) instead of panicking on a broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    kiln::util::tune_allocator();
    std::process::exit(kiln::cli::main());
}
