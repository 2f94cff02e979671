//! keyturn's host side: loads the kernel hold, tags agent cgroups, decides held actions.
//!
//! [`enforcer::Enforcer`] owns the BPF object; [`held::HeldProcess`] carries a decision to
//! a held process; [`policy::KernelPolicy`] is what the kernel decides by itself.

pub mod api;
pub mod audit;
pub mod btf;
pub mod cgroup;
pub mod config;
pub mod context;
pub mod daemon;
pub mod doctor;
pub mod embedded;
pub mod enforcer;
pub mod held;
pub mod holds;
pub mod identify;
pub mod judge;
pub mod link;
pub mod mode;
pub mod orphans;
pub mod policy;
pub mod policy_file;
pub mod procfs;
pub mod watch;
