//! Coverage-guided fuzzing of the BTF reader: whatever the bytes (a kernel's BTF is read at
//! every start), parsing and looking up members never panics, loops or overflows.
#![no_main]

use keyturn::kernel::btf::Btf;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        for (strukt, member) in [("task_struct", "tgid"), ("outer", "c"), ("", "")] {
            let _ = btf.member_offset(strukt, member);
        }
        let _ = btf.kernel_offsets();
    }
});
