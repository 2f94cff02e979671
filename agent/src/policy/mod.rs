//! Policies: the files operators write ([`file`]), the part the kernel decides by itself
//! ([`kernel`]), domain rules ([`names`]), and the watch that loads them again ([`watch`]).

pub mod file;
pub mod kernel;
pub mod names;
pub mod watch;

pub use file::{ExecJudgement, Policy};
pub use kernel::{EgressSpec, FileId, KernelPolicy, Verdict, display_cidr};
