//! `meridian proxy`: the data plane, driven by a config file or by an xDS control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Options of `meridian proxy`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "xds"])))]
pub struct ProxyArgs {
    /// The config file (YAML or JSON; see docs/proxy-config.md). Edits, or SIGHUP, reload it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Follow this xDS control plane (delta ADS over gRPC): `https://HOST:PORT` of a regional
    /// control plane (mutual TLS, with the identity from --join-token), or `http://…` for a
    /// server without authentication.
    #[arg(long, value_name = "URL")]
    xds: Option<String>,
    /// The one-time join token that buys this proxy its identity at the first start (xDS over
    /// https only); later starts use the certificate kept in the state directory, renewed
    /// before it expires.
    #[arg(long, env = "MERIDIAN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// The node id this proxy gives the control plane (xDS only).
    #[arg(long, default_value = "meridian-proxy")]
    node_id: String,
    /// The role this proxy plays: gateway, node-proxy or edge (xDS only).
    #[arg(long, default_value = "gateway", value_parser = ["gateway", "node-proxy", "edge"])]
    role: String,
    /// The region this proxy runs in (xDS only; sent as the node's locality).
    #[arg(long)]
    region: Option<String>,
    /// Where the last configuration accepted over xDS and the proxy's identity (in `identity/`,
    /// the key readable by its owner only) are kept; a proxy that starts while its control
    /// plane is unreachable serves that copy (xDS only).
    #[arg(long, default_value = "./proxy-state")]
    state_dir: PathBuf,
    /// Address of the admin port (/metrics, /config, /listeners, /healthz); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    #[command(flatten)]
    access_log: AccessLogArgs,
    #[command(flatten)]
    trace: TraceArgs,
}

/// `--otlp-endpoint` and `--trace-sample-ratio`, of every component that proxies requests.
#[derive(Args, Clone)]
pub struct TraceArgs {
    /// Trace the requests proxied: W3C traceparent/tracestate at this hop (a trace is started
    /// when a request has none) and a span per sampled request, exported with OTLP over gRPC
    /// to this collector (`http://HOST:4317`: an OpenTelemetry Collector, Jaeger, Tempo; see
    /// docs/observability.md). Off by default: traceparent and tracestate then pass through
    /// untouched. Spans that would have to wait are dropped and counted
    /// (meridian_proxy_trace_spans_dropped_total).
    #[arg(long, value_name = "URL", value_parser = otlp_endpoint)]
    otlp_endpoint: Option<String>,
    /// The share of traces recorded, 0 to 1, where this component decides: for the traces it
    /// starts, and those whose caller it does not trust (the public side of an edge, an
    /// instance's outbound calls); a trusted caller's decision is followed. Needs
    /// --otlp-endpoint.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = sample_ratio,
        requires = "otlp_endpoint")]
    trace_sample_ratio: f64,
}

/// An OTLP/gRPC endpoint: `http://` or `https://`, host and port.
pub fn otlp_endpoint(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(_)) => Ok(text.to_owned()),
        _ => Err(format!(
            "`{text}` must be http://HOST:PORT (OTLP over gRPC)"
        )),
    }
}

