//! Which librdkafka property values are secret, and secrets read from files.
//!
//! A value is secret when its property's name says password, secret, token or key material; when the property is
//! unknown to librdkafka (most likely a misspelt secret: `sasl.pasword`); or when it was read from a file. Secret
//! values are masked in every line we print ([`crate::telemetry::redact`]) and in `--print-config`.
//!
//! `-X name=@path` reads the value from a file, so that no password sits in a unit file, an environment file or
//! `ps`. A relative path is looked up in `$CREDENTIALS_DIRECTORY` when systemd set it (`LoadCredential=`), else in
//! the working directory. `@@` stands for a value that really starts with `@`.

use super::librdkafka::is_known_property;
use crate::secret_file::read_value;
use std::path::Path;

/// Words in a property's name that say its value is a secret. `pas` covers password, passwd, passphrase and their
/// misspellings (no other librdkafka property has it).
const SECRET_WORDS: &[&str] = &["pas", "pwd", "secret", "token", "credential", "jaas", "oauthbearer.config", "private"];

/// Endings that say the value only points at something: a path, a URL, an id. Errors need those to be useful.
const POINTERS: &[&str] = &[".location", ".file", ".url", ".id", "keytab", "_cb"];

/// The name without the `consumer.`/`producer.` prefix that picks one client.
pub fn unprefixed(key: &str) -> &str {
    key.strip_prefix("consumer.").or_else(|| key.strip_prefix("producer.")).unwrap_or(key)
}

/// The property's name says its value is a secret: a password, secret, token, or key material (a key in PEM, not the
/// path to one).
pub fn is_secret(key: &str) -> bool {
    let key = unprefixed(key).to_ascii_lowercase();
    if POINTERS.iter().any(|p| key.ends_with(p)) {
        return false;
    }
    SECRET_WORDS.iter().any(|w| key.contains(w)) || key.ends_with("key") || key.contains("key.pem") || key == "ssl_key"
}

/// Shorter values of unknown properties are not masked: masking "1" or "on" in every line would garble the log and
/// hide nothing.
const MIN_UNKNOWN_SECRET: usize = 3;

/// The values of `properties` to mask in every printed line.
pub fn secret_values<'a>(properties: &'a [Property]) -> impl Iterator<Item = &'a str> + 'a {
    properties.iter().filter_map(|p| {
        let secret =
            p.from_file || is_secret(&p.key) || (p.value.len() >= MIN_UNKNOWN_SECRET && !is_known_property(&p.key));
        secret.then_some(p.value.as_str())
    })
}

/// One librdkafka property as the user gave it, its value read from a file if it said `@path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub key: String,
    pub value: String,
    /// The value came from a file: it is masked, whatever its name.
    pub from_file: bool,
}

impl Property {
    /// Resolves `@path` (and `@@`); `credentials` is `$CREDENTIALS_DIRECTORY`.
    pub fn resolve(key: String, value: String, credentials: Option<&Path>) -> Result<Property, String> {
        if let Some(literal) = value.strip_prefix("@@") {
            return Ok(Property { key, value: format!("@{literal}"), from_file: false });
        }
        let Some(path) = value.strip_prefix('@') else {
            return Ok(Property { key, value, from_file: false });
        };
        let value = read_value(path, credentials).map_err(|why| format!("property {key}: {why}"))?;
        Ok(Property { key, value, from_file: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for key in [
            "sasl.password",
            "consumer.sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "ssl_key",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.pasword",
            "sasl.passwd",
            "my.token",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "sasl.username",
            "ssl.key.location",
            "ssl.keystore.location",
            "sasl.oauthbearer.token.endpoint.url",
            "sasl.oauthbearer.client.id",
            "sasl.oauthbearer.assertion.private.key.file",
            "bootstrap.servers",
            "acks",
            "partition.assignment.strategy",
        ] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn unknown_properties_and_files_are_secret() {
        let p = |key: &str, value: &str, from_file| Property { key: key.into(), value: value.into(), from_file };
        let props = [
            p("sasl.pasword", "MyS3cretPw", false),
            p("sasl.password", "pw", false),
            p("ssl.ca.pem", "-----BEGIN", true),
            p("acks", "all", false),
            p("no.such", "on", false),
        ];
        let secret: Vec<&str> = secret_values(&props).collect();
        assert_eq!(secret, ["MyS3cretPw", "pw", "-----BEGIN"]);
    }

    #[test]
    fn values_come_from_files() {
        let dir = std::env::temp_dir().join(format!("supervisor-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kafka-password"), "hunter2\n").unwrap();
        let abs = dir.join("kafka-password").display().to_string();

        let p = Property::resolve("sasl.password".into(), format!("@{abs}"), None).unwrap();
        assert_eq!((p.value.as_str(), p.from_file), ("hunter2", true));
        let p = Property::resolve("sasl.password".into(), "@kafka-password".into(), Some(&dir)).unwrap();
        assert_eq!(p.value, "hunter2", "relative to $CREDENTIALS_DIRECTORY");
        let p = Property::resolve("client.id".into(), "@@home".into(), Some(&dir)).unwrap();
        assert_eq!((p.value.as_str(), p.from_file), ("@home", false));
        let e = Property::resolve("sasl.password".into(), "@missing".into(), Some(&dir)).unwrap_err();
        assert!(e.starts_with("property sasl.password: cannot read its value from ") && e.contains("missing"), "{e}");
        std::fs::write(dir.join("empty"), "\n").unwrap();
        assert!(Property::resolve("sasl.password".into(), "@empty".into(), Some(&dir)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
