//! The tests' judge of keyturn's OCSF: `tests/python/validate.py`, the OCSF project's own
//! schemas (`PyPI` `ocsf-json-schema`, `jsonschema`) in the venv `cargo xtask setup` makes,
//! and the way into that venv for the other vendors' judges there.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// `tests/python`: the judges' scripts, and their venv in `.venv`.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python")
}

/// Runs the venv's Python with `args`, `stdin` on its standard input; returns its standard
/// output, and panics with its standard error if it fails.
pub fn python(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let python = python_dir().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
    let mut child = Command::new(python)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child.stdin.take().expect("stdin").write_all(stdin).expect("feed python");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// Validates `events` (OCSF JSON lines); panics with every problem found. Returns the
/// validator's summary: `valid`, `invalid`, events per `classes`.
pub fn validate(events: &[u8]) -> serde_json::Value {
    let script = python_dir().join("validate.py");
    let out = python(&[script.to_str().expect("a UTF-8 path")], events);
    serde_json::from_slice(&out).expect("the validator's summary")
}