/// A share from 0 to 1.
fn sample_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{text}` must be a number from 0 to 1")),
    }
}

impl TraceArgs {
    /// Where the spans of `component` on `node` (of `region`) go, if tracing is on.
    pub fn of(
        &self,
        component: &str,
        node: &str,
        region: Option<&str>,
    ) -> Option<meridian_proxy::TraceOptions> {
        Some(meridian_proxy::TraceOptions {
            endpoint: self.otlp_endpoint.clone()?,
            sample_ratio: self.trace_sample_ratio,
            component: component.to_owned(),
            node: node.to_owned(),
            region: region.map(str::to_owned),
        })
    }
}

/// `--access-log`, of every component that proxies requests.
#[derive(Args, Clone)]
pub struct AccessLogArgs {
    /// Log every request proxied, one JSON object per line (see docs/observability.md), to
    /// FILE (appended to) or `-` (standard output). Off by default. Lines are written by a
    /// thread of their own; those that would have to wait are dropped and counted
    /// (meridian_proxy_access_log_dropped_lines_total).
    #[arg(long, value_name = "FILE|-")]
    access_log: Option<String>,
}

impl AccessLogArgs {
    /// Where requests are logged, if anywhere, each event naming `component` on `node` (of
    /// `region`).
    pub fn of(
        &self,
        component: &str,
        node: &str,
        region: Option<&str>,
    ) -> Option<(
        meridian_proxy::AccessLogTarget,
        meridian_proxy::AccessLogSource,
    )> {
        let target = meridian_proxy::AccessLogTarget::parse(self.access_log.as_deref()?);
        let source = meridian_proxy::AccessLogSource {
            component: component.to_owned(),
            node: node.to_owned(),
            region: region.map(str::to_owned),
        };
        Some((target, source))
    }
}

/// Runs the proxy until Ctrl-C or SIGTERM.
pub async fn run(args: ProxyArgs) -> Result<()> {
    let shutdown = super::control::shutdown_signal();
    match (args.config, args.xds) {
        (Some(config), _) => {
            let options = meridian_proxy::RunOptions {
                config,
                admin: args.admin,
                access_log: args
                    .access_log
                    .of("proxy", &args.node_id, args.region.as_deref()),
                trace: args
                    .trace
                    .of("proxy", &args.node_id, args.region.as_deref()),
            };
            meridian_proxy::run(options, shutdown).await?;
        }
        (None, Some(server)) => {
            let access_log = args
                .access_log
                .of(&args.role, &args.node_id, args.region.as_deref());
            let trace = args
                .trace
                .of(&args.role, &args.node_id, args.region.as_deref());
            run_from_xds(XdsArgs {
                access_log,
                trace,
                server,
                join_token: args.join_token,
                node_id: args.node_id,
                role: args.role,
                region: args.region,
                state_dir: args.state_dir,
                admin: args.admin,
            })
            .await?;
        }
        (None, None) => anyhow::bail!("pass --config FILE or --xds URL"),
    }
    Ok(())
}

/// What a proxy following an xDS server needs.
pub struct XdsArgs {
    /// The server, `https://…` (mutual TLS) or `http://…`.
    pub server: String,
    /// The join token for the first start (https only).
    pub join_token: Option<String>,
    /// The node id.
    pub node_id: String,
    /// The role.
    pub role: String,
    /// The region.
    pub region: Option<String>,
    /// Where the identity and the last configuration are kept.
    pub state_dir: PathBuf,
    /// The admin port.
    pub admin: SocketAddr,
    /// Where requests are logged, if anywhere.
    pub access_log: Option<(
        meridian_proxy::AccessLogTarget,
        meridian_proxy::AccessLogSource,
    )>,
    /// Where the spans of traced requests go, if anywhere.
    pub trace: Option<meridian_proxy::TraceOptions>,
}

/// Runs a proxy from an xDS server until Ctrl-C or SIGTERM: over mutual TLS with its enrolled
/// identity for an `https://` server.
pub async fn run_from_xds(args: XdsArgs) -> Result<()> {
    let enrolled = if args.server.starts_with("https://") {
        let enrolled =
            super::identity::enroll(&args.server, &args.state_dir, args.join_token.as_deref())
                .await?;
        Some(enrolled)
    } else {
        None
    };
    let tls = enrolled.as_ref().map(|e| e.tls.clone());
    let identity = enrolled.map(|e| (e.files(), e.renewed));
    let options = meridian_proxy::XdsOptions {
        server: args.server,
        tls,
        identity,
        node_id: args.node_id,
        role: args.role,
        region: args.region,
        state_dir: args.state_dir,
        admin: args.admin,
        access_log: args.access_log,
        trace: args.trace,
    };
    meridian_proxy::run_xds(options, super::control::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_flags_take_a_collector_url_and_a_ratio_from_0_to_1() {
        assert!(otlp_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(otlp_endpoint("https://collector.example.com:4317").is_ok());
        for bad in ["collector:4317", "ftp://collector:4317", "http://", ""] {
            assert!(otlp_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(sample_ratio("0.25"), Ok(0.25));
        assert_eq!(sample_ratio("0"), Ok(0.0));
        assert_eq!(sample_ratio("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            assert!(sample_ratio(bad).is_err(), "{bad}");
        }
        let args = TraceArgs {
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
        };
        assert_eq!(args.of("edge", "par", None), None, "off by default");
        let args = TraceArgs {
            otlp_endpoint: Some("http://127.0.0.1:4317".to_owned()),
            trace_sample_ratio: 0.5,
        };
        let options = args.of("gateway", "gateway-fra", Some("fra")).unwrap();
        assert_eq!(options.sample_ratio, 0.5);
        assert_eq!(options.region.as_deref(), Some("fra"));
    }
}
