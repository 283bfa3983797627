//! What kiln needs from the operating system to keep its results safe: one writer per
//! directory ([`lock`]), a clean stop on Ctrl-C and SIGTERM ([`interrupt`]), and the memory
//! the machine can give ([`memory`]).

pub mod interrupt;
pub mod lock;
pub mod memory;
