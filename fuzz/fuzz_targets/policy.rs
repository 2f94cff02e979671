//! Coverage-guided fuzzing of the policy parser: whatever the text, `parse` never panics,
//! and a refusal names a line inside the file and a reason.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = keyturn::policy::file::parse("fuzz", "fuzz.toml", text) {
        let lines = text.lines().count().max(1) + 1;
        assert!((1..=lines).contains(&error.line), "line {} outside 1..={lines}: {error}", error.line);
        assert!(!error.reason.trim().is_empty(), "a refusal without a reason");
    }
});
