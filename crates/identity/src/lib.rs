//! Meridian's identities: SPIFFE IDs, the installation's root CA and the regions' intermediates,
//! issuance of short-lived certificates from certificate signing requests, and the rustls
//! configurations for mutual TLS between mesh hops.
//!
//! Private keys are made where they are used ([`request_for`]) and only signing requests travel;
//! the CA's key is written with mode 0600 and never printed (its `Debug` hides it). Who may have
//! which identity is decided by the caller of [`Authority::issue`]; this crate refuses a request
//! that asks for anything else.

mod authority;
pub mod enroll;
mod join_tokens;
mod public_cert;
mod seal;
mod spiffe;
mod verify;

pub use authority::{blank_request, request_for, Authority, AuthorityError, IssueError, Issued};
pub use join_tokens::{JoinTokens, JoinTokensError};
pub use public_cert::{chain_facts, check_upload, name_covers, ChainFacts, UploadError};
pub use seal::{random, SealError, SealingKey, SECRETS_KEY_LEN};
pub use spiffe::{BadSpiffeId, SpiffeId, Subject};
pub use verify::{
    certified_key, client_config, control_client_config, control_server_config,
    gateway_client_config, mesh_server_name, peer_id, provider, server_config, trust_bundle,
    CertStore, TlsError,
};
