//! The kernel: keyturn's BPF programs loaded in the strongest mode this kernel supports,
//! attached and pinned, with [`Enforcer`] the one owner of their maps but the two the
//! resolver shares with the DNS hooks ([`names`]).

pub mod btf;
pub mod doctor;
mod enforcer;
pub mod mode;
pub mod names;

pub use crate::sys::monotonic_ns;
pub use enforcer::{Attempt, EgressHold, Enforcer, EnforcerError, Options, error_chain, probe};
