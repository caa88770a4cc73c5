//! The server side of the log service: each peer's open offers (calls waiting for a query),
//! and the gRPC method that records them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService};
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use super::{LogAnswer, LogQuery, MAX_MESSAGE_BYTES, OFFER_PATH};

/// Names the peer of a call from its request's extensions (where the server put what the
/// connection's certificate proved), or refuses it.
pub type Authorize = Arc<dyn Fn(&http::Extensions) -> Result<String, Status> + Send + Sync>;

/// Most open offers kept per peer; the oldest are let go beyond (their calls end).
const MAX_IDLE_PER_PEER: usize = 64;

/// How long an asked peer has to acknowledge the query (it does at once, before it reads
/// anything): an offer whose connection died unnoticed is found out in that time.
const FIRST_ANSWER: Duration = Duration::from_secs(10);

/// An open call of a peer, waiting for a query.
pub struct Offer {
    query: mpsc::Sender<Result<LogQuery, Status>>,
    answers: Streaming<LogAnswer>,
}

/// The open offers of every peer. Cloning shares them.
#[derive(Clone, Default)]
pub struct Offers {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    idle: Mutex<HashMap<String, VecDeque<Offer>>>,
    arrived: Notify,
}

impl Offers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Offer>>> {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `offer` of `peer` (forgetting those of its calls that ended).
    fn add(&self, peer: String, offer: Offer) {
        {
            let mut idle = self.lock();
            let queue = idle.entry(peer).or_default();
            queue.retain(|o| !o.query.is_closed());
            queue.push_back(offer);
            while queue.len() > MAX_IDLE_PER_PEER {
                queue.pop_front();
            }
        }
        self.inner.arrived.notify_waiters();
    }

    /// The peers with an open offer, by name.
    pub fn peers(&self) -> Vec<String> {
        let mut idle = self.lock();
        idle.retain(|_, queue| {
            queue.retain(|o| !o.query.is_closed());
            !queue.is_empty()
        });
        let mut peers: Vec<String> = idle.keys().cloned().collect();
        peers.sort();
        peers
    }

    /// The newest open offer of `peer`, taken.
    fn pop(&self, peer: &str) -> Option<Offer> {
        let mut idle = self.lock();
        let queue = idle.get_mut(peer)?;
        let mut found = None;
        while let Some(offer) = queue.pop_back() {
            if !offer.query.is_closed() {
                found = Some(offer);
                break;
            }
        }
        if queue.is_empty() {
            idle.remove(peer);
        }
        found
    }

    /// An open offer of `peer`, waiting up to `wait` for one; `None` if none came.
    pub async fn take(&self, peer: &str, wait: Duration) -> Option<Offer> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(offer) = self.pop(peer) {
                return Some(offer);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    /// Asks `peer` `query` through one of its offers (waiting up to `wait` for one), and
    /// waits for its acknowledgement. The error says why not, for a person.
    pub async fn ask(
        &self,
        peer: &str,
        query: LogQuery,
        wait: Duration,
    ) -> Result<Answers, String> {
        let offer = self.take(peer, wait).await.ok_or_else(|| {
            "it took no query (not connected, or answering as many queries as it may)".to_owned()
        })?;
        offer
            .query
            .send(Ok(query))
            .await
            .map_err(|_| "its call ended".to_owned())?;
        let Offer { query, mut answers } = offer;
        let first = match tokio::time::timeout(FIRST_ANSWER, answers.message()).await {
            Err(_) => {
                return Err(format!(
                    "it did not acknowledge the query within {}s",
                    FIRST_ANSWER.as_secs()
                ))
            }
            Ok(Err(status)) => return Err(format!("its call failed: {}", status.message())),
            Ok(Ok(first)) => first,
        };
        Ok(Answers {
            _query: query,
            ended: first.is_none(),
            first,
            answers,
        })
    }
}

/// The answers of an asked peer, as a stream; dropping it ends the call (cancelling the
/// query).
pub struct Answers {
    /// Kept so that the call stays open while the answers are read.
    _query: mpsc::Sender<Result<LogQuery, Status>>,
    first: Option<LogAnswer>,
    ended: bool,
    answers: Streaming<LogAnswer>,
}

impl Stream for Answers {
    type Item = Result<LogAnswer, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        Pin::new(&mut this.answers).poll_next(cx)
    }
}

/// The log service (`meridian.v1.Logs`): records each authorized call of its offer method in
/// [`Offers`].
#[derive(Clone)]
pub struct OfferService {
    offers: Offers,
    authorize: Authorize,
}

impl OfferService {
    /// The service keeping its callers' offers in `offers`, each caller named by `authorize`.
    pub fn new(offers: Offers, authorize: Authorize) -> OfferService {
        OfferService { offers, authorize }
    }
}

impl NamedService for OfferService {
    const NAME: &'static str = "meridian.v1.Logs";
}

/// One call of the offer method.
struct Call(OfferService);

impl tower::Service<tonic::Request<Streaming<LogAnswer>>> for Call {
    type Response = tonic::Response<ReceiverStream<Result<LogQuery, Status>>>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<Streaming<LogAnswer>>) -> Self::Future {
        let peer = match (self.0.authorize)(request.extensions()) {
            Ok(peer) => peer,
            Err(status) => return ready(Err(status)),
        };
        let (query, queries) = mpsc::channel(1);
        let offer = Offer {
            query,
            answers: request.into_inner(),
        };
        self.0.offers.add(peer, offer);
        ready(Ok(tonic::Response::new(ReceiverStream::new(queries))))
    }
}

impl<B> tower::Service<http::Request<B>> for OfferService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != OFFER_PATH {
            let status = Status::unimplemented(format!("{} is not a method", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let call = Call(self.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<LogQuery, LogAnswer>::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
            Ok(grpc.streaming(call, request).await)
        })
    }
}
