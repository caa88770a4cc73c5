//! A client of Meridian's small unary gRPC methods (reports flowing upward), over the same
//! mutual-TLS connection setup as xDS: it connects on first use and again after a failure.

use std::sync::Arc;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

/// A reconnecting client of unary methods at one server.
pub struct UnaryClient {
    url: String,
    tls: Arc<rustls::ClientConfig>,
    channel: Option<Channel>,
}

impl UnaryClient {
    /// A client of the server at `url` (`https://…`), over `tls`.
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> UnaryClient {
        UnaryClient {
            url: url.to_owned(),
            tls,
            channel: None,
        }
    }

    /// Calls the method at `path` with `request`; on failure the next call connects anew. The
    /// error says what failed (the connection, or the server's status and message).
    pub async fn call<Request, Response>(
        &mut self,
        path: &'static str,
        request: Request,
    ) -> Result<Response, String>
    where
        Request: prost::Message + Send + Sync + 'static,
        Response: prost::Message + Default + Send + Sync + 'static,
    {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => {
                let channel = crate::connect(&self.url, Some(self.tls.clone()))
                    .await
                    .map_err(|e| format!("connecting to {}: {e}", self.url))?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel);
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
        if result.is_err() {
            self.channel = None;
        }
        result
    }
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
        Request: prost::Message + Send + Sync + 'static,
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
