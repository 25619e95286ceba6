//! A secured listener for the TLS tests: a certificate authority made here, and a real tansu broker behind Debian's
//! stunnel, which terminates TLS on its own port. tansu 0.6.0 cannot serve TLS itself (its --cert and --key exclude
//! each other, and its acceptor is never used), so this is the TLS terminator the issue names.

use super::broker::{create_topics_at, free_port, scratch_dir, secure_clients_of, wait_listening, Broker, PARTITIONS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A CA that signed the listener's certificate, and one that did not.
pub struct Certs {
    pub ca: PathBuf,
    pub stranger_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/install-deps)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certs {
    pub fn make(dir: &Path) -> Certs {
        for ca in ["ca", "stranger"] {
            let subject = format!("/CN=supervisor test {ca}");
            let (key, cert) = (format!("{ca}.key"), format!("{ca}.pem"));
            openssl(
                dir,
                &[
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert, "-days", "2",
                    "-subj", &subject,
                ],
            );
        }
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        Certs {
            ca: dir.join("ca.pem"),
            stranger_ca: dir.join("stranger.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// tansu behind stunnel: clients reach it only over TLS, at `addr`. Both are stopped on drop.
pub struct TlsBroker {
    pub addr: String,
    pub certs: Certs,
    stunnel: Child,
    _broker: Broker,
}

impl TlsBroker {
    /// With the usual `src` and `dst` topics, made over TLS.
    pub fn with_topics(name: &str) -> TlsBroker {
        let tls = TlsBroker::start(name, false);
        create_topics_at(&tls.addr, &[("src", PARTITIONS), ("dst", PARTITIONS)]);
        tls
    }

    /// A broker that also requires SASL (SCRAM) from every client: SASL_SSL. It has no topics (and, its storage
    /// being in memory, no users).
    pub fn authenticating(name: &str) -> TlsBroker {
        TlsBroker::start(name, true)
    }

    fn start(name: &str, authentication: bool) -> TlsBroker {
        let dir = scratch_dir(name);
        let certs = Certs::make(&dir);
        let (plain, tls) = (free_port(), free_port());
        let broker = Broker::start_with(name, plain, tls, if authentication { &["--authentication"] } else { &[] });
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {}\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n\
                 cert = {}\nkey = {}\n",
                dir.join("stunnel.log").display(),
                certs.server_cert.display(),
                certs.server_key.display()
            ),
        )
        .unwrap();
        let stunnel = Command::new(stunnel_bin())
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel4 (scripts/install-deps)");
        let addr = format!("127.0.0.1:{tls}");
        wait_listening("stunnel", &addr);
        let ca = certs.ca.display().to_string();
        secure_clients_of(&addr, &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)]);
        TlsBroker { addr, certs, stunnel, _broker: broker }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

fn stunnel_bin() -> &'static str {
    if Command::new("stunnel4").arg("-version").stderr(Stdio::null()).stdout(Stdio::null()).status().is_ok() {
        "stunnel4"
    } else {
        "stunnel"
    }
}
