//! The held action: the process the kernel holds ([`process::HeldProcess`]), the table
//! of held processes the daemon keeps ([`table::Holds`]), what an approver is shown of
//! each ([`context`]), which program an exec runs ([`identity`], judged in [`judge`]), and
//! the check that every stop keyturn made has a pending hold ([`orphans`]).

pub mod context;
pub mod identity;
pub mod judge;
pub mod orphans;
pub mod process;
pub mod procfs;
pub mod table;
