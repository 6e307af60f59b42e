//! `herd certs`: a private CA and the certificates of a new herd.
//!
//! One run writes the CA, one certificate per node and one client certificate for
//! the CLI. A node's certificate serves both ends of node-to-node traffic: it is the
//! server certificate of the node's gRPC port and the client certificate the node
//! presents when it calls the others. Every node certificate also carries the name
//! [`tls::NODE_NAME`], which is how a node tells another node from a client that
//! holds a certificate of the same CA (see [`tls::require_peer_cert`]).
//!
//! Everything is generated in memory and every check is made before the first file
//! is written, so a refusal (a bad node value, an existing file) leaves `--out` as it was.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::tls;

/// Longest validity `--days` accepts (about 100 years).
const MAX_DAYS: u32 = 36_500;
const SECS_PER_DAY: u64 = 86_400;
/// Certificates are valid from this long before they are made, so that a node whose
/// clock runs a little behind the machine that ran `herd certs` accepts them.
const BACKDATE: Duration = Duration::from_secs(3_600);
/// The output directory and the private keys are for their owner only.
const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
/// Common names of the CA and of the CLI's certificate.
const CA_NAME: &str = "herd CA";
const CLIENT_NAME: &str = "herd-client";
/// The herd secret's file in `--out`.
const SECRET_FILE: &str = "herd-secret";
const EXAMPLE: &str = "expected ID=HOST[,HOST...], e.g. 1=10.0.0.1,herd-1.example";

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// output directory
    #[arg(long, default_value = "./herd-tls")]
    pub out: PathBuf,
    /// One per node: ID=HOST[,HOST...] (IPs or DNS names the other nodes use to
    /// reach it), e.g. 1=10.0.0.1,herd-1.example
    #[arg(required = true, value_name = "ID=HOST[,HOST...]")]
    pub nodes: Vec<String>,
    /// validity in days
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// overwrite existing files
    #[arg(long)]
    pub force: bool,
}

/// Why `herd certs` did nothing, or stopped part way.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A malformed argument, or files in the way without `--force`: nothing was
    /// written (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Generating or writing failed (exit 1). Files written before the failure stay.
    #[error("{0}")]
    Io(String),
}

/// One `ID=HOST[,HOST...]` argument.
#[derive(Debug, Clone, PartialEq)]
struct NodeSpec {
    id: u64,
    /// IPs in canonical form and lowercase DNS names, without duplicates.
    hosts: Vec<String>,
}

/// A certificate and its private key, PEM.
struct Issued {
    cert: String,
    key: String,
}

/// A file to write: name inside `--out`, contents, mode.
struct OutFile {
    name: String,
    contents: String,
    mode: u32,
}

