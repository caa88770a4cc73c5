//! Certificate authorities: the installation's root, a region's intermediate, and issuance of
//! workload certificates from certificate signing requests.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::SpiffeId;

/// File names in an authority's directory.
const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";
const CHAIN_FILE: &str = "chain.pem";

/// Why an authority could not be created, stored, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// Reading or writing its files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Building or signing a certificate failed, or a stored one does not parse.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Why a certificate signing request was refused. Nothing is issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request does not parse or its signature is wrong.
    #[error("the certificate signing request is not valid: {0}")]
    BadRequest(rcgen::Error),
    /// The request names an identity the requester may not have.
    #[error("the request asks for `{asked}`, but the requester may only have `{allowed}`")]
    WrongIdentity {
        /// What the request asked for.
        asked: String,
        /// What the requester may have.
        allowed: String,
    },
    /// The identity is of another trust domain.
    #[error("`{id}` is not in trust domain `{trust_domain}`")]
    ForeignTrustDomain {
        /// The identity.
        id: String,
        /// This authority's trust domain.
        trust_domain: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
}

/// A certificate issued to a workload or component.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate followed by the intermediates up to (not including) the root, PEM.
    pub chain_pem: String,
    /// The end of its validity.
    pub not_after: time::OffsetDateTime,
}

