//! PostgreSQL passwords kept off the command line, by libpq's rules: `PGPASSWORD`, else the password file
//! (`PGPASSFILE`, else `~/.pgpass`), whose lines are `host:port:database:user:password`; each of the first four
//! fields matches literally or is `*`, `\:` and `\\` escape, `#` starts a comment, and the first matching line wins.
//! A file that its group or others may read is ignored, with a warning, as libpq does.

use std::path::{Path, PathBuf};
use std::sync::Once;

/// Who a connection is for: what a password file's line is matched against.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password for `target` from the environment: `PGPASSWORD`, else the password file.
pub fn lookup(target: &Target<'_>) -> Option<String> {
    if let Some(p) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Some(p.to_string_lossy().into_owned());
    }
    let file = match std::env::var_os("PGPASSFILE") {
        Some(f) => PathBuf::from(f),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    match read(&file) {
        Ok(Some(text)) => find(&text, target),
        Ok(None) => None,
        Err(why) => {
            // Once per process: every connection looks again.
            static WARNED: Once = Once::new();
            WARNED.call_once(|| log::warn!("{why}"));
            None
        }
    }
}

/// The file's text; `None` when there is none; an error (the warning) when it is ignored.
fn read(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "password file {} has group or world access and is ignored; permissions should be u=rw (0600) or less \
             (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    std::fs::read_to_string(path).map(Some).map_err(|e| format!("password file {}: {e}", path.display()))
}

/// The password of the first line that matches `target`.
fn find(text: &str, target: &Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host, port.as_str(), target.database, target.user];
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4].iter().zip(wanted).all(|((field, escaped), want)| {
            (field == "*" && !escaped) || field == want || (field == "localhost" && want.starts_with('/'))
        });
        if matches {
            // The password is the rest of the line: a ':' in it needs no escape.
            return Some(fields[4..].iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(":"));
        }
    }
    None
}

/// A line's fields, unescaped, each with whether it held an escape (an escaped `\*` is a literal star).
fn split(line: &str) -> Vec<(String, bool)> {
    let mut fields = vec![(String::new(), false)];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let Some(field) = fields.last_mut() else { break };
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    field.0.push(next);
                    field.1 = true;
                }
            }
            ':' => fields.push((String::new(), false)),
            c => field.0.push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_by_libpq_rules() {
        let target = Target { host: "db.example", port: 5432, database: "shop", user: "app" };
        let text = "# comment\n\
                    other:5432:shop:app:no\n\
                    db.example:5433:*:app:wrong port\n\
                    db.example:*:shop:app:s3cr\\:et:with colon\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, &target).as_deref(), Some("s3cr:et:with colon"));
        let other = Target { host: "x", port: 1, database: "d", user: "u" };
        assert_eq!(find(text, &other).as_deref(), Some("fallback"));
        assert_eq!(
            find("a\\:b:1:d:u:pw\n", &Target { host: "a:b", port: 1, database: "d", user: "u" }).as_deref(),
            Some("pw")
        );
        assert_eq!(find("\\*:1:d:u:pw\n", &Target { host: "h", port: 1, database: "d", user: "u" }), None);
        assert_eq!(find("too:few:fields\n", &target), None);
    }

    #[test]
    fn a_file_others_may_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("supervisor-pgpass-test-{}", std::process::id()));
        std::fs::write(&path, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&path).unwrap_err().contains("group or world access"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("*:*:*:*:pw\n"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