/// Makes the CA, the node certificates and the client certificate, writes them into
/// `args.out` and returns a summary for the user: the files, the `[tls]` section of
/// each node's herd.toml and the CLI's flags.
pub fn run(args: &CertsArgs) -> Result<String, CertsError> {
    let nodes = parse_nodes(&args.nodes).map_err(CertsError::Usage)?;
    let (from, until) = validity(args.days).map_err(CertsError::Usage)?;
    let files = generate(&nodes, from, until)
        .map_err(|e| CertsError::Io(format!("cannot make the certificates: {e}")))?;

    let out = &args.out;
    if !args.force {
        let existing: Vec<String> = files
            .iter()
            .map(|f| out.join(&f.name))
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CertsError::Usage(format!(
                "refusing to overwrite {} (use --force, or another --out)",
                existing.join(", ")
            )));
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(out)
        .map_err(|e| CertsError::Io(format!("cannot create {}: {e}", out.display())))?;
    for file in &files {
        let path = out.join(&file.name);
        write_file(&path, &file.contents, file.mode)
            .map_err(|e| CertsError::Io(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(summary(out, &nodes, args.days, until))
}

/// Parses every node argument; ids must be unique.
fn parse_nodes(values: &[String]) -> Result<Vec<NodeSpec>, String> {
    if values.is_empty() {
        return Err(format!("name at least one node ({EXAMPLE})"));
    }
    let mut by_id: BTreeMap<u64, (&str, NodeSpec)> = BTreeMap::new();
    for value in values {
        let spec = parse_node(value)?;
        if let Some((first, _)) = by_id.get(&spec.id) {
            return Err(format!(
                "{value:?}: node {} is already given by {first:?}",
                spec.id
            ));
        }
        by_id.insert(spec.id, (value, spec));
    }
    Ok(by_id.into_values().map(|(_, spec)| spec).collect())
}

fn parse_node(value: &str) -> Result<NodeSpec, String> {
    let bad = |what: String| format!("node {value:?}: {what}; {EXAMPLE}");
    let (id, hosts) = value
        .split_once('=')
        .ok_or_else(|| bad("no '=' after the node id".into()))?;
    let id = id.trim();
    let id: u64 = id
        .parse()
        .map_err(|_| bad(format!("the node id {id:?} is not a number")))?;
    if id == 0 {
        return Err(bad("node ids start at 1".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(bad("a host is missing".into()));
        }
        let host = check_host(host).map_err(bad)?;
        if !out.contains(&host) {
            out.push(host);
        }
    }
    Ok(NodeSpec { id, hosts: out })
}

/// A host as it goes into a certificate: an IP address in canonical form, or a DNS
/// name (RFC 1123 labels) in lowercase. Wildcards are refused.
fn check_host(host: &str) -> Result<String, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if host.contains(':') {
        return Err(format!(
            "{host:?} is not a host: give the IP or name without a port"
        ));
    }
    let name = host.to_ascii_lowercase();
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(format!("{host:?} is neither an IP address nor a DNS name"));
    }
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{host:?} is not a valid IP address"));
    }
    Ok(name)
}

/// The validity window: from a little before now to `days` after now.
fn validity(days: u32) -> Result<(SystemTime, SystemTime), String> {
    if days == 0 || days > MAX_DAYS {
        return Err(format!("--days {days}: give 1 to {MAX_DAYS}"));
    }
    let now = SystemTime::now();
    let from = now.checked_sub(BACKDATE).unwrap_or(now);
    // Cannot overflow: at most MAX_DAYS (about 100 years) after now.
    let until = now
        .checked_add(Duration::from_secs(u64::from(days) * SECS_PER_DAY))
        .ok_or_else(|| format!("--days {days}: too far in the future"))?;
    Ok((from, until))
}

/// Every file of the herd, CA first, in the order they are written.
fn generate(
    nodes: &[NodeSpec],
    from: SystemTime,
    until: SystemTime,
) -> Result<Vec<OutFile>, rcgen::Error> {
    let mut ca_params = CertificateParams::default();
    // Dated, so that the CAs of two herds (or two runs) have different names: a
    // verifier picks the issuer by name, and an operator tells them apart by it.
    ca_params.distinguished_name = common_name(&format!(
        "{CA_NAME} {}",
        humantime::format_rfc3339_seconds(SystemTime::now())
    ));
    // Path length 0: the CA signs end certificates only, no intermediate CAs.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = from.into();
    ca_params.not_after = until.into();
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut files = vec![
        OutFile {
            name: "ca.pem".into(),
            contents: ca.pem(),
            mode: CERT_MODE,
        },
        OutFile {
            name: "ca.key".into(),
            contents: ca.key().serialize_pem(),
            mode: KEY_MODE,
        },
    ];
    let mut push = |stem: String, issued: Issued| {
        files.push(OutFile {
            name: format!("{stem}.pem"),
            contents: issued.cert,
            mode: CERT_MODE,
        });
        files.push(OutFile {
            name: format!("{stem}.key"),
            contents: issued.key,
            mode: KEY_MODE,
        });
    };
    for node in nodes {
        let cn = tls::node_cn(node.id);
        let issued = leaf(
            &ca,
            &cn,
            node_names(node),
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            from,
            until,
        )?;
        push(format!("node-{}", node.id), issued);
    }
    let client = leaf(
        &ca,
        CLIENT_NAME,
        vec![CLIENT_NAME.to_string()],
        &[ExtendedKeyUsagePurpose::ClientAuth],
        from,
        until,
    )?;
    push("client".into(), client);
    // For cluster.secret_file: a herd without TLS, or one that wants both.
    files.push(OutFile {
        name: SECRET_FILE.into(),
        contents: format!("{}\n", crate::cluster::credential::new_secret()),
        mode: KEY_MODE,
    });
    Ok(files)
}

/// The names a node's certificate holds: the hosts given, its common name and the
/// mark of a node certificate.
fn node_names(node: &NodeSpec) -> Vec<String> {
    let mut names = node.hosts.clone();
    for extra in [tls::node_cn(node.id), tls::NODE_NAME.to_string()] {
        if !names.contains(&extra) {
            names.push(extra);
        }
    }
    names
}

/// An end certificate signed by the CA, with a fresh key.
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    cn: &str,
    names: Vec<String>,
    usages: &[ExtendedKeyUsagePurpose],
    from: SystemTime,
    until: SystemTime,
) -> Result<Issued, rcgen::Error> {
    let key = KeyPair::generate()?;
    // `new` makes an IP SAN of what parses as an IP and a DNS SAN of the rest.
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = common_name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.not_before = from.into();
    params.not_after = until.into();
    // The serial number is derived from the (fresh) public key: unique per certificate.
    let cert = params.signed_by(&key, ca)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes beside `path` and renames over it, so that an overwritten key gets its
/// mode from here rather than keeping the old file's.
fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover of an interrupted run; create_new below refuses to reuse it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// What was written, and how to use it.
fn summary(out: &Path, nodes: &[NodeSpec], days: u32, until: SystemTime) -> String {
    let dir = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let file = |name: &str| dir.join(name).display().to_string();
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(
        s,
        "Wrote a CA and {} node certificate(s) to {} (valid {days} days, until {}):",
        nodes.len(),
        dir.display(),
        humantime::format_rfc3339_seconds(until)
    );
    let _ = writeln!(
        s,
        "  ca.pem               the CA certificate: every node and every CLI user needs it"
    );
    let _ = writeln!(
        s,
        "  ca.key               the CA's private key: keep it offline, it can make node certificates"
    );
    for node in nodes {
        let _ = writeln!(
            s,
            "  {:<20} node {}, for {}",
            format!("node-{}.pem/.key", node.id),
            node.id,
            node_names(node).join(", ")
        );
    }
    let _ = writeln!(
        s,
        "  client.pem/.key      a client certificate for the CLI (optional: the API token suffices)"
    );
    let _ = writeln!(
        s,
        "  herd-secret          a herd secret, for [cluster] secret_file (needed only without [tls])"
    );
    let _ = writeln!(
        s,
        "\nCopy ca.pem, node-ID.pem and node-ID.key to node ID; ca.key need not leave this machine."
    );
    for node in nodes {
        let cert = file(&format!("node-{}.pem", node.id));
        let key = file(&format!("node-{}.key", node.id));
        let _ = writeln!(
            s,
            "\nherd.toml of node {}:\n[tls]\nca = {}\ncert = {}\nkey = {}",
            node.id,
            toml_string(&file("ca.pem")),
            toml_string(&cert),
            toml_string(&key)
        );
    }
    let _ = write!(
        s,
        "\nThe CLI: herd --ca {} [--cert {} --key {}] ...",
        file("ca.pem"),
        file("client.pem"),
        file("client.key")
    );
    s
}

/// A TOML basic string, quoted and escaped.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, nodes: &[&str]) -> CertsArgs {
        CertsArgs {
            out: out.to_path_buf(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            days: 30,
            force: false,
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn bad_node_values_are_usage_errors_naming_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tls");
        for (nodes, named, why) in [
            (&["x=1.2.3.4"][..], "x=1.2.3.4", "not a number"),
            (&["1="][..], "1=", "host is missing"),
            (&["0=10.0.0.1"][..], "0=10.0.0.1", "start at 1"),
            (&["10.0.0.1"][..], "10.0.0.1", "no '='"),
            (
                &["1=10.0.0.1:7401"][..],
                "1=10.0.0.1:7401",
                "without a port",
            ),
            (&["1=a,,b"][..], "1=a,,b", "host is missing"),
            (&["1=*.example"][..], "1=*.example", "neither an IP"),
            (&["1=300.1.1.1"][..], "1=300.1.1.1", "not a valid IP"),
            (
                &["1=10.0.0.1", "2=10.0.0.2", "1=10.0.0.3"][..],
                "1=10.0.0.3",
                "already given by \"1=10.0.0.1\"",
            ),
        ] {
            match run(&args(&out, nodes)) {
                Err(CertsError::Usage(m)) => {
                    assert!(m.contains(&format!("{named:?}")), "{nodes:?}: {m}");
                    assert!(m.contains(why), "{nodes:?}: {m}");
                }
                other => panic!("{nodes:?}: expected a usage error, got {other:?}"),
            }
        }
        let mut zero_days = args(&out, &["1=10.0.0.1"]);
        zero_days.days = 0;
        assert!(matches!(run(&zero_days), Err(CertsError::Usage(m)) if m.contains("--days 0")));
        assert!(!out.exists(), "a usage error writes nothing");
    }

    #[test]
    fn hosts_are_normalised() {
        let spec = parse_node(" 3 = 10.0.0.3, Herd-3.Example ,[::1],10.0.0.3").unwrap();
        assert_eq!(spec.id, 3);
        assert_eq!(spec.hosts, ["10.0.0.3", "herd-3.example", "::1"]);
        assert_eq!(
            node_names(&spec),
            [
                "10.0.0.3",
                "herd-3.example",
                "::1",
                "herd-node-3",
                tls::NODE_NAME
            ]
        );
    }

    #[test]
    fn writes_every_file_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new").join("tls");
        let summary = run(&args(&out, &["2=10.0.0.2", "1=127.0.0.1,localhost"])).unwrap();
        for name in [
            "ca.pem",
            "node-1.pem",
            "node-2.pem",
            "client.pem",
            "ca.key",
            "node-1.key",
            "node-2.key",
            "client.key",
            SECRET_FILE,
        ] {
            let path = out.join(name);
            let text = fs::read_to_string(&path).unwrap();
            if name == SECRET_FILE {
                assert_eq!(text.trim().len(), 64, "{text:?}");
                assert_eq!(mode(&path), KEY_MODE);
            } else if name.ends_with(".key") {
                assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{name}");
                assert_eq!(mode(&path), KEY_MODE, "{name}");
            } else {
                assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
            }
        }
        assert_eq!(mode(&out), DIR_MODE);
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            9,
            "no temporary file left"
        );
        let abs = std::path::absolute(&out).unwrap();
        let snippet = format!(
            "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/node-1.pem\"\nkey = \"{0}/node-1.key\"",
            abs.display()
        );
        assert!(summary.contains(&snippet), "{summary}");
        assert!(summary.contains(&format!("--ca {}/ca.pem", abs.display())));
        assert!(summary.contains("node 1, for 127.0.0.1, localhost, herd-node-1, herd-node"));
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tls");
        run(&args(&out, &["1=10.0.0.1"])).unwrap();
        let before: Vec<String> = ["ca.pem", "ca.key", "node-1.key"]
            .iter()
            .map(|n| fs::read_to_string(out.join(n)).unwrap())
            .collect();

        // A second run, even for another node, writes nothing.
        match run(&args(&out, &["1=10.0.0.1", "2=10.0.0.2"])) {
            Err(CertsError::Usage(m)) => {
                assert!(m.contains(&out.join("ca.pem").display().to_string()), "{m}");
                assert!(m.contains("--force"), "{m}");
                assert!(!m.contains("node-2"), "node-2 files do not exist yet: {m}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!out.join("node-2.pem").exists());
        let after: Vec<String> = ["ca.pem", "ca.key", "node-1.key"]
            .iter()
            .map(|n| fs::read_to_string(out.join(n)).unwrap())
            .collect();
        assert_eq!(before, after);

        // With --force, new files replace the old ones and keys stay private even
        // when the old file was readable by others.
        fs::set_permissions(
            out.join("ca.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let mut forced = args(&out, &["1=10.0.0.1"]);
        forced.force = true;
        run(&forced).unwrap();
        assert_ne!(fs::read_to_string(out.join("ca.key")).unwrap(), before[1]);
        assert_eq!(mode(&out.join("ca.key")), KEY_MODE);
    }
}
