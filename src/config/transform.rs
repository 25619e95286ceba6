//! Which transform the workers run, settled from `--jq`, `--jq-file`, `--exec` and their companions: files read,
//! words split, the key of `hmac_sha256` read and registered as a secret. Whether a filter compiles or a program can be
//! started is checked by the [worker](crate::worker::transform) that runs it, before anything is consumed.

use super::describe::{quoted, Shown};
use super::Cli;
use crate::telemetry::redact;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that may hold the key of `hmac_sha256` itself.
pub const HMAC_KEY_ENV: &str = "SUPERVISOR_HMAC_KEY";

/// What the workers do to each event.
#[derive(Debug, Clone, Default)]
pub enum TransformSpec {
    /// Add `"hash"`, the md5 hex of the event's bytes, byte for byte.
    #[default]
    Md5,
    Jq(JqSpec),
    Exec(ExecSpec),
}

/// A jq filter, and what its added functions need.
#[derive(Clone)]
pub struct JqSpec {
    pub filter: String,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// The key of `hmac_sha256`, when one was given.
    pub hmac_key: Option<String>,
    pub hmac_key_file: Option<PathBuf>,
}

/// Never shows the key.
impl fmt::Debug for JqSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JqSpec")
            .field("filter", &self.filter)
            .field("file", &self.file)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| redact::MASK))
            .finish()
    }
}

/// A command started once per worker, and how much failure it is allowed.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// As given, for `--print-config`.
    pub line: String,
    /// How long one reply may take.
    pub timeout: Duration,
    /// Restarts of the command allowed within `restart_window` (`--max-restarts`, `--restart-window`).
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl ExecSpec {
    /// The program's name, for the log.
    pub fn name(&self) -> String {
        let program = self.argv.first().map_or("", String::as_str);
        Path::new(program).file_name().map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned())
    }
}

impl TransformSpec {
    /// The name users see: in the log, the status line and the metrics' `transform` label.
    pub fn label(&self) -> &'static str {
        match self {
            TransformSpec::Md5 => "md5",
            TransformSpec::Jq(_) => "jq",
            TransformSpec::Exec(_) => "exec",
        }
    }

    /// The `--print-config` line of one of the transform's settings (`jq`, `jq-file`, `exec`, `exec-timeout`,
    /// `hmac-key-file`): only those that made the transform are set.
    pub(super) fn shown(&self, long: &str) -> Option<Shown> {
        let (jq, jq_file, exec, hmac) = match self {
            TransformSpec::Md5 => (None, None, None, None),
            TransformSpec::Jq(j) => match &j.file {
                Some(file) => (None, Some(file.display().to_string()), None, j.hmac_key_file.as_ref()),
                None => (Some(j.filter.clone()), None, None, j.hmac_key_file.as_ref()),
            },
            TransformSpec::Exec(e) => (None, None, Some(e.line.clone()), None),
        };
        let set = |value: Option<String>, unset: &str| match value {
            Some(value) => Shown::Set(quoted(&value)),
            None => Shown::Unset(unset.to_string()),
        };
        Some(match long {
            "jq" => set(jq, "off (without --jq, --jq-file or --exec, \"hash\" is added: the md5 of the event)"),
            "jq-file" => set(jq_file, "off"),
            "exec" => set(exec, "off"),
            "exec-timeout" => match self {
                TransformSpec::Exec(e) => Shown::Set(e.timeout.as_secs_f64().to_string()),
                _ => Shown::Unset("30 (with --exec)".to_string()),
            },
            "hmac-key-file" => set(hmac.map(|f| f.display().to_string()), "none (or the key in SUPERVISOR_HMAC_KEY)"),
            _ => return None,
        })
    }
}

/// Settles the transform from the command line (with the environment and the config file under it).
pub fn resolve(cli: &Cli, credentials: Option<&Path>) -> Result<TransformSpec, String> {
    let chosen: Vec<&str> =
        [(cli.jq.is_some(), "--jq"), (cli.jq_file.is_some(), "--jq-file"), (cli.exec.is_some(), "--exec")]
            .into_iter()
            .filter_map(|(given, flag)| given.then_some(flag))
            .collect();
    if chosen.len() > 1 {
        return Err(format!(
            "{} cannot be used together: choose one transform (flags, SUPERVISOR_* variables and the config file all \
             count)",
            chosen.join(" and ")
        ));
    }
    if let Some(line) = &cli.exec {
        let argv = shlex::split(line)
            .ok_or_else(|| "--exec: the command has an unclosed quote or a trailing backslash".to_string())?;
        let Some(program) = argv.first() else {
            return Err("--exec: the command is empty".to_string());
        };
        find_program(program).map_err(|why| format!("--exec: cannot start {program}: {why}"))?;
        if cli.hmac_key_file.is_some() {
            return Err("--hmac-key-file: the key is for hmac_sha256 in --jq filters; --exec commands get none".into());
        }
        return Ok(TransformSpec::Exec(ExecSpec {
            argv,
            line: line.clone(),
            timeout: cli.exec_timeout,
            max_restarts: cli.max_restarts,
            restart_window: cli.restart_window,
        }));
    }
    let (filter, file) = match (&cli.jq, &cli.jq_file) {
        (Some(filter), _) => (filter.clone(), None),
        (None, Some(file)) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("--jq-file: cannot read {}: {e}", file.display()))?;
            (text, Some(file.clone()))
        }
        (None, None) => {
            if cli.hmac_key_file.is_some() {
                return Err("--hmac-key-file: the key is for hmac_sha256 in a --jq filter, and none is given".into());
            }
            return Ok(TransformSpec::Md5);
        }
    };
    let hmac_key = match (&cli.hmac_key_file, std::env::var(HMAC_KEY_ENV)) {
        (Some(path), _) => Some(
            crate::secret_file::read_value(&path.to_string_lossy(), credentials)
                .map_err(|why| format!("--hmac-key-file: {why}"))?,
        ),
        (None, Ok(key)) if !key.is_empty() => Some(key),
        (None, _) => None,
    };
    if let Some(key) = &hmac_key {
        redact::keep_secret(key);
    }
    Ok(TransformSpec::Jq(JqSpec { filter, file, hmac_key, hmac_key_file: cli.hmac_key_file.clone() }))
}

