//! One query to many peers (a region's nodes, the installation's regions), their answers
//! merged into one.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::{StreamExt, StreamMap};

use super::{LogAnswer, LogNotice, LogQuery, Offers};

/// How the answers of one fan-in are told apart and what is said of a peer that fails.
pub trait Branch: Send + Sync {
    /// Marks what `peer` answered as its own (its region or node on every line and notice).
    fn mark(&self, peer: &str, answer: &mut LogAnswer);
    /// The notice that `peer` could not answer, and why.
    fn missing(&self, peer: &str, why: &str) -> LogNotice;
}

/// Asks each of `peers` `query` through `offers` (waiting up to `wait` for an offer of each),
/// and sends what they answer to `out`, marked by `branch`; a peer that cannot be asked or
/// whose call fails is a notice. Sends `caught_up` once each peer has (or has ended), and
/// returns when every peer has ended or `out` is closed (then dropping every call, which
/// cancels the query downward).
pub async fn fan_in(
    offers: &Offers,
    peers: Vec<String>,
    query: LogQuery,
    wait: Duration,
    out: mpsc::Sender<LogAnswer>,
    branch: &impl Branch,
) {
    let mut asked = tokio::task::JoinSet::new();
    for peer in peers {
        let (offers, query) = (offers.clone(), query.clone());
        asked.spawn(async move {
            let answers = offers.ask(&peer, query, wait).await;
            (peer, answers)
        });
    }
    let mut streams = StreamMap::new();
    let mut failed = Vec::new();
    while let Some(joined) = asked.join_next().await {
        let Ok((peer, answers)) = joined else {
            continue;
        };
        match answers {
            Ok(answers) => {
                streams.insert(peer, answers);
            }
            Err(why) => failed.push(branch.missing(&peer, &why)),
        }
    }
    if !failed.is_empty() {
        let notices = LogAnswer {
            notices: failed,
            ..LogAnswer::default()
        };
        if out.send(notices).await.is_err() {
            return;
        }
    }
    let mut behind: BTreeSet<String> = streams.keys().cloned().collect();
    let mut caught_up_sent = false;
    loop {
        // Peers whose answers ended are caught up.
        behind.retain(|peer| streams.contains_key(peer));
        if behind.is_empty() && !caught_up_sent {
            caught_up_sent = true;
            let caught_up = LogAnswer {
                caught_up: true,
                ..LogAnswer::default()
            };
            if out.send(caught_up).await.is_err() {
                return;
            }
        }
        let next = tokio::select! {
            next = streams.next() => next,
            () = out.closed() => return,
        };
        let Some((peer, answer)) = next else {
            // Every peer has ended: they are all caught up.
            if !caught_up_sent {
                let caught_up = LogAnswer {
                    caught_up: true,
                    ..LogAnswer::default()
                };
                let _ = out.send(caught_up).await;
            }
            return;
        };
        let mut answer = match answer {
            Ok(answer) => answer,
            Err(status) => {
                streams.remove(&peer);
                let why = format!("its answer broke off: {}", status.message());
                LogAnswer::notice(branch.missing(&peer, &why))
            }
        };
        if std::mem::take(&mut answer.caught_up) {
            behind.remove(&peer);
        }
        if answer.is_empty() {
            continue;
        }
        branch.mark(&peer, &mut answer);
        if out.send(answer).await.is_err() {
            return;
        }
    }
}
