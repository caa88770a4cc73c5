//! Sending 1xx informational responses from an HTTP/1.1 server connection.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

/// Most informational responses waiting to be written for one request.
const MAX_QUEUED: usize = 8;

/// Sends 1xx informational responses (such as `103 Early Hints`) to the client of one
/// request, ahead of its final response.
///
/// An HTTP/1.1 server connection puts one in the extensions of every request it reads from
/// an HTTP/1.1 client (none for HTTP/1.0 clients, to which a server must not send 1xx
/// responses, RFC 9110 §15.2). What is sent is written before the final response; once the
/// final response is being written, sending fails.
#[derive(Clone)]
pub struct InformationalSender {
    queue: Arc<Mutex<Queue>>,
    request: u64,
}

impl fmt::Debug for InformationalSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InformationalSender")
            .field("request", &self.request)
            .finish()
    }
}

impl InformationalSender {
    /// Queues `response` to be written before the final response. It is handed back when its
    /// status is not 1xx or is `101 Switching Protocols`, when the final response is already
    /// being written, or when too many are waiting.
    pub fn send(&self, response: http::Response<()>) -> Result<(), http::Response<()>> {
        let status = response.status();
        if !status.is_informational() || status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(response);
        }
        let mut queue = lock(&self.queue);
        if queue.request != self.request || queue.pending.len() >= MAX_QUEUED {
            return Err(response);
        }
        queue.pending.push_back(response);
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
        Ok(())
    }
}

struct Queue {
    /// The request being answered (a sender of an earlier one sends nothing).
    request: u64,
    pending: VecDeque<http::Response<()>>,
    /// The connection's task, waiting for its final response.
    waker: Option<Waker>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection's side: the responses sent for the request being answered.
pub(crate) struct InformationalQueue(Arc<Mutex<Queue>>);

impl InformationalQueue {
    pub(crate) fn new() -> InformationalQueue {
        InformationalQueue(Arc::new(Mutex::new(Queue {
            request: 0,
            pending: VecDeque::new(),
            waker: None,
        })))
    }

    /// A sender for the request being answered.
    pub(crate) fn sender(&self) -> InformationalSender {
        InformationalSender {
            queue: Arc::clone(&self.0),
            request: lock(&self.0).request,
        }
    }

    /// The next response waiting; with `cx`, its waker is woken by the next one sent when
    /// none is waiting.
    pub(crate) fn next(&self, cx: Option<&mut Context<'_>>) -> Option<http::Response<()>> {
        let mut queue = lock(&self.0);
        let next = queue.pending.pop_front();
        if let (None, Some(cx)) = (&next, cx) {
            match &queue.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => queue.waker = Some(cx.waker().clone()),
            }
        }
        next
    }

    /// The final response of the request is being written: its senders send no more.
    pub(crate) fn finish(&self) {
        let mut queue = lock(&self.0);
        queue.request += 1;
        queue.pending.clear();
        queue.waker = None;
    }
}
