//! Policies: the files operators write ([`file`]), the part the kernel decides by itself
//! ([`kernel`]), and the watch that loads them again when they change ([`watch`]).

pub mod file;
pub mod kernel;
pub mod watch;

pub use file::{ExecJudgement, Policy};
pub use kernel::{Cidr, EgressSpec, FileId, KernelPolicy, Verdict, display_cidr};
