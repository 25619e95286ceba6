//! scripts/install, as a packager would run it: into a DESTDIR, twice. Always through DESTDIR: a test must never
//! write to the real /usr or /etc.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_supervisor");

/// A fresh directory under the system's temp dir, removed when dropped.
struct Root(PathBuf);

impl Root {
    fn new(name: &str) -> Root {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("supervisor-install-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Root(dir)
    }

    /// Where `abs`, a path on the target system, lands under this root.
    fn at(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn repo_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install")
}

fn install_with(script: &Path, destdir: &Root, args: &[&str]) -> Output {
    Command::new(script).args(args).env("DESTDIR", &destdir.0).output().expect("run scripts/install")
}

fn install(destdir: &Root, args: &[&str]) -> Output {
    install_with(&repo_script(), destdir, args)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The script said `word` about `path`, on a line of its own: "installed  /tmp/.../supervisor".
fn said(out: &Output, word: &str, path: &Path) -> bool {
    let path = path.display().to_string();
    let path = path.trim_end_matches('/');
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(word) && words.next().map(|p| p.trim_end_matches('/')) == Some(path)
    })
}

/// What a rewrite of a file would change: inode, mtime (seconds, nanoseconds), mode, size.
type Stamp = (u64, i64, i64, u32, u64);

/// Every file under `dir`, stamped.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Stamp)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let m = fs::symlink_metadata(&path).unwrap();
        if m.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.push((path, (m.ino(), m.mtime(), m.mtime_nsec(), m.mode(), m.len())));
        }
    }
    out.sort();
    out
}

/// `systemd-analyze verify` of an instance, with `root` as the file system (ExecStart's binary is looked up there
/// too); None when there is no systemd-analyze.
fn verify(root: &Root) -> Option<Output> {
    // Services require sysinit.target by default; a real system has it, the bare root needs a stand-in.
    let sysinit = root.at("/usr/lib/systemd/system/sysinit.target");
    fs::create_dir_all(sysinit.parent().unwrap()).unwrap();
    fs::write(&sysinit, "[Unit]\nDescription=stand-in for the test\n").unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .arg("stream-supervisor@test.service")
        // Warnings are what we look for: make sure they are shown.
        .env("SYSTEMD_LOG_LEVEL", "info")
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("note: no systemd-analyze here; the unit was not verified");
            None
        }
        out => Some(out.unwrap()),
    }
}

#[test]
fn install_places_binary_unit_and_example_and_a_rerun_keeps_edits() {
    let root = Root::new("install");
    let args = ["--prefix", "/opt/stream", "--bin", BIN];
    let out = install(&root, &args);
    assert!(out.status.success(), "{}", text(&out));

    let binary = root.at("/opt/stream/bin/supervisor");
    let unit = root.at("/etc/systemd/system/stream-supervisor@.service");
    let confdir = root.at("/etc/stream-supervisor");
    let example = confdir.join("example.toml");
    // The example is 0644, not 0640: the service's dynamic user must be able to read the configs copied from it.
    for (path, mode, word) in [
        (&binary, 0o755, "installed"),
        (&unit, 0o644, "installed"),
        (&confdir, 0o755, "created"),
        (&example, 0o644, "created"),
    ] {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), text(&out)));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{}", path.display());
        assert!(said(&out, word, path), "no line '{word} {}' in:\n{}", path.display(), text(&out));
    }
    assert_eq!(fs::metadata(&binary).unwrap().len(), fs::metadata(BIN).unwrap().len());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("systemctl daemon-reload"), "{shown}");
    assert!(shown.contains("systemctl enable --now stream-supervisor@NAME"), "{shown}");

    // The unit names the binary where it will be, not where DESTDIR put it; every setting comes from the file.
    let unit_text = fs::read_to_string(&unit).unwrap();
    let exec: Vec<&str> = unit_text.lines().filter(|l| l.starts_with("ExecStart=")).collect();
    assert_eq!(exec, ["ExecStart=/opt/stream/bin/supervisor --config /etc/stream-supervisor/%i.toml"]);
    assert!(!unit_text.contains(&*root.0.to_string_lossy()), "{unit_text}");
    assert!(!unit_text.contains("@BINDIR@"), "{unit_text}");
    for line in [
        "Type=notify",
        "KillMode=mixed",
        "RestartPreventExitStatus=2 7",
        "DynamicUser=yes",
        "SyslogIdentifier=stream-supervisor-%i",
        // Commented out: a missing credential file would fail the unit.
        "#LoadCredential=kafka-password:/etc/stream-supervisor/%i.kafka-password",
    ] {
        assert!(unit_text.lines().any(|l| l == line), "the unit lacks {line}:\n{unit_text}");
    }

    // A rerun rewrites nothing, and leaves the user's config alone.
    let mine = "brokers = \"mine:9092\"\n";
    fs::write(&example, mine).unwrap();
    let before = snapshot(&root.0);
    let again = install(&root, &args);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(snapshot(&root.0), before, "a rerun changed files:\n{}", text(&again));
    assert_eq!(fs::read_to_string(&example).unwrap(), mine);
    for (path, word) in [(&binary, "unchanged"), (&unit, "unchanged"), (&confdir, "exists"), (&example, "kept")] {
        assert!(said(&again, word, path), "no line '{word} {}' in:\n{}", path.display(), text(&again));
    }

    // A unit edited in place is kept too, with this version beside it; --force replaces it.
    fs::write(&unit, format!("{unit_text}# mine\n")).unwrap();
    let again = install(&root, &args);
    assert!(again.status.success() && said(&again, "kept", &unit), "{}", text(&again));
    assert!(fs::read_to_string(&unit).unwrap().ends_with("# mine\n"));
    let new = root.at("/etc/systemd/system/stream-supervisor@.service.new");
    assert_eq!(fs::read_to_string(&new).unwrap(), unit_text);
    let forced = install(&root, &["--prefix", "/opt/stream", "--bin", BIN, "--force"]);
    assert!(forced.status.success() && said(&forced, "replaced", &unit), "{}", text(&forced));
    assert_eq!(fs::read_to_string(&unit).unwrap(), unit_text);
    assert!(!new.exists(), "the .new copy is gone once the unit is current");

    // verify exits 0 on unknown keys and bad values, and only warns: no output is the pass.
    let Some(out) = verify(&root) else { return };
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
    // The same check fails on a broken unit: verify did read ours.
    fs::write(&unit, unit_text.replace("Type=notify\n", "Type=notify\nTypo=1\n")).unwrap();
    let out = verify(&root).unwrap();
    assert!(text(&out).contains("Typo"), "verify did not see the unit under test:\n{}", text(&out));
}

