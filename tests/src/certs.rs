//! Test certificates made with the real `openssl` CLI: a CA, a server certificate
//! it signed for 127.0.0.1 (an IP subjectAltName), and a self-signed certificate
//! for 127.0.0.1 that no CA vouches for. ECDSA P-256, valid for a few days.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::run_bounded;

const OPENSSL: &str = "openssl";

/// The PEM files of a small test PKI, all in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate: what a client is told to trust (`ca_file`).
    pub ca_cert: PathBuf,
    /// A server certificate for IP 127.0.0.1 signed by the CA, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A self-signed certificate for IP 127.0.0.1, and its key.
    pub self_signed_cert: PathBuf,
    pub self_signed_key: PathBuf,
}

impl TestPki {
    /// Generates the CA, the signed server certificate and the self-signed one in
    /// `dir` (which must exist).
    pub fn generate(dir: &Path) -> TestPki {
        let p = |name: &str| dir.join(name);
        let pki = TestPki {
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            self_signed_cert: p("self-signed.pem"),
            self_signed_key: p("self-signed.key"),
        };
        write(
            &p("ca.cnf"),
            "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
             [dn]\nCN = Herd test CA\n\
             [ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n",
        );
        let leaf_ext =
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                        extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n\
                        subjectKeyIdentifier = hash\n";
        write(
            &p("server.cnf"),
            &format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n\
                 [ext]\n{leaf_ext}authorityKeyIdentifier = keyid\n"
            ),
        );
        write(
            &p("self-signed.cnf"),
            &format!(
                "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
                 [dn]\nCN = 127.0.0.1\n[ext]\n{leaf_ext}"
            ),
        );
        let key_args = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];

        // The CA: self-signed, CA:TRUE.
        openssl(
            Command::new(OPENSSL)
                .args(["req", "-x509", "-new", "-days", "3"])
                .args(key_args)
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(&pki.ca_cert)
                .arg("-config")
                .arg(p("ca.cnf")),
        );
        // The server: a request, signed by the CA with the leaf extensions.
        openssl(
            Command::new(OPENSSL)
                .args(["req", "-new"])
                .args(key_args)
                .arg("-keyout")
                .arg(&pki.server_key)
                .arg("-out")
                .arg(p("server.csr"))
                .arg("-config")
                .arg(p("server.cnf")),
        );
        let serial = format!("0x{:x}", crate::now_ms());
        openssl(
            Command::new(OPENSSL)
                .args(["x509", "-req", "-days", "3", "-set_serial", &serial])
                .arg("-in")
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(&pki.ca_cert)
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-extfile")
                .arg(p("server.cnf"))
                .args(["-extensions", "ext"])
                .arg("-out")
                .arg(&pki.server_cert),
        );
        // The self-signed one: no CA behind it.
        openssl(
            Command::new(OPENSSL)
                .args(["req", "-x509", "-new", "-days", "3"])
                .args(key_args)
                .arg("-keyout")
                .arg(&pki.self_signed_key)
                .arg("-out")
                .arg(&pki.self_signed_cert)
                .arg("-config")
                .arg(p("self-signed.cnf")),
        );
        // What a reader of a failed test wants to see: the SAN really is there.
        let text = openssl(
            Command::new(OPENSSL)
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(&pki.server_cert),
        );
        assert!(
            text.contains("IP Address:127.0.0.1"),
            "the server certificate has no IP SAN: {text}"
        );
        pki
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Runs one openssl command (bounded); panics with its stderr unless it succeeds.
fn openssl(cmd: &mut Command) -> String {
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
