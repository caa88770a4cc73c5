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
