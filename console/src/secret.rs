//! Secrets in the console's configuration: inline, or in a file of their own; never shown
//! by `Debug`.

use std::{fmt, path::PathBuf};

use serde::Deserialize;

/// A secret as the configuration holds it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The secret `name` from `inline` or from the file `file` (trimmed), whichever is set;
/// `None` when neither is.
pub fn read(name: &str, inline: Option<&Secret>, file: Option<&PathBuf>) -> Result<Option<String>, String> {
    match (inline, file) {
        (Some(Secret(secret)), None) => Ok(Some(secret.clone())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim().to_owned()))
            .map_err(|e| format!("{name}_file = {}: {e}", path.display())),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!("{name} or {name}_file, not both")),
    }
}
