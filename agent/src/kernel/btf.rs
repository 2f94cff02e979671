//! Reads struct member offsets from the running kernel's BTF, so the BPF programs (which
//! get no CO-RE relocations from Rust) read the right bytes on 6.1, 6.12 and 6.18 alike.

use std::collections::{HashMap, HashSet};

use agent_common::KernelOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: {strukt}.{member} is a bitfield")]
    Bitfield { strukt: String, member: String },
}

const KIND_STRUCT: u32 = 4;
/// How far typedef chains and anonymous members are followed.
const MAX_DEPTH: u32 = 32;
const KIND_UNION: u32 = 5;

/// One struct or union: its members as (name offset, type id, bit offset).
struct Composite {
    members: Vec<(u32, u32, u32)>,
    kind_flag: bool,
}

/// The structs and unions of a BTF blob, with its strings.
pub struct Btf {
    strings: Vec<u8>,
    composites: HashMap<u32, Composite>,
    by_name: HashMap<String, u32>,
    /// Type id → the id it refers to, for typedef/const/volatile/restrict/type tags.
    aliases: HashMap<u32, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub const SYS_PATH: &'static str = "/sys/kernel/btf/vmlinux";

    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let data = std::fs::read(Self::SYS_PATH)
            .map_err(|source| BtfError::Read { path: Self::SYS_PATH.into(), source })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic"));
        }
        let header_len = u32_at(data, 4)? as usize;
        let section = |offset_at: usize| -> Result<&[u8], BtfError> {
            let start = header_len + u32_at(data, offset_at)? as usize;
            let len = u32_at(data, offset_at + 4)? as usize;
            data.get(start..start + len).ok_or(BtfError::Malformed("section out of bounds"))
        };
        let types = section(8)?;
        let strings = section(16)?.to_vec();
        let mut btf =
            Self { strings, composites: HashMap::new(), by_name: HashMap::new(), aliases: HashMap::new() };
        let mut at = 0;
        let mut id = 1;
        while at < types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, func proto
                2 | 7..=12 | 16 | 18 => 0,    // ptr, fwd, typedef, modifiers, func, float, type tag
                _ => return Err(BtfError::Malformed("unknown kind")),
            };
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    let members = (0..vlen)
                        .map(|i| {
                            let m = at + 12 * i;
                            Ok((u32_at(types, m)?, u32_at(types, m + 4)?, u32_at(types, m + 8)?))
                        })
                        .collect::<Result<_, BtfError>>()?;
                    btf.composites.insert(id, Composite { members, kind_flag: info >> 31 == 1 });
                    if name_off != 0 {
                        btf.by_name.entry(btf.string(name_off).to_owned()).or_insert(id);
                    }
                }
                8..=11 | 18 => {
                    btf.aliases.insert(id, size_or_type);
                }
                _ => {}
            }
            at += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// The type `id` names through typedefs and modifiers; a chain that loops (a malformed
    /// blob) ends where it started.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..MAX_DEPTH {
            match self.aliases.get(&id) {
                Some(&target) => id = target,
                None => return id,
            }
        }
        id
    }

    /// Bit offset of `member` in the composite `id`, searching anonymous members too, at
    /// most [`MAX_DEPTH`] deep, and each composite once (`searched`): a malformed blob may
    /// nest a struct in itself, or the same struct many times at every level, which
    /// without that would take exponential time.
    fn find(&self, id: u32, member: &str, depth: u32, searched: &mut HashSet<u32>) -> Option<(u32, bool)> {
        let id = self.resolve(id);
        if depth >= MAX_DEPTH || !searched.insert(id) {
            return None;
        }
        let composite = self.composites.get(&id)?;
        for &(name_off, type_id, offset) in &composite.members {
            let (bits, bitfield) =
                if composite.kind_flag { (offset & 0x00ff_ffff, offset >> 24 != 0) } else { (offset, false) };
            if name_off == 0 {
                if let Some((inner, inner_bitfield)) = self.find(type_id, member, depth + 1, searched) {
                    return Some((bits.checked_add(inner)?, inner_bitfield));
                }
            } else if self.string(name_off) == member {
                return Some((bits, bitfield));
            }
        }
        None
    }

    /// Byte offset of `strukt.member`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.by_name.get(strukt).ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let (bits, bitfield) = self
            .find(id, member, 0, &mut HashSet::new())
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.into(), member: member.into() })?;
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield { strukt: strukt.into(), member: member.into() });
        }
        Ok(bits / 8)
    }

    /// Every offset keyturn's programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let (inode_ctime_sec, inode_ctime_nsec) = self.inode_ctime()?;
        Ok(KernelOffsets {
            binprm_file: self.member_offset("linux_binprm", "file")?,
            binprm_filename: self.member_offset("linux_binprm", "filename")?,
            file_inode: self.member_offset("file", "f_inode")?,
            inode_ino: self.member_offset("inode", "i_ino")?,
            inode_sb: self.member_offset("inode", "i_sb")?,
            super_block_dev: self.member_offset("super_block", "s_dev")?,
            task_start_boottime: self.member_offset("task_struct", "start_boottime")?,
            socket_type: self.member_offset("socket", "type")?,
            socket_state: self.member_offset("socket", "state")?,
            socket_sk: self.member_offset("socket", "sk")?,
            sock_family: self.sock_common_offset("skc_family")?,
            sock_daddr: self.sock_common_offset("skc_daddr")?,
            sock_v6_daddr: self.sock_common_offset("skc_v6_daddr")?,
            sock_dport: self.sock_common_offset("skc_dport")?,
            msghdr_name: self.member_offset("msghdr", "msg_name")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_group_leader: self.member_offset("task_struct", "group_leader")?,
            task_flags: self.member_offset("task_struct", "flags")?,
            task_io_uring: match self.member_offset("task_struct", "io_uring") {
                Err(BtfError::NoMember { .. }) => agent_common::ABSENT,
                offset => offset?,
            },
            inode_ctime_sec,
            inode_ctime_nsec,
        })
    }

    /// Byte offset in `struct sock` of `member` of its `__sk_common`.
    fn sock_common_offset(&self, member: &str) -> Result<u32, BtfError> {
        Ok(self.member_offset("sock", "__sk_common")? + self.member_offset("sock_common", member)?)
    }

    /// `inode`'s ctime: split into `i_ctime_sec`/`i_ctime_nsec` since 6.11, a `timespec64`
    /// (`tv_sec`, then `tv_nsec`) called `__i_ctime` in 6.6–6.10 and `i_ctime` before.
    fn inode_ctime(&self) -> Result<(u32, u32), BtfError> {
        if let Ok(sec) = self.member_offset("inode", "i_ctime_sec") {
            return Ok((sec, self.member_offset("inode", "i_ctime_nsec")?));
        }
        let timespec =
            self.member_offset("inode", "__i_ctime").or_else(|_| self.member_offset("inode", "i_ctime"))?;
        Ok((timespec, timespec + 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob as the kernel lays it out: a 24-byte header, the types, the strings.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flat_map(|word| word.to_le_bytes()).collect();
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for word in [24, 0, u32::try_from(types.len()).unwrap(), u32::try_from(types.len()).unwrap()] {
            data.extend(word.to_le_bytes());
        }
        data.extend(u32::try_from(strings.len()).unwrap().to_le_bytes());
        data.extend(types);
        data.extend(strings);
        data
    }

    const STRINGS: &[u8] = b"\0int\0outer\0a\0b\0c\0d\0outer_t\0";
    // Offsets of the names in STRINGS.
    const INT: u32 = 1;
    const OUTER: u32 = 5;
    const A: u32 = 11;
    const B: u32 = 13;
    const C: u32 = 15;
    const D: u32 = 17;
    const OUTER_T: u32 = 19;

    /// `struct outer { int a; union { int b; int c; }; int d: 3; }` and `typedef outer_t`.
    fn outer() -> Vec<u8> {
        let info = |kind: u32, vlen: u32, kind_flag: u32| kind << 24 | vlen | kind_flag << 31;
        blob(
            &[
                INT,
                info(1, 0, 0),
                4,
                32, // 1: int
                0,
                info(KIND_UNION, 2, 0),
                4,
                B,
                1,
                0,
                C,
                1,
                0, // 2: union { b; c; }
                OUTER,
                info(KIND_STRUCT, 3, 1),
                12,
                A,
                1,
                0,
                0,
                2,
                32,
                D,
                1,
                3 << 24 | 64, // 3
                OUTER_T,
                info(8, 0, 0),
                3, // 4: typedef outer_t
            ],
            STRINGS,
        )
    }

    #[test]
    fn members_are_found_through_anonymous_unions_and_bitfields_refused() {
        let btf = Btf::parse(&outer()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 4);
        assert!(matches!(btf.member_offset("outer", "d"), Err(BtfError::Bitfield { .. })));
        assert!(matches!(btf.member_offset("outer", "e"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member_offset("inner", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn malformed_blobs_are_errors_never_panics() {
        let good = outer();
        assert!(matches!(Btf::parse(&good[..1]), Err(BtfError::Malformed(_))));
        assert!(matches!(Btf::parse(&[0; 24]), Err(BtfError::Malformed("bad magic"))));
        for cut in [4, 20, 30, good.len() - 1] {
            assert!(Btf::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut unknown_kind = good.clone();
        unknown_kind[24 + 7] = 31;
        assert!(Btf::parse(&unknown_kind).is_err());
    }

    #[test]
    fn a_type_that_contains_itself_ends_the_search() {
        // struct loop { union-less anonymous member of type loop }; typedef t = t.
        let info = |kind: u32, vlen: u32| kind << 24 | vlen;
        let btf =
            Btf::parse(&blob(&[OUTER, info(KIND_STRUCT, 1), 4, 0, 1, 0, OUTER_T, info(8, 0), 2], STRINGS))
                .unwrap();
        assert!(btf.member_offset("outer", "a").is_err());
        assert_eq!(btf.resolve(2), 2);
    }

    /// Found by fuzzing: a struct whose 8 anonymous members are all of its own type took
    /// 8^32 steps to search (`MAX_DEPTH` alone bounded the depth, not the breadth). Each
    /// composite is now searched once per lookup.
    #[test]
    fn a_type_nested_in_itself_many_times_is_searched_once() {
        let mut types = vec![OUTER, KIND_STRUCT << 24 | 8, 4];
        for _ in 0..8 {
            types.extend([0, 1, 0]); // an anonymous member of type 1: this struct
        }
        let btf = Btf::parse(&blob(&types, STRINGS)).unwrap();
        assert!(matches!(btf.member_offset("outer", "a"), Err(BtfError::NoMember { .. })));
    }

    #[test]
    fn the_running_kernel_has_every_offset_keyturn_reads() {
        let offsets = Btf::from_sys_fs().unwrap().kernel_offsets().unwrap();
        assert!(offsets.task_start_boottime > 0 && offsets.task_group_leader > 0 && offsets.inode_ino > 0);
    }
}
