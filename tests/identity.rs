//! Identities from a real regional control plane: joining with a one-time token, who may get
//! which certificate, and xDS that only a certificate of the region opens. Keys never appear in
//! an answer or a log.

mod support;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use meridian_identity::enroll::{join, request_certificate, Credentials, EnrollError, JoinToken};
use meridian_identity::{control_client_config, CertStore, SpiffeId, Subject};
use support::{Deployed, RegionalPlane};

const WEB: &str = "\
org: acme
app: shop
name: web
regions: [fra]
runtime: {process: {command: /bin/true}}
ports: [{name: http, port: 8080}]
";

/// A global control plane with region fra (service web runs there) and was, and fra's
/// regional control plane.
struct Installation {
    _dir: tempfile::TempDir,
    platform: Deployed,
    fra: RegionalPlane,
}

fn installation() -> Installation {
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), WEB);
    platform
        .cli
        .ok(&["region", "add", "was", "--lat", "38.9", "--lon", "-77.0"]);
    let fra = RegionalPlane::start(&platform.global, &platform.token, "fra", None);
    Installation {
        _dir: dir,
        platform,
        fra,
    }
}

async fn joined(region: &RegionalPlane, identity: &str) -> Credentials {
    let token = JoinToken::parse(&region.join_token(identity)).unwrap();
    join(&region.xds, &token).await.unwrap()
}