/// Where `program` would be started from: as given if it has a '/', else the first match in `$PATH`. It must be an
/// executable file.
pub fn find_program(program: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let found = if program.contains('/') {
        match std::fs::metadata(program) {
            Err(e) => return Err(e.to_string()),
            Ok(_) if executable(Path::new(program)) => PathBuf::from(program),
            Ok(_) => return Err("not an executable file".to_string()),
        }
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
            .ok_or_else(|| "no such program in $PATH".to_string())?
    };
    // A script whose interpreter is missing fails to start with ENOENT, as if the script itself were missing.
    match interpreter(&found) {
        Some(interpreter) if interpreter.contains('/') && !executable(Path::new(&interpreter)) => {
            Err(format!("its #! line names the interpreter {interpreter}, which is not an executable file here"))
        }
        _ => Ok(found),
    }
}

/// The interpreter a script's `#!` line names, if it has one.
fn interpreter(script: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(script).and_then(|mut f| f.read(&mut head)).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    String::from_utf8_lossy(line).split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolved(args: &[&str]) -> Result<TransformSpec, String> {
        let cli = Cli::try_parse_from(std::iter::once("supervisor").chain(args.iter().copied())).unwrap();
        resolve(&cli, None)
    }

    #[test]
    fn one_transform_at_most() {
        assert!(matches!(resolved(&[]), Ok(TransformSpec::Md5)));
        assert!(matches!(resolved(&["--jq", "."]), Ok(TransformSpec::Jq(_))));
        let e = resolved(&["--jq", ".", "--exec", "cat"]).unwrap_err();
        assert!(e.starts_with("--jq and --exec cannot be used together"), "{e}");
    }

    #[test]
    fn exec_words_are_split_as_a_shell_would_and_the_program_must_exist() {
        let Ok(TransformSpec::Exec(e)) = resolved(&["--exec", "sh -c 'tr a b' \"x y\""]) else { panic!() };
        assert_eq!(e.argv, ["sh", "-c", "tr a b", "x y"]);
        assert_eq!(e.name(), "sh");
        let e = resolved(&["--exec", "no-such-program-here --flag"]).unwrap_err();
        assert_eq!(e, "--exec: cannot start no-such-program-here: no such program in $PATH");
        let plain = std::env::temp_dir().join(format!("sv-not-executable-{}", std::process::id()));
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let e = resolved(&["--exec", &plain.display().to_string()]).unwrap_err();
        assert!(e.ends_with("not an executable file"), "{e}");
        std::fs::remove_file(&plain).unwrap();
        std::fs::write(&plain, "#!/usr/bin/no-such-python3 -u\nprint(1)\n").unwrap();
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let e = resolved(&["--exec", &plain.display().to_string()]).unwrap_err();
        assert!(
            e.ends_with(
                "its #! line names the interpreter /usr/bin/no-such-python3, which is not an executable file here"
            ),
            "{e}"
        );
        std::fs::remove_file(plain).unwrap();
        assert!(resolved(&["--exec", "cat 'open"]).unwrap_err().contains("unclosed quote"));
        assert!(resolved(&["--exec", ""]).unwrap_err().contains("empty"));
    }

    #[test]
    fn the_hmac_key_comes_from_a_file_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("sv-hmac-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "k3y-from-file\n").unwrap();
        let cli = Cli::try_parse_from(["supervisor", "--jq", ".", "--hmac-key-file", "key"]).unwrap();
        let Ok(TransformSpec::Jq(j)) = resolve(&cli, Some(&dir)) else { panic!() };
        assert_eq!(j.hmac_key.as_deref(), Some("k3y-from-file"));
        assert!(!format!("{j:?}").contains("k3y"));
        assert!(redact::is_kept("k3y-from-file"));
        let spec = TransformSpec::Jq(j);
        for long in ["jq", "jq-file", "exec", "exec-timeout", "hmac-key-file"] {
            let (Some(Shown::Set(line)) | Some(Shown::Unset(line))) = spec.shown(long) else { panic!("{long}") };
            assert!(!line.contains("k3y"), "{long}: {line}");
        }
        let e = resolved(&["--hmac-key-file", "/nonexistent/key"]).unwrap_err();
        assert!(e.contains("none is given"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
