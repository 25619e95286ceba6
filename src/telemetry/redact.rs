//! The one masking step every line we print passes through, so that no secret reaches a terminal, a log or the
//! journal: not in our own messages, and not in librdkafka's, which echo property values in their errors.
//!
//! Two rules. The values registered with [`keep_secret`] (what the configuration marks secret: see `config::secret`)
//! are replaced wherever they appear verbatim. And a password inside a URL
//! (`scheme://user:password@host`) is replaced whatever it is. A URL's password is found here alone: in a value
//! ([`url_password`], which the configuration and `sql::url` use) and in running text, by one rule
//! ([`userinfo_password`]).
//!
//! The parent registers the secrets before it forks, so every child masks the same values.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

pub const MASK: &str = "********";

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// From now on, `value` is masked in every line. Empty values are ignored: there is nothing to find.
pub fn keep_secret(value: &str) {
    if value.is_empty() {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        // Longest first, so that a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `value` is one of the registered secrets.
pub fn is_kept(value: &str) -> bool {
    SECRETS.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|s| s == value)
}

/// `line` with every registered secret and every URL password masked.
pub fn mask(line: &str) -> Cow<'_, str> {
    let secrets = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Cow::Borrowed(line);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    match mask_url_passwords(&out) {
        Some(masked) => Cow::Owned(masked),
        None => out,
    }
}

/// The password in a `scheme://user:password@host` value, if it has one. The userinfo ends at the last '@' before
/// the query, so a password may hold an '@' (and `?table=t&password=@/run/pw` is a parameter, not a userinfo).
pub fn url_password(value: &str) -> Option<&str> {
    url_password_at(value).map(|r| &value[r])
}

/// Where [`url_password`]'s password is in `value`.
pub fn url_password_at(value: &str) -> Option<std::ops::Range<usize>> {
    let from = value.find("://")? + 3;
    let rest = &value[from..];
    let authority = &rest[..rest.find('?').unwrap_or(rest.len())];
    userinfo_password(authority).map(|(start, end)| from + start..from + end)
}

/// Where the password is in what follows a URL's `://`: from the first ':' of its userinfo, which ends at the last
/// '@'; `None` when there is no userinfo, no ':' in it, or an empty password.
fn userinfo_password(authority: &str) -> Option<(usize, usize)> {
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    (colon + 1 < at).then_some((colon + 1, at))
}

/// Masks the password of every `scheme://user:password@host`; `None` when there is none.
fn mask_url_passwords(line: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = line;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the path, or where the URL ends in running text.
        let end = tail.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>,;)]".contains(c));
        let authority = &tail[..end.unwrap_or(tail.len())];
        match userinfo_password(authority) {
            Some((start, end)) => {
                out.push_str(&authority[..start]);
                out.push_str(MASK);
                out.push_str(&authority[end..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority.len()..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_parameter_is_no_userinfo() {
        let url = "mysql://app@db:3306/shop?table=t&password=@/run/pw";
        assert_eq!(url_password(url), None);
        assert_eq!(url_password("postgres://app:s3cr@t@db/shop?password=@x"), Some("s3cr@t"));
        assert_eq!(url_password_at("postgres://a:pw@h/d"), Some(13..15));
    }

    use super::*;

    #[test]
    fn registered_secrets_are_masked_wherever_they_appear() {
        keep_secret("MyS3cretPw");
        keep_secret("MyS3cret");
        keep_secret("");
        let line = "Client config error: No such configuration property: \"sasl.pasword\" sasl.pasword MyS3cretPw";
        let masked = mask(line);
        assert!(!masked.contains("MyS3cret"), "{masked}");
        assert!(masked.ends_with("sasl.pasword ********"), "masked whole, not in part: {masked}");
        assert_eq!(mask("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_passwords("fetching https://client:s3cr3t@idp.example/token failed").as_deref(),
            Some("fetching https://client:********@idp.example/token failed")
        );
        assert_eq!(
            mask_url_passwords("a=postgres://u:p@w@db:5432/x, b=http://h:80/").as_deref(),
            Some("a=postgres://u:********@db:5432/x, b=http://h:80/")
        );
        assert_eq!(mask_url_passwords("sasl_ssl://broker:9093 and http://user@host/"), None);
        assert_eq!(mask_url_passwords("no url here"), None);
    }

    #[test]
    fn url_passwords_are_found_whatever_they_hold() {
        assert_eq!(url_password("https://client:pa/s,s@idp.example/token"), Some("pa/s,s"));
        assert_eq!(url_password("postgres://app:s3cr@t@db:5432/shop"), Some("s3cr@t"));
        assert_eq!(url_password("https://idp.example/token"), None);
        assert_eq!(url_password("https://user@idp.example/"), None);
        assert_eq!(url_password("https://user:@idp.example/"), None);
        assert_eq!(url_password("plain"), None);
    }
}
