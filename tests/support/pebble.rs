//! pebble, the ACME test CA, on loopback: its own HTTPS certificate made here (its CA is the
//! `--acme-ca-root` of the control plane), a DNS server of the test's that answers every A query
//! with a loopback address (127.0.0.1, or the test's edges' in turn: pebble never resolves names
//! off the machine), and free ports for its directory, management API and challenge validation.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{strict, Killed};

/// A running pebble; stopped when dropped.
pub struct Pebble {
    _child: Killed,
    _dns: tokio::task::JoinHandle<()>,
    /// The ACME directory URL.
    pub directory: String,
    /// The root its HTTPS certificate chains to (PEM file).
    pub https_root: PathBuf,
    /// Its management API (`https://…`), where `/roots/0` is the root of what it issues.
    pub management: String,
    /// Where HTTP-01 validation connects (on 127.0.0.1), for the test's edge to take.
    pub http01: Option<tokio::net::TcpListener>,
    /// Where TLS-ALPN-01 validation connects (on 127.0.0.1), for the test's edge to take.
    pub tls_alpn01: Option<tokio::net::TcpListener>,
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a CA and a certificate it signs for 127.0.0.1 and localhost into `dir`; returns the
/// paths of the CA, the certificate and its key.
fn https_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble HTTPS test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("https-ca.pem"),
        dir.join("https-cert.pem"),
        dir.join("https-key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Where pebble validates challenges: the addresses its DNS answers A queries with (one per
/// query, in turn) and the ports of HTTP-01 and TLS-ALPN-01.
pub struct Validation {
    pub addresses: Vec<Ipv4Addr>,
    pub http_port: u16,
    pub tls_port: u16,
}

/// Answers each A query with the next of `addresses` (in turn), and every other query with
/// no record.
async fn loopback_dns(socket: tokio::net::UdpSocket, addresses: Vec<Ipv4Addr>) {
    let mut buf = [0u8; 512];
    let turn = AtomicUsize::new(0);
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let next = || addresses[turn.fetch_add(1, Ordering::Relaxed) % addresses.len()];
        if let Some(answer) = dns_answer(&buf[..len], next) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

/// The answer to one DNS query (one question), or `None` if it is not one; an A query is
/// answered with the address `address` gives (called for A queries only).
pub fn dns_answer(query: &[u8], address: impl FnOnce() -> Ipv4Addr) -> Option<Vec<u8>> {
    let mut at = 12;
    while *query.get(at)? != 0 {
        at += usize::from(query[at]) + 1;
    }
    let question_end = at + 5;
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    query.get(question_end - 1)?;
    let is_a = qtype == 1;
    let mut answer = query[..2].to_vec();
    answer.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    answer.extend_from_slice(&query[12..question_end]);
    if is_a {
        // Name: a pointer to the question's; type A, class IN, TTL 0 (each query asks again),
        // 4 bytes: the address.
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        answer.extend_from_slice(&address().octets());
    }
    Some(answer)
}

impl Pebble {
    /// Whether pebble is installed; if not, says it skips, or fails under
    /// MERIDIAN_TEST_STRICT=1.
    pub fn installed() -> bool {
        if Command::new("pebble").arg("-h").output().is_err() {
            assert!(
                !strict(),
                "pebble is not installed (apt-get install pebble)"
            );
            eprintln!("skipped: pebble is not installed");
            return false;
        }
        true
    }

    /// Starts pebble with its state in `dir`, validating on 127.0.0.1 at listeners it hands
    /// the test ([`Pebble::http01`], [`Pebble::tls_alpn01`]); `None` (a skip) when pebble is
    /// not installed, unless MERIDIAN_TEST_STRICT=1.
    pub async fn start(dir: &Path) -> Option<Pebble> {
        if !Self::installed() {
            return None;
        }
        let http01 = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let tls_alpn01 = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let validation = Validation {
            addresses: vec![Ipv4Addr::LOCALHOST],
            http_port: http01.local_addr().unwrap().port(),
            tls_port: tls_alpn01.local_addr().unwrap().port(),
        };
        let mut pebble = Self::start_validating(dir, validation).await?;
        pebble.http01 = Some(http01);
        pebble.tls_alpn01 = Some(tls_alpn01);
        Some(pebble)
    }

    /// Starts pebble with its state in `dir`, validating where `validation` says (the test's
    /// real edges); `None` (a skip) when pebble is not installed, unless
    /// MERIDIAN_TEST_STRICT=1.
    pub async fn start_validating(dir: &Path, validation: Validation) -> Option<Pebble> {
        if !Self::installed() {
            return None;
        }
        let dns = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let dns_addr: SocketAddr = dns.local_addr().unwrap();
        let dns = tokio::spawn(loopback_dns(dns, validation.addresses));
        let (https_root, cert, key) = https_certificate(dir);
        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": validation.http_port,
            "tlsPort": validation.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &dns_addr.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let child = Killed(child);
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(Instant::now() < end, "pebble did not listen on {listen}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Pebble {
            _child: child,
            _dns: dns,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_root,
            management: format!("https://127.0.0.1:{management}"),
            http01: None,
            tls_alpn01: None,
        })
    }

    /// The arguments of `meridian control --global` that order from this pebble with
    /// `challenge`, the secrets key in `secrets_key` (made if missing).
    pub fn control_args(&self, secrets_key: &Path, challenge: &str) -> Vec<String> {
        let args = [
            "--secrets-key",
            secrets_key.to_str().unwrap(),
            "--create-secrets-key",
            "--acme-directory",
            &self.directory,
            "--acme-ca-root",
            self.https_root.to_str().unwrap(),
            "--acme-email",
            "ops@example.test",
            "--acme-challenge",
            challenge,
        ];
        args.map(str::to_owned).to_vec()
    }

    /// The root of the certificates pebble issues (PEM), from its management API.
    pub async fn issuing_root(&self) -> String {
        let root = std::fs::read(&self.https_root).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&root).unwrap())
            .build()
            .unwrap();
        let answer = client
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{answer:?}");
        answer.text().await.unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self._dns.abort();
    }
}
