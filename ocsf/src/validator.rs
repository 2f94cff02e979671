//! The tests' judge of keyturn's OCSF: `tests/python/validate.py`, the OCSF project's own
//! schemas (`PyPI` `ocsf-json-schema`, `jsonschema`) in the venv `cargo xtask setup` makes.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

/// Validates `events` (OCSF JSON lines); panics with every problem found. Returns the
/// validator's summary: `valid`, `invalid`, events per `classes`.
pub fn validate(events: &[u8]) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
    let mut child = Command::new(python)
        .arg(dir.join("validate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the OCSF validator");
    child.stdin.take().expect("stdin").write_all(events).expect("feed the validator");
    let out = child.wait_with_output().expect("the validator");
    assert!(
        out.status.success(),
        "OCSF validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("the validator's summary")
}
