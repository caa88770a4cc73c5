//! The resolver that names outside the platform's are forwarded to, and what the server knows of
//! it. A query is sent again once after [`RETRANSMIT_AFTER`] (a datagram may be lost) and fails
//! (SERVFAIL) if no answer comes within [`FORWARD_TIMEOUT`]. The upstream is taken as down when
//! the host refuses the query (ICMP unreachable on the connected socket) or after
//! [`TIMEOUTS_TO_FAIL`] timeouts in a row with no answer between them; one late answer does not
//! take it down. While down, for [`FAILURE_MEMORY`], other queries fail at once but for one probe
//! per period, so that callers never wait on a resolver that is not there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

/// How long an upstream may take to answer a forwarded query: long enough for a cold-cache
/// recursion, and well before a stub resolver's own retry (5 s for glibc), so that it gets an
/// answer rather than silence.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// When a query not yet answered is sent once more, in case a datagram was lost.
pub const RETRANSMIT_AFTER: Duration = Duration::from_secs(1);
/// How many queries in a row must time out, with no answer between them, for the upstream to
/// be taken as down.
pub const TIMEOUTS_TO_FAIL: u32 = 3;
/// How long a failed upstream is taken as down: queries then fail at once, but for one probe
/// each such period.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// Largest answer relayed.
const MAX_DATAGRAM: usize = 4096;

/// Where other names go, shared by every server of a node.
#[derive(Debug)]
pub struct Upstream {
    address: Option<SocketAddr>,
    /// The start of the clock of `down_until`.
    epoch: Instant,
    /// Until when (milliseconds after `epoch`) the upstream is taken as down; 0 while it answers.
    down_until: AtomicU64,
    /// Queries timed out since the last answer.
    timeouts: AtomicU32,
}

/// What may be done with a query to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send it.
    Send(SocketAddr),
    /// Fail it at once: no upstream, or it failed recently (and another query probes it).
    Fail,
}

impl Upstream {
    /// Forwarding to `address`; `None`: names outside the platform's fail at once (SERVFAIL).
    pub fn new(address: Option<SocketAddr>) -> Upstream {
        Upstream {
            address,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            timeouts: AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        // From 1: 0 means "up".
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn failure_deadline(&self) -> u64 {
        let memory = u64::try_from(FAILURE_MEMORY.as_millis()).unwrap_or(u64::MAX);
        self.now().saturating_add(memory)
    }

    /// Whether a query may be sent now: always while the upstream answers; while it is taken as
    /// down, only the first query after [`FAILURE_MEMORY`] (the probe), which starts a new
    /// period.
    pub(crate) fn admit(&self) -> Admission {
        let Some(address) = self.address else {
            return Admission::Fail;
        };
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Send(address);
        }
        if self.now() < until {
            return Admission::Fail;
        }
        let probe = self.down_until.compare_exchange(
            until,
            self.failure_deadline(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        match probe {
            Ok(_) => Admission::Send(address),
            Err(_) => Admission::Fail, // Another query probes.
        }
    }

    /// Records that the upstream answered: it is up, and earlier timeouts are forgiven.
    pub(crate) fn answered(&self) {
        self.timeouts.store(0, Ordering::Release);
        self.down_until.store(0, Ordering::Release);
    }

    /// Records that the host refused a query: the upstream is down at once.
    pub(crate) fn refused(&self) {
        self.down_until
            .store(self.failure_deadline(), Ordering::Release);
    }

    /// Records that a query was not answered in time: the upstream is down once
    /// [`TIMEOUTS_TO_FAIL`] queries in a row were not (a failed probe keeps it down).
    pub(crate) fn timed_out(&self) {
        let timeouts = self
            .timeouts
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if timeouts >= TIMEOUTS_TO_FAIL {
            self.refused();
        }
    }

    /// Sends `query` to `address` (again after [`RETRANSMIT_AFTER`]) and returns its answer, if
    /// one comes within [`FORWARD_TIMEOUT`]; records whether it did.
    pub(crate) async fn ask(&self, query: &[u8], address: SocketAddr) -> Option<Vec<u8>> {
        let answer = tokio::time::timeout(FORWARD_TIMEOUT, exchange(query, address)).await;
        match answer {
            Ok(Ok(answer)) => {
                self.answered();
                Some(answer)
            }
            Ok(Err(e)) => {
                tracing::debug!(upstream = %address, error = %e, "the upstream resolver failed");
                self.refused();
                None
            }
            Err(_) => {
                tracing::debug!(upstream = %address, "the upstream resolver did not answer in time");
                self.timed_out();
                None
            }
        }
    }
}

/// One query to `upstream` over UDP, from a socket of its own, sent again once after
/// [`RETRANSMIT_AFTER`], and its answer.
async fn exchange(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    // Connected: only the upstream's datagrams are read, and a closed port fails at once.
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let length = match tokio::time::timeout(RETRANSMIT_AFTER, socket.recv(&mut buffer)).await {
        Ok(received) => received?,
        Err(_) => {
            socket.send(query).await?;
            socket.recv(&mut buffer).await?
        }
    };
    buffer.truncate(length);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn late_answers_take_an_upstream_down_only_several_in_a_row() {
        let address: SocketAddr = ([127, 0, 0, 1], 53).into();
        assert_eq!(Upstream::new(None).admit(), Admission::Fail);
        let upstream = Upstream::new(Some(address));
        for _ in 1..TIMEOUTS_TO_FAIL {
            upstream.timed_out();
            assert_eq!(upstream.admit(), Admission::Send(address));
        }
        // An answer between them forgives the earlier timeouts.
        upstream.answered();
        for _ in 1..TIMEOUTS_TO_FAIL {
            upstream.timed_out();
        }
        assert_eq!(upstream.admit(), Admission::Send(address));
        upstream.timed_out();
        assert_eq!(upstream.admit(), Admission::Fail);
        // A probe that times out keeps it down for another period.
        tokio::time::advance(FAILURE_MEMORY).await;
        assert_eq!(upstream.admit(), Admission::Send(address));
        upstream.timed_out();
        assert_eq!(upstream.admit(), Admission::Fail);
        tokio::time::advance(FAILURE_MEMORY / 2).await;
        assert_eq!(upstream.admit(), Admission::Fail);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_upstream_is_probed_once_per_period_and_trusted_again_when_it_answers() {
        let address: SocketAddr = ([127, 0, 0, 1], 53).into();
        let upstream = Upstream::new(Some(address));
        assert_eq!(upstream.admit(), Admission::Send(address));
        upstream.refused();
        assert_eq!(upstream.admit(), Admission::Fail);
        tokio::time::advance(FAILURE_MEMORY).await;
        // One probe; the queries beside it fail at once.
        assert_eq!(upstream.admit(), Admission::Send(address));
        assert_eq!(upstream.admit(), Admission::Fail);
        tokio::time::advance(FAILURE_MEMORY / 2).await;
        assert_eq!(upstream.admit(), Admission::Fail);
        upstream.answered();
        assert_eq!(upstream.admit(), Admission::Send(address));
        assert_eq!(upstream.admit(), Admission::Send(address));
    }
}