#[test]
fn the_example_config_is_accepted_as_shipped_and_with_every_setting_uncommented() {
    let root = Root::new("example");
    let out = install(&root, &["--bin", BIN]);
    assert!(out.status.success(), "{}", text(&out));
    let binary = root.at("/usr/local/bin/supervisor");
    let example = root.at("/etc/stream-supervisor/example.toml");
    let print_config = |config: &Path, credentials: &Path| {
        let mut c = Command::new(&binary);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUPERVISOR_")) {
            c.env_remove(k);
        }
        c.arg("--config").arg(config).arg("--print-config").env("CREDENTIALS_DIRECTORY", credentials);
        c.output().unwrap()
    };
    let credentials = root.at("/run/credentials/stream-supervisor@test.service");
    fs::create_dir_all(&credentials).unwrap();

    let out = print_config(&example, &credentials);
    assert!(out.status.success(), "{}", text(&out));

    // "#key = ..." is a setting to uncomment; "# text" is prose.
    let shipped = fs::read_to_string(&example).unwrap();
    let full: String = shipped
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '"' || c.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for setting in [
        "brokers = ",
        "source-topic = ",
        "dest-topic = ",
        "group-id = ",
        "hashers = ",
        "metrics-addr = ",
        "[kafka]",
        "\"security.protocol\" = \"SASL_SSL\"",
        "\"sasl.mechanism\" = \"SCRAM-SHA-512\"",
        "\"sasl.username\" = ",
        "\"sasl.password\" = \"@kafka-password\"",
        "\"ssl.ca.location\" = ",
    ] {
        assert!(full.lines().any(|l| l.starts_with(setting)), "the example lacks {setting}:\n{shipped}");
    }
    let config = root.at("/etc/stream-supervisor/test.toml");
    fs::write(&config, &full).unwrap();

    // What LoadCredential= would leave in $CREDENTIALS_DIRECTORY.
    let password = "Pw-from-a-credential-file";
    fs::write(credentials.join("kafka-password"), format!("{password}\n")).unwrap();
    let out = print_config(&config, &credentials);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    for line in ["\"sasl.password\" = \"********\"", "\"security.protocol\" = \"SASL_SSL\"", "hashers = 4"] {
        assert!(shown.lines().any(|l| l == line), "{line:?} missing from:\n{shown}");
    }
    assert!(!text(&out).contains(password), "{}", text(&out));

    // The password does come from the credential: without it, a configuration error that names the file.
    fs::remove_file(credentials.join("kafka-password")).unwrap();
    let out = print_config(&config, &credentials);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka-password"), "{}", text(&out));
}

#[test]
fn without_a_built_binary_install_says_how_to_build_one_and_installs_nothing() {
    // A checkout with no target/: the scripts alone.
    let checkout = Root::new("checkout");
    let scripts = checkout.0.join("scripts");
    fs::create_dir_all(&scripts).unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    for name in ["install", "stream-supervisor@.service.in"] {
        fs::copy(here.join(name), scripts.join(name)).unwrap();
    }
    let destdir = Root::new("nothing");
    let out = install_with(&scripts.join("install"), &destdir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release"), "{}", text(&out));
    let out = install_with(&scripts.join("install"), &destdir, &["--bin", "/nonexistent/supervisor"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/supervisor"), "{}", text(&out));
    assert_eq!(fs::read_dir(&destdir.0).unwrap().count(), 0, "nothing installed");
}
