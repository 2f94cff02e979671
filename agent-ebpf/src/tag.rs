//! Is the current task under a tagged cgroup, and which? One cached lookup per call.

use agent_common::{CachedTag, Tag, capacity};

use crate::{
    kernel,
    maps::{CGROUP_CACHE, CONFIG, TAGGED_ROOTS},
};

/// A tagged root the current task is under.
pub struct Tagged {
    pub root: u64,
    pub tag: Tag,
}

/// Resolves the current task's cgroup to its deepest tagged ancestor (itself included).
/// The answer is cached per cgroup and invalidated by `Config::generation`, which is read
/// before the walk: a tag added during the walk makes the cached answer stale, not wrong.
#[inline(always)]
pub fn current() -> Option<Tagged> {
    let generation = CONFIG.get(0).map_or(0, |config| config.generation);
    let cgroup = kernel::current_cgroup();
    // SAFETY: a cache entry is only ever replaced whole; a torn read is caught by the
    // generation check failing or re-walked next time.
    if let Some(cached) = unsafe { CGROUP_CACHE.get(cgroup) }
        && cached.generation == generation
    {
        return (cached.root != 0).then_some(Tagged { root: cached.root, tag: cached.tag });
    }
    let mut found = CachedTag { root: 0, tag: Tag { policy: 0, max_pending: 0 }, generation };
    for level in 1..capacity::CGROUP_DEPTH.cast_signed() {
        let ancestor = kernel::ancestor_cgroup(level);
        if ancestor == 0 {
            break;
        }
        // SAFETY: user space replaces tags whole.
        if let Some(tag) = unsafe { TAGGED_ROOTS.get(ancestor) } {
            found.root = ancestor;
            found.tag = *tag;
        }
    }
    // A full cache only costs the next caller another walk.
    let _ = CGROUP_CACHE.insert(cgroup, found, 0);
    (found.root != 0).then_some(Tagged { root: found.root, tag: found.tag })
}
