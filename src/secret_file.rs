//! A value read from a file, the `@FILE` rule that `-X name=@FILE`, `--hmac-key-file` and a database URL's
//! `password=@FILE` share: a relative path is looked up in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`) when
//! it is set, else in the working directory; one final newline is not part of the value.
//!
//! At the bottom of the layers, beside `position` and `error`, so that `config` and `sql` both use it without
//! importing each other.

use std::path::{Path, PathBuf};

/// Reads a secret value from the file at `path`; `credentials` is `$CREDENTIALS_DIRECTORY`, where a relative path is
/// looked up. One final newline is not part of the value. The error never quotes the file.
pub fn read_value(path: &str, credentials: Option<&Path>) -> Result<String, String> {
    let path = match credentials {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read its value from {}: {e}", path.display()))?;
    // A file written by `echo` or an editor ends in a newline that is not part of the secret.
    let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string();
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(value)
}