fn refusal(result: Result<Credentials, EnrollError>) -> (u16, String) {
    match result {
        Err(EnrollError::Refused {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn workload(trust_domain: &str, service: &str) -> SpiffeId {
    SpiffeId::workload(trust_domain, "acme", "shop", service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_buys_one_certificate_and_no_answer_or_log_holds_a_key() {
    let installation = installation();
    let fra = &installation.fra;
    let token = fra.join_token("gateway");

    // The answer to a join, as raw text: a chain and a bundle, never a key.
    let parsed = JoinToken::parse(&token).unwrap();
    let gateway = join(&fra.xds, &parsed).await.unwrap();
    assert!(matches!(&gateway.id.subject, Subject::Gateway { region } if region == "fra"));
    assert!(gateway.renew_at() < gateway.not_after);

    // The token is spent.
    let again = join(&fra.xds, &parsed).await;
    let (status, message) = refusal(again);
    assert_eq!(status, 401, "{message}");
    assert!(message.contains("already used"), "{message}");

    // A renewal over mutual TLS, answered raw.
    let tls = control_client_config(
        Some(CertStore::new(gateway.certified_key().unwrap())),
        gateway.bundle().unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let (csr, _key) = meridian_identity::request_for(&gateway.id).unwrap();
    let answer = client
        .post(format!("{}/v1/certificates", fra.xds))
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // A token for another installation's root is refused before anything is sent.
    let foreign =
        meridian_identity::Authority::create_root("elsewhere.test", Duration::from_secs(60))
            .unwrap();
    let stranger = JoinToken::generate(foreign.certificate_pem()).unwrap();
    let wrong = join(&fra.xds, &stranger).await.unwrap_err();
    assert!(
        matches!(wrong, EnrollError::WrongInstallation { .. }),
        "{wrong}"
    );

    let log = fra.log();
    assert!(
        log.contains("certificate issued"),
        "the log records issuance"
    );
    assert!(!log.contains("PRIVATE KEY"));
    assert!(!log.contains(&token), "tokens are not logged either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_issues_only_what_the_caller_may_have() {
    let installation = installation();
    let fra = &installation.fra;
    let gateway = joined(fra, "gateway").await;
    let trust_domain = gateway.id.trust_domain.clone();

    // A gateway renews itself, and nothing else.
    let renewed = request_certificate(&fra.xds, &gateway, None).await.unwrap();
    assert_eq!(renewed.id, gateway.id);
    let (status, message) = refusal(
        request_certificate(&fra.xds, &gateway, Some(&workload(&trust_domain, "web"))).await,
    );
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("may not have"), "{message}");

    // An agent of the region gets the identities of services that run in the region only.
    let agent = joined(fra, "agent/node-1").await;
    let web = request_certificate(&fra.xds, &agent, Some(&workload(&trust_domain, "web")))
        .await
        .unwrap();
    assert_eq!(web.id, workload(&trust_domain, "web"));
    let (status, message) = refusal(
        request_certificate(&fra.xds, &agent, Some(&workload(&trust_domain, "billing"))).await,
    );
    assert_eq!(status, 403);
    assert!(message.contains("does not run in region fra"), "{message}");

    // Nobody gets another region's identities or a control plane's.
    let elsewhere = SpiffeId::parse(&format!("spiffe://{trust_domain}/gateway/was")).unwrap();
    let (status, message) = refusal(request_certificate(&fra.xds, &agent, Some(&elsewhere)).await);
    assert_eq!(status, 403);
    assert!(
        message.contains("not an identity of region fra"),
        "{message}"
    );
    let control = SpiffeId::parse(&format!("spiffe://{trust_domain}/control/fra")).unwrap();
    let (status, _) = refusal(request_certificate(&fra.xds, &agent, Some(&control)).await);
    assert_eq!(status, 403);

    // Join tokens name a valid identity, or none is made.
    let output = std::process::Command::new(support::MERIDIAN)
        .args(["join-token", "node/fra", "--control", &fra.admin])
        .env("MERIDIAN_TOKEN", &installation.platform.token)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("identity: `node/fra` must be gateway"),
        "{stderr}"
    );
    let output = std::process::Command::new(support::MERIDIAN)
        .args(["join-token", "gateway", "--control", &fra.admin])
        .env("MERIDIAN_TOKEN", "mrd_not-the-admin-token")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("for administrators"));
}

/// Opens a delta-ADS stream to `url` with `tls` and returns how the first response went.
async fn first_xds_answer(url: &str, tls: rustls::ClientConfig) -> Result<(), String> {
    let channel = meridian_xds::connect(url, Some(Arc::new(tls)))
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let request = DeltaDiscoveryRequest {
        type_url: meridian_xds::LISTENER.to_owned(),
        resource_names_subscribe: vec!["*".to_owned()],
        ..Default::default()
    };
    let mut responses = client
        .delta_aggregated_resources(tokio_stream::iter([request]))
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    match responses.message().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("closed".to_owned()),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_opens_only_to_a_certificate_of_the_region() {
    let installation = installation();
    let fra = &installation.fra;
    let gateway = joined(fra, "gateway").await;
    let bundle = || gateway.bundle().unwrap();

    // The region's gateway reads its configuration.
    let own = CertStore::new(gateway.certified_key().unwrap());
    first_xds_answer(
        &fra.xds,
        control_client_config(Some(own), bundle()).unwrap(),
    )
    .await
    .unwrap();

    // No certificate: the handshake is allowed (for joining), xDS is not.
    let refused = first_xds_answer(&fra.xds, control_client_config(None, bundle()).unwrap())
        .await
        .unwrap_err();
    assert!(refused.starts_with("Unauthenticated"), "{refused}");
    assert!(refused.contains("join"), "{refused}");

    // A certificate from another installation is refused at the handshake.
    let foreign =
        meridian_identity::Authority::create_root("meridian.local", Duration::from_secs(600))
            .unwrap();
    let stranger = SpiffeId::parse("spiffe://meridian.local/gateway/fra").unwrap();
    let (csr, key) = meridian_identity::request_for(&stranger).unwrap();
    let issued = foreign
        .issue(&csr, &stranger, Duration::from_secs(600))
        .unwrap();
    let forged = CertStore::new(meridian_identity::certified_key(&issued.chain_pem, &key).unwrap());
    let refused = first_xds_answer(
        &fra.xds,
        control_client_config(Some(forged), bundle()).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(refused_at_the_handshake(&refused), "{refused}");

    // Another region's gateway, with a genuine certificate, may not read fra's configuration.
    let was = RegionalPlane::start(
        &installation.platform.global,
        &installation.platform.token,
        "was",
        None,
    );
    let was_gateway = joined(&was, "gateway").await;
    let theirs = CertStore::new(was_gateway.certified_key().unwrap());
    let refused = first_xds_answer(
        &fra.xds,
        control_client_config(Some(theirs), bundle()).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(refused.contains("gateway/was"), "{refused}");

    // The global control plane's xDS is for regional control planes only: fra's gateway is
    // refused there, and a client without a certificate does not get past the handshake.
    let global = &installation.platform.global.xds;
    let own = CertStore::new(gateway.certified_key().unwrap());
    let refused = first_xds_answer(global, control_client_config(Some(own), bundle()).unwrap())
        .await
        .unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(
        refused.contains("only regional control planes"),
        "{refused}"
    );
    let refused = first_xds_answer(global, control_client_config(None, bundle()).unwrap())
        .await
        .unwrap_err();
    assert!(refused_at_the_handshake(&refused), "{refused}");

    // Nor may fra's gateway report for fra there: only fra's control plane may.
    use meridian_xds::meridian::{ReportAck, UpwardReport, REGION_REPORT_PATH};
    let own = CertStore::new(gateway.certified_key().unwrap());
    let tls = std::sync::Arc::new(control_client_config(Some(own), bundle()).unwrap());
    let mut client = meridian_xds::UnaryClient::new(global, tls);
    let report = UpwardReport {
        region: "fra".to_owned(),
        report_json: br#"{"nodes": 9, "capacity": 9, "services": []}"#.to_vec(),
        ..Default::default()
    };
    let refused: Result<ReportAck, String> = client.call(REGION_REPORT_PATH, report).await;
    let refused = refused.unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(refused.contains("gateway/fra"), "{refused}");
    // Nor where an edge's metrics are: only that edge may say.
    use meridian_xds::meridian::{EdgeReport, EDGE_REPORT_PATH};
    let edge = EdgeReport {
        location: "par".to_owned(),
        metrics_address: "127.0.0.1:9903".to_owned(),
        ..Default::default()
    };
    let refused: Result<ReportAck, String> = client.call(EDGE_REPORT_PATH, edge).await;
    let refused = refused.unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");

    // fra's gateway reports the requests it answered to fra; was's gateway may not.
    use meridian_xds::meridian::{GatewayReport, GATEWAY_REPORT_PATH};
    let figures = || GatewayReport {
        node: "gateway-fra".to_owned(),
        run: "1".to_owned(),
        ..Default::default()
    };
    let client_of = |credentials: &Credentials| {
        let own = CertStore::new(credentials.certified_key().unwrap());
        let tls = control_client_config(Some(own), bundle()).unwrap();
        meridian_xds::UnaryClient::new(&fra.xds, std::sync::Arc::new(tls))
    };
    let accepted: Result<ReportAck, String> = client_of(&gateway)
        .call(GATEWAY_REPORT_PATH, figures())
        .await;
    accepted.unwrap();
    let refused: Result<ReportAck, String> = client_of(&was_gateway)
        .call(GATEWAY_REPORT_PATH, figures())
        .await;
    let refused = refused.unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(refused.contains("gateway/was"), "{refused}");
}

/// Whether an xDS client's error says the server ended the connection in the handshake: no gRPC
/// status ever comes back, the client sees its connection fail (or its call cancelled with it).
fn refused_at_the_handshake(error: &str) -> bool {
    error.contains("transport error")
        || error.starts_with("Cancelled")
        || error.starts_with("connect:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_gets_its_ca_with_a_one_time_token_and_keeps_no_admin_token() {
    let installation = installation();
    let (api, admin) = (
        installation.platform.global.api.as_str(),
        installation.platform.token.as_str(),
    );
    let intermediate = |token: String, region: &'static str| async move {
        let (csr, _key) = meridian_identity::blank_request().unwrap();
        let answer = reqwest::Client::new()
            .post(format!("{api}/v1/regions/{region}/intermediate"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "csr": csr }))
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };

    // A token for was buys was's intermediate once.
    let token = support::region_join_token(api, admin, "was");
    let (status, body) = intermediate(token.clone(), "was").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("BEGIN CERTIFICATE") && !body.contains("PRIVATE KEY"));
    let (status, body) = intermediate(token, "was").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("spent"), "{body}");
    // A token for was does not buy fra's, and is spent by trying.
    let token = support::region_join_token(api, admin, "was");
    let (status, body) = intermediate(token.clone(), "fra").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("control/was"), "{body}");
    assert_eq!(intermediate(token, "was").await.0, 401);
    // Only an admin makes them.
    let org_token = installation.platform.cli.for_new_org_token("acme").token;
    let refused = reqwest::Client::new()
        .post(format!("{api}/v1/regions/was/join-tokens"))
        .bearer_auth(&org_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // The region was started with such a token and no admin token; it makes join tokens for
    // whoever the global control plane says holds the admin token, and nobody else.
    let fra = &installation.fra;
    assert!(!fra.log().contains(admin));
    let gateway = fra.join_token("gateway");
    assert!(JoinToken::parse(&gateway).is_ok());
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/join-tokens", fra.admin))
        .bearer_auth(&org_token)
        .json(&serde_json::json!({"identity": "gateway"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_themselves_at_two_thirds_of_a_short_lifetime() {
    use meridian_identity::enroll::{keep_renewed, Renewal};
    use rustls::client::ResolvesClientCert;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let platform = Deployed::start(dir.path(), WEB);
    let fra = RegionalPlane::start_with(
        &platform.global,
        &platform.token,
        "fra",
        None,
        &["--cert-lifetime", "12s"],
    );
    let credentials = joined(&fra, "agent/n1").await;
    let lifetime = credentials
        .not_after
        .duration_since(credentials.issued_at)
        .unwrap();
    assert!(lifetime <= Duration::from_secs(13), "{lifetime:?}");
    let state = tempfile::tempdir().unwrap();
    credentials.save(state.path()).unwrap();
    let (first_chain, issued_at) = (credentials.chain_pem.clone(), credentials.issued_at);
    let id = credentials.id.clone();
    let store = CertStore::new(credentials.certified_key().unwrap());
    let renewed = Arc::new(tokio::sync::Notify::new());
    let renewal = Renewal {
        base: fra.xds.clone(),
        dir: state.path().to_owned(),
        store: store.clone(),
        renewed: Some(renewed.clone()),
    };
    let task = tokio::spawn(keep_renewed(renewal, credentials));
    tokio::time::timeout(Duration::from_secs(30), renewed.notified())
        .await
        .expect("the certificate was renewed before it expired");
    assert!(
        std::time::SystemTime::now() >= issued_at + lifetime / 2,
        "renewed long before two thirds of its lifetime"
    );
    // The renewed certificate is on disk, for the same identity, and new handshakes use it.
    let chain = std::fs::read_to_string(state.path().join("cert.pem")).unwrap();
    assert_ne!(chain, first_chain);
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(meridian_identity::peer_id(&leaf), Some(id));
    let current = store.resolve(&[], &[]).unwrap();
    assert_eq!(current.cert[0], leaf);
    task.abort();
    assert!(
        !fra.log().contains("PRIVATE KEY"),
        "a key in the region's log"
    );
}
