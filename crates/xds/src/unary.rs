//! A client of Meridian's small unary gRPC methods (reports flowing upward), over the same
//! mutual-TLS connection setup as xDS: it connects on first use and again after a failure.
//! Given several servers (replicas of the global control plane, as a list separated by
//! commas), it calls each of them, at once, so that every replica has every report.

use std::sync::Arc;

use tokio::task::JoinSet;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

/// A reconnecting client of unary methods at one server, or at each of several.
pub struct UnaryClient {
    url: String,
    servers: Vec<Server>,
    tls: Arc<rustls::ClientConfig>,
}

/// One server and its connection, once made.
struct Server {
    url: Arc<str>,
    channel: Option<Channel>,
}

impl UnaryClient {
    /// A client of the server at `url` (`https://…`; or several, separated by commas), over
    /// `tls`.
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> UnaryClient {
        let servers = crate::servers(url)
            .into_iter()
            .map(|url| Server {
                url: url.into(),
                channel: None,
            })
            .collect();
        UnaryClient {
            url: url.to_owned(),
            servers,
            tls,
        }
    }

    /// Calls the method at `path` with `request` at every server, at once; the first answer
    /// of those that succeeded, or, when all failed, what failed at each (the connection, or
    /// the server's status and message; each after its server's URL when there are several).
    /// A server that failed is connected anew at the next call.
    pub async fn call<Request, Response>(
        &mut self,
        path: &'static str,
        request: Request,
    ) -> Result<Response, String>
    where
        Request: prost::Message + Clone + Send + Sync + 'static,
        Response: prost::Message + Default + Send + Sync + 'static,
    {
        let mut calls = JoinSet::new();
        let several = self.servers.len() > 1;
        // A call waits for every server: one lost without a reset must not hold up the others'
        // reports for long.
        let keep_alive = if several {
            crate::client::FAILOVER_KEEP_ALIVE
        } else {
            crate::client::KEEP_ALIVE
        };
        for (index, server) in self.servers.iter().enumerate() {
            let (url, channel) = (server.url.clone(), server.channel.clone());
            let (tls, request) = (self.tls.clone(), request.clone());
            calls.spawn(async move {
                let connection = (&*url, channel, tls, keep_alive);
                let (channel, result) = call_one(connection, path, request).await;
                (index, channel, result)
            });
        }
        let mut answer = None;
        let mut failures = Vec::new();
        while let Some(done) = calls.join_next().await {
            let Ok((index, channel, result)) = done else {
                continue;
            };
            let server = &mut self.servers[index];
            server.channel = channel;
            match result {
                Ok(response) => {
                    answer.get_or_insert(response);
                }
                Err(e) if several => failures.push(format!("{}: {e}", server.url)),
                Err(e) => failures.push(e),
            }
        }
        match answer {
            Some(response) => {
                for failure in failures {
                    tracing::debug!(%failure, "a server did not take the call");
                }
                Ok(response)
            }
            None if failures.is_empty() => Err(format!("no server in `{}`", self.url)),
            None => Err(failures.join("; ")),
        }
    }
}

/// Where a call goes: the server's URL, its channel if one is open, the TLS to connect with,
/// and the keep-alive of a new connection.
type Connection<'a> = (
    &'a str,
    Option<Channel>,
    Arc<rustls::ClientConfig>,
    (std::time::Duration, std::time::Duration),
);

/// Calls `path` at the URL of `connection` over its channel (connecting first without one):
/// the channel to keep (none after a failure) and the result.
async fn call_one<Request, Response>(
    connection: Connection<'_>,
    path: &'static str,
    request: Request,
) -> (Option<Channel>, Result<Response, String>)
where
    Request: prost::Message + Send + Sync + 'static,
    Response: prost::Message + Default + Send + Sync + 'static,
{
    let (url, channel, tls, keep_alive) = connection;
    let channel = match channel {
        Some(channel) => channel,
        None => match crate::client::connect_kept_alive(url, Some(tls), keep_alive).await {
            Ok(channel) => channel,
            Err(e) => return (None, Err(format!("connecting to {url}: {e}"))),
        },
    };
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let result = async {
        grpc.ready().await.map_err(|e| e.to_string())?;
        grpc.unary(
            tonic::Request::new(request),
            PathAndQuery::from_static(path),
            ProstCodec::<Request, Response>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }
    .await;
    (result.is_ok().then_some(channel), result)
}

impl UnaryClient {
    /// Calls the method at `path` with what `make` gives every `every`, for as long as the task
    /// runs: a report of `what` that the server takes as the reporter's current state. A
    /// failure is logged once until a call succeeds again.
    pub async fn report_every<Request>(
        mut self,
        path: &'static str,
        every: std::time::Duration,
        what: &str,
        mut make: impl FnMut() -> Request,
    ) where
        Request: prost::Message + Clone + Send + Sync + 'static,
    {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let answer: Result<crate::meridian::ReportAck, String> = self.call(path, make()).await;
            match answer {
                Ok(_) if failing => {
                    tracing::info!(report = what, url = %self.url, "reporting again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(report = what, url = %self.url, error = %e,
                        "cannot report; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}