/// A certificate authority: its certificate, its key, and its chain up to the root.
pub struct Authority {
    trust_domain: String,
    cert_pem: String,
    key: KeyPair,
    /// The authority's own certificate as an issuer for rcgen.
    issuer: rcgen::Certificate,
    /// Intermediates above this authority, below the root, PEM.
    parents_pem: String,
    /// Whether this is the root (its certificate is the trust bundle, not sent in chains).
    is_root: bool,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Certificates are valid from a little before they are made, for clocks a little behind.
pub(crate) const BACKDATE: time::Duration = time::Duration::minutes(5);

fn ca_params(common_name: &str, validity: Duration, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - BACKDATE;
    params.not_after = now() + validity;
    params
}

fn issuer_of(cert_pem: &str, key: &KeyPair) -> Result<rcgen::Certificate, rcgen::Error> {
    CertificateParams::from_ca_cert_pem(cert_pem)?.self_signed(key)
}

impl Authority {
    /// Creates a root CA for `trust_domain`, valid for `validity`.
    pub fn create_root(
        trust_domain: &str,
        validity: Duration,
    ) -> Result<Authority, AuthorityError> {
        let key = KeyPair::generate()?;
        let params = ca_params(&format!("Meridian root CA ({trust_domain})"), validity, 1);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            key,
            issuer: cert,
            parents_pem: String::new(),
            is_root: true,
        })
    }

    /// Creates a CA for public names (the local CA of `--local-ca`, separate from the mesh's
    /// root), valid for `validity`: it signs server certificates only
    /// ([`Authority::issue_server`]).
    pub fn create_public(validity: Duration) -> Result<Authority, AuthorityError> {
        let key = KeyPair::generate()?;
        let params = ca_params("Meridian local CA for public names", validity, 0);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            trust_domain: String::new(),
            cert_pem: cert.pem(),
            key,
            issuer: cert,
            parents_pem: String::new(),
            is_root: true,
        })
    }

    /// Issues a TLS server certificate for the DNS name `domain` (a wildcard too), valid for
    /// `lifetime`, to a fresh ECDSA P-256 key. Returns the chain (without the root) and the
    /// key, PEM.
    pub fn issue_server(
        &self,
        domain: &str,
        lifetime: Duration,
    ) -> Result<(Issued, String), IssueError> {
        let key = KeyPair::generate().map_err(IssueError::Signing)?;
        let mut params =
            CertificateParams::new(vec![domain.to_owned()]).map_err(IssueError::Signing)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, domain);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now() - BACKDATE;
        params.not_after = now() + lifetime;
        params.use_authority_key_identifier_extension = true;
        let not_after = params.not_after;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(IssueError::Signing)?;
        let issued = Issued {
            chain_pem: format!("{}{}", cert.pem(), self.chain()),
            not_after,
        };
        Ok((issued, key.serialize_pem()))
    }

    /// Issues an intermediate CA for `region` (it can issue end-entity certificates only).
    pub fn issue_intermediate(
        &self,
        region: &str,
        validity: Duration,
    ) -> Result<Authority, AuthorityError> {
        let key = KeyPair::generate()?;
        let cert =
            self.intermediate_params(region, validity)
                .signed_by(&key, &self.issuer, &self.key)?;
        let cert_pem = cert.pem();
        let issuer = issuer_of(&cert_pem, &key)?;
        Ok(Authority {
            trust_domain: self.trust_domain.clone(),
            cert_pem,
            key,
            issuer,
            parents_pem: self.chain(),
            is_root: false,
        })
    }

    fn intermediate_params(&self, region: &str, validity: Duration) -> CertificateParams {
        let name = format!("Meridian {region} intermediate CA ({})", self.trust_domain);
        ca_params(&name, validity, 0)
    }

    /// Issues an intermediate CA for `region` to the key of the signing request `csr_pem` (made
    /// by the region's control plane, whose key stays there); what the request asks for besides
    /// its key is ignored. Returns the chain to hand back: the intermediate, then its parents
    /// below the root.
    pub fn issue_intermediate_for(
        &self,
        csr_pem: &str,
        region: &str,
        validity: Duration,
    ) -> Result<String, IssueError> {
        let mut request =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(IssueError::BadRequest)?;
        request.params = self.intermediate_params(region, validity);
        let cert = request
            .signed_by(&self.issuer, &self.key)
            .map_err(IssueError::Signing)?;
        Ok(format!("{}{}", cert.pem(), self.chain()))
    }

    /// The authority a region's control plane holds: `chain_pem` (its certificate, then its
    /// parents below the root) as issued by [`Authority::issue_intermediate_for`], and its own
    /// key.
    pub fn from_issued(
        trust_domain: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Authority, AuthorityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let end = chain_pem
            .find("-----END CERTIFICATE-----")
            .map(|i| i + "-----END CERTIFICATE-----".len())
            .ok_or(rcgen::Error::CouldNotParseCertificate)?;
        let cert_pem = format!("{}\n", chain_pem[..end].trim());
        let parents_pem = chain_pem[end..].trim_start().to_owned();
        let issuer = issuer_of(&cert_pem, &key)?;
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            cert_pem,
            key,
            issuer,
            parents_pem,
            is_root: false,
        })
    }

    /// The trust domain this authority issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// This authority's certificate, PEM (for the root: the trust bundle).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `id`, valid for `lifetime`, to the key of the signing request
    /// `csr_pem`. The request may name no identity or exactly `id` (as a URI SAN); anything else
    /// is refused: who may have which identity is the caller's decision, made before this.
    pub fn issue(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, IssueError> {
        if id.trust_domain != self.trust_domain {
            return Err(IssueError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let mut request =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(IssueError::BadRequest)?;
        let wanted = id.to_string();
        for san in &request.params.subject_alt_names {
            let asked = match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            if asked != wanted {
                return Err(IssueError::WrongIdentity {
                    asked,
                    allowed: wanted,
                });
            }
        }
        let uri = wanted.clone().try_into().map_err(IssueError::Signing)?;
        let params = &mut request.params;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, wanted.as_str());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now() - BACKDATE;
        params.not_after = now() + lifetime;
        params.use_authority_key_identifier_extension = true;
        let not_after = params.not_after;
        let cert = request
            .signed_by(&self.issuer, &self.key)
            .map_err(IssueError::Signing)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.chain()),
            not_after,
        })
    }

    /// What a certificate this authority issues is sent with: this authority (unless it is the
    /// root) and its parents below the root.
    fn chain(&self) -> String {
        if self.is_root {
            String::new()
        } else {
            format!("{}{}", self.cert_pem, self.parents_pem)
        }
    }

    /// Writes the authority to `dir`: its certificate, its chain, and its key (mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), AuthorityError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| AuthorityError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        write_private(&key_path, &self.key.serialize_pem()).map_err(io(&key_path))?;
        let cert_path = dir.join(CERT_FILE);
        std::fs::write(&cert_path, &self.cert_pem).map_err(io(&cert_path))?;
        let chain_path = dir.join(CHAIN_FILE);
        std::fs::write(&chain_path, &self.parents_pem).map_err(io(&chain_path))?;
        Ok(())
    }

    /// Reads an authority written by [`Authority::save`]; `None` when `dir` holds none.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Option<Authority>, AuthorityError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| AuthorityError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        if !dir.join(KEY_FILE).exists() {
            return Ok(None);
        }
        let key = KeyPair::from_pem(&read(KEY_FILE)?)?;
        let cert_pem = read(CERT_FILE)?;
        let parents_pem = read(CHAIN_FILE)?;
        let issuer = issuer_of(&cert_pem, &key)?;
        let is_root = crate::verify::is_self_issued(&cert_pem);
        Ok(Some(Authority {
            trust_domain: trust_domain.to_owned(),
            cert_pem,
            key,
            issuer,
            parents_pem,
            is_root,
        }))
    }
}

/// Writes `text` to a new file readable by its owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// A key pair and a signing request that names nothing: the issuer decides the name (and, for
/// an intermediate CA, its constraints), e.g. from a join token. Returns (request PEM, private
/// key PEM).
pub fn blank_request() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let request = CertificateParams::default().serialize_request(&key)?;
    Ok((request.pem()?, key.serialize_pem()))
}

/// A key pair and a signing request for `id`, made where the key will be used: the key never
/// leaves the requester. Returns (request PEM, private key PEM).
pub fn request_for(id: &SpiffeId) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    let request = params.serialize_request(&key)?;
    Ok((request.pem()?, key.serialize_pem()))
}
