//! keyturn's host side: the kernel holds flagged actions of AI agents' processes, and the
//! daemon asks a person about each, then releases or refuses it.
//!
//! # Layout
//!
//! - [`kernel`]: the BPF programs, loaded, attached and pinned in the strongest mode the
//!   kernel supports; [`kernel::Enforcer`] is the one owner of their maps.
//! - [`hold`]: a held action: the process the kernel holds, the table of them, what an
//!   approver is shown, which program an exec runs and how it is judged.
//! - [`policy`]: policy files, and the part of a policy the kernel decides by itself.
//! - [`dns`]: keyturn's resolver, which answers every DNS query of tagged cgroups and
//!   judges the name before anything leaves the host.
//! - [`daemon`]: `keyturn daemon`: the loop that takes in the kernel's events, keeps the
//!   pending holds, applies decisions and timeouts, and serves the local API.
//! - [`console_link`]: the daemon's connection to the console (through the `host-client`
//!   crate, which speaks the console's protocol), and the embedded console. The embedded
//!   console and the `keyturn console` command are this crate's only uses of the
//!   `console` crate.
//! - [`cli`]: the `keyturn` command line.
//! - [`audit`], [`config`], [`cgroup`]: the audit trail, the daemon's configuration, the
//!   cgroup v2 hierarchy; `logging`: stderr or the journal; `systemd`: units tagged as
//!   agents; `state`: files kept across restarts; `sys`: every system call no safe crate
//!   API makes, the crate's only `unsafe` code besides two `AsyncFd` registrations.
//!
//! # Words
//!
//! - A *hold record* is the kernel's entry for a held action (`agent_common::Hold`, in the
//!   `HOLDS` map); a *stop* is keyturn's `SIGSTOP` of a process, recorded in `STOPS`.
//! - A *held process* is a process reached through a pidfd for one hold record; the
//!   daemon keeps them in its *table of held processes* ([`hold::table::Holds`]).
//! - A *pending hold* is one waiting for a person's decision.
//! - People *approve* or *deny*; the mechanism then *releases* the held action (the
//!   syscall completes) or *kills* the process (or *fails* the syscall, per `on_deny`).
//!   A hold that ends without a decision (its process exited) is *closed*.
//! - A *tagged root* is a cgroup an operator tagged; an *agent* is what runs under it.
//! - A *link* is a BPF link; the console connection is the *console link*.

pub(crate) mod audit;
/// The command line, for the binary.
pub mod cli;
pub(crate) mod config;
pub(crate) mod console_link;
pub(crate) mod daemon;
mod logging;
mod state;
mod sys;
pub(crate) mod systemd;

// The rooms the privileged tests (the tests crate) and the fuzz targets drive directly
// (as aya's `test_helpers`) are public with the `test-helpers` feature, the crate's own
// otherwise. Declared one by one, not by a macro, so that `cargo fmt` formats them.
#[cfg(feature = "test-helpers")]
pub mod cgroup;
#[cfg(not(feature = "test-helpers"))]
pub(crate) mod cgroup;
#[cfg(feature = "test-helpers")]
pub mod dns;
#[cfg(not(feature = "test-helpers"))]
pub(crate) mod dns;
#[cfg(feature = "test-helpers")]
pub mod hold;
#[cfg(not(feature = "test-helpers"))]
pub(crate) mod hold;
#[cfg(feature = "test-helpers")]
pub mod kernel;
#[cfg(not(feature = "test-helpers"))]
pub(crate) mod kernel;
#[cfg(feature = "test-helpers")]
pub mod policy;
#[cfg(not(feature = "test-helpers"))]
pub(crate) mod policy;
