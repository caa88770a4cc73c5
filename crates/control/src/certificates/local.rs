//! The local CA for public names (`--local-ca`): made once in the data directory, separate from
//! the mesh's root, it issues every claimed domain (wildcards too) a certificate at once. For
//! development and tests: clients trust it by its certificate file (`curl --cacert`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_identity::{Authority, AuthorityError, IssueError};

use super::Issued;

/// How long the local CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long a certificate it issues is valid (renewed at two thirds, like any other).
pub const LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// The directory below the data directory that holds it.
const DIR: &str = "public-ca";

/// The local CA for public names.
pub struct LocalCa {
    ca: Authority,
    certificate_file: PathBuf,
}

impl LocalCa {
    /// Loads the local CA from `<data_dir>/public-ca`, or makes it there. Returns it and
    /// whether it was made now.
    pub fn open(data_dir: &Path) -> Result<(LocalCa, bool), AuthorityError> {
        let dir = data_dir.join(DIR);
        let (ca, created) = match Authority::load(&dir, "")? {
            Some(ca) => (ca, false),
            None => {
                let ca = Authority::create_public(CA_VALIDITY)?;
                ca.save(&dir)?;
                (ca, true)
            }
        };
        Ok((
            LocalCa {
                ca,
                certificate_file: dir.join("ca.pem"),
            },
            created,
        ))
    }

    /// The file holding the CA's certificate (PEM), which clients trust.
    pub fn certificate_file(&self) -> &Path {
        &self.certificate_file
    }

    /// Issues `domain` a certificate for [`LIFETIME`] to a fresh ECDSA P-256 key.
    pub fn issue(&self, domain: &str) -> Result<Issued, IssueError> {
        let (issued, key_pem) = self.ca.issue_server(domain, LIFETIME)?;
        Ok(Issued {
            chain_pem: issued.chain_pem,
            key_pem,
            renew_window: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_its_certificates_verify_against_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = LocalCa::open(dir.path()).unwrap();
        assert!(created);
        let (again, created) = LocalCa::open(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(ca.certificate_file(), again.certificate_file());

        let issued = again.issue("*.shop.example.test").unwrap();
        let facts = meridian_identity::chain_facts(&issued.chain_pem).unwrap();
        assert_eq!(facts.names, ["*.shop.example.test"]);
        assert_eq!(facts.issuer, "Meridian local CA for public names");
        let now = facts.not_before + 600;
        meridian_identity::check_upload(
            "a.shop.example.test",
            &issued.chain_pem,
            &issued.key_pem,
            now,
        )
        .unwrap();
        let roots = meridian_identity::trust_bundle(
            &std::fs::read_to_string(ca.certificate_file()).unwrap(),
        )
        .unwrap();
        let leaf =
            rustls_pki_types::CertificateDer::from_pem_slice(issued.chain_pem.as_bytes()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            meridian_identity::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls_pki_types::ServerName::try_from("a.shop.example.test").unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .unwrap();
    }
}
