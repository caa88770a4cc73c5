//! How the edges took each purge, as the global control plane's publisher of purges learns it:
//! for each purge it sends the edges, how many connected edges owed an acknowledgement and how
//! many applied it, once all did or [`PURGE_ACK_WAIT`] passed. The purge endpoint waits for
//! that record to answer with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_model::EdgeAcks;
use tokio::sync::watch;

/// Longest the publisher waits for the connected edges to apply a purge before it records how
/// many did.
pub const PURGE_ACK_WAIT: Duration = Duration::from_secs(5);

/// Most records kept (the newest): answers wait for the record of a purge just made.
const RECORDS_KEPT: usize = 1024;

/// The edges' acknowledgements of purges, shared by the publisher and the API. Cheap to clone.
#[derive(Clone)]
pub struct PurgeAcks(Arc<watch::Sender<Recorded>>);

/// What was recorded.
#[derive(Default)]
struct Recorded {
    /// Whether a publisher records (without one, no record ever comes).
    publishing: bool,
    /// By purge number, the newest [`RECORDS_KEPT`].
    acks: BTreeMap<u64, EdgeAcks>,
}

impl Default for PurgeAcks {
    /// Nobody publishes yet.
    fn default() -> Self {
        PurgeAcks(Arc::new(watch::Sender::new(Recorded::default())))
    }
}

impl PurgeAcks {
    /// A publisher records from now on.
    pub fn publishing(&self) {
        self.0.send_if_modified(|recorded| {
            let was = recorded.publishing;
            recorded.publishing = true;
            !was
        });
    }

    /// Records how the edges took purge `sequence`.
    pub fn record(&self, sequence: u64, acks: EdgeAcks) {
        self.0.send_modify(|recorded| {
            recorded.acks.insert(sequence, acks);
            while recorded.acks.len() > RECORDS_KEPT {
                recorded.acks.pop_first();
            }
        });
    }

    /// How the edges took purge `sequence`, waiting up to `wait` for the record; `None` when
    /// none came in time, or no publisher records.
    pub async fn wait(&self, sequence: u64, wait: Duration) -> Option<EdgeAcks> {
        let mut recorded = self.0.subscribe();
        let found = tokio::time::timeout(
            wait,
            recorded.wait_for(|r| !r.publishing || r.acks.contains_key(&sequence)),
        )
        .await;
        match found {
            Ok(Ok(recorded)) => recorded.acks.get(&sequence).copied(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACKS: EdgeAcks = EdgeAcks {
        connected: 2,
        applied: 1,
    };

    #[tokio::test]
    async fn an_answer_waits_for_its_record_while_a_publisher_records() {
        let acks = PurgeAcks::default();
        // Nobody records: no wait.
        let none = tokio::time::timeout(Duration::from_secs(5), acks.wait(1, Duration::MAX));
        assert_eq!(none.await.unwrap(), None);
        acks.publishing();
        let waiting = tokio::spawn({
            let acks = acks.clone();
            async move { acks.wait(7, Duration::from_secs(60)).await }
        });
        acks.record(6, ACKS);
        acks.record(7, ACKS);
        assert_eq!(waiting.await.unwrap(), Some(ACKS));
        for sequence in 8..8 + RECORDS_KEPT as u64 {
            acks.record(sequence, ACKS);
        }
        assert_eq!(
            acks.wait(7, Duration::ZERO).await,
            None,
            "the oldest are dropped"
        );
        assert_eq!(acks.wait(8, Duration::ZERO).await, Some(ACKS));
    }
}
