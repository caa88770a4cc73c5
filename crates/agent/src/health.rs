//! Health checks of one instance, as its definition declares them: TCP connects and HTTP
//! requests to its named ports, each bounded by the check's timeout.

use std::net::{IpAddr, SocketAddr};

use meridian_model::{HealthCheck, ServiceSpec};

/// Runs one check against the instance at `address`; true when it passes.
pub async fn check(
    client: &reqwest::Client,
    spec: &ServiceSpec,
    check: &HealthCheck,
    address: IpAddr,
) -> bool {
    let port_of = |name: &str| {
        spec.ports
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| u16::try_from(p.port).ok())
    };
    let attempt = async {
        if let Some(tcp) = &check.tcp {
            let Some(port) = port_of(&tcp.port) else {
                return false;
            };
            return tokio::net::TcpStream::connect(SocketAddr::new(address, port))
                .await
                .is_ok();
        }
        let Some(http) = &check.http else {
            return false;
        };
        let Some(port) = port_of(&http.port) else {
            return false;
        };
        let Ok(method) = reqwest::Method::from_bytes(http.method.as_bytes()) else {
            return false;
        };
        let mut request = client.request(
            method,
            format!("http://{}{}", SocketAddr::new(address, port), http.path),
        );
        for (name, value) in &http.headers {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => response.status().is_success() || response.status().is_redirection(),
            Err(_) => false,
        }
    };
    tokio::time::timeout(check.timeout.0, attempt)
        .await
        .unwrap_or(false)
}
