//! Policies: the files operators write ([`file`]), the part the kernel decides by itself
//! ([`kernel`]), domain rules ([`names`]), and the watch that loads them again ([`watch`]).

pub mod file;
pub mod kernel;
pub mod names;
pub mod watch;

pub use file::{ExecJudgement, Policy};
pub use kernel::{EgressSpec, FileId, KernelPolicy, Verdict, display_cidr};

/// What approving a hold asks: how many distinct people, and whether in the console only
/// (`approve_in = "console"`). An approval that reaches beyond its hold (a grant) keeps its
/// hold's, and covers only holds that ask no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asks {
    pub quorum: u32,
    pub in_console: bool,
}

impl Asks {
    /// One approver, anywhere: what `egress_default` and the holds no rule flags ask.
    pub const ONE: Self = Self { quorum: 1, in_console: false };

    /// Whether an approval of a hold that asked `approved` is enough for this one: as many
    /// people or more, and in the console if this one must be. Fails closed: a grant of
    /// unknown origin is a chat one.
    pub fn met_by(self, approved: Asks) -> bool {
        self.quorum <= approved.quorum && (approved.in_console || !self.in_console)
    }
}
