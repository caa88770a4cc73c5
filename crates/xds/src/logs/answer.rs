//! The calling side of the log service: a few workers, each keeping one offer open at the
//! server and answering the query that comes down it, then offering again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;
use tonic_prost::ProstCodec;

use super::{LogAnswer, LogQuery, MAX_MESSAGE_BYTES, OFFER_PATH};

/// Answers sent ahead of what the server has taken: with HTTP/2 flow control behind them, a
/// slow reader at the other end holds at most this many answers here.
const ANSWER_QUEUE: usize = 4;

/// How long a finished answer waits for the server to close the call (so that nothing it
/// sent is cut off by a reset).
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// First and longest pause before offering again after a failure.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// What answers queries.
pub trait Answering: Clone + Send + Sync + 'static {
    /// Answers `query` into `answers` until it is answered (dropping the sender ends the
    /// answer) or the receiver is gone (the query was cancelled).
    fn answer(
        &self,
        query: LogQuery,
        answers: mpsc::Sender<LogAnswer>,
    ) -> impl Future<Output = ()> + Send;
}

/// Where and how to answer.
pub struct AnswerOptions {
    /// The server, `https://host:port`; or several, separated by commas, each offered to.
    pub url: String,
    /// Mutual TLS with the caller's certificate (cleartext without: tests only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Most queries answered at once (each worker keeps one offer open).
    pub concurrency: usize,
    /// What answers, for the log (`agent`, `region fra`).
    pub who: String,
}

/// Keeps `options.concurrency` offers open at the server and answers each query with
/// `answering`, for as long as the task runs. A failure is logged once until an offer is
/// taken again.
pub async fn answer_queries<A: Answering>(options: AnswerOptions, answering: A) {
    let who: Arc<str> = options.who.into();
    let mut workers = tokio::task::JoinSet::new();
    // Several servers (replicas of the global control plane): offers at each, since a query
    // comes through whichever one the caller asked.
    for url in crate::servers(&options.url) {
        let channel = match crate::kept_alive_channel(&url, options.tls.clone()) {
            Ok(channel) => channel,
            Err(e) => {
                tracing::error!(%url, error = %e, "cannot answer log queries");
                continue;
            }
        };
        for first in 0..options.concurrency.max(1) {
            let (channel, answering, who) = (channel.clone(), answering.clone(), who.clone());
            // Only the first worker says that offers fail: they all fail together.
            workers.spawn(worker(channel, answering, (first == 0).then_some(who)));
        }
    }
    while workers.join_next().await.is_some() {}
}

/// Offers again and again; backs off while offering fails.
async fn worker<A: Answering>(channel: Channel, answering: A, says: Option<Arc<str>>) {
    let mut backoff = BACKOFF.0;
    let mut failing = false;
    loop {
        match offer_once(&channel, &answering).await {
            Ok(()) => {
                if failing {
                    if let Some(who) = &says {
                        tracing::info!(%who, "answering log queries again");
                    }
                }
                failing = false;
                backoff = BACKOFF.0;
            }
            Err(status) => {
                if !failing {
                    if let Some(who) = &says {
                        tracing::warn!(%who, error = %status.message(),
                            "cannot offer to answer log queries; retrying");
                    }
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Opens one offer, waits for its query, acknowledges it and answers it, until the answer is
/// complete or the server ends the call.
async fn offer_once<A: Answering>(channel: &Channel, answering: &A) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (answers, upward) = mpsc::channel::<LogAnswer>(ANSWER_QUEUE);
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(upward)),
            PathAndQuery::from_static(OFFER_PATH),
            ProstCodec::<LogAnswer, LogQuery>::default(),
        )
        .await?;
    let mut queries = response.into_inner();
    let Some(query) = queries.message().await? else {
        // The server let the offer go.
        return Ok(());
    };
    if answers.send(LogAnswer::default()).await.is_err() {
        return Ok(());
    }
    tokio::select! {
        () = answering.answer(query, answers) => {
            // Sent and complete: the server ends the call once it has read everything.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Ok(Some(_)) = queries.message().await {}
            })
            .await;
        }
        _ = queries.message() => {}
    }
    Ok(())
}
