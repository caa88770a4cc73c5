//! Instance output on demand, through the control planes: a regional control plane keeps its
//! agents' offers to answer log queries (`meridian.v1.Logs`, each agent named by its
//! certificate) and answers the global control plane's queries by asking its nodes; the global
//! control plane keeps the regions' offers and answers the API's queries by asking the
//! regions. Every line is marked with its region and node by the plane that vouches for them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_identity::{SpiffeId, Subject};
use meridian_model::{LogEvent, LogLine, LogNotice, LogRequest, NoticeKind};
use meridian_xds::logs::{fan_in, Answering, Authorize, Branch, LogAnswer, LogQuery, Offers};
use tokio::sync::mpsc;
use tonic::Status;

use crate::region::Region;
use crate::tls::Peer;

/// How long a query waits for a node or region to take it (one whose offers are all in use
/// may free one meanwhile).
const OFFER_WAIT: Duration = Duration::from_secs(3);
/// Most queries a region answers at once (followers included): as many as one connection to
/// the global control plane carries streams (`max_streams_per_connection`).
pub const REGION_LOG_QUERIES: usize = 16;
/// Answers from the regions waiting to be turned into events: past this, reading pauses.
const EVENT_QUEUE: usize = 16;

/// The peer's SPIFFE ID, or why it may not offer.
fn peer_id(extensions: &tonic::codegen::http::Extensions) -> Result<SpiffeId, Status> {
    extensions
        .get::<Peer>()
        .and_then(|peer| peer.id.clone())
        .ok_or_else(|| Status::unauthenticated("log offers need a client certificate"))
}

/// Names agents of `region` by their node; refuses everyone else.
pub fn agents_of(region: &str) -> Authorize {
    let region = region.to_owned();
    Arc::new(move |extensions| {
        let id = peer_id(extensions)?;
        match id.subject {
            Subject::Agent {
                region: theirs,
                node,
            } if theirs == region => Ok(node),
            _ => Err(Status::permission_denied(format!(
                "{id} may not answer log queries of region {region}: only its agents may"
            ))),
        }
    })
}

/// Names regional control planes by their region; refuses everyone else.
pub fn regional_planes() -> Authorize {
    Arc::new(|extensions| {
        let id = peer_id(extensions)?;
        match id.subject {
            Subject::Control {
                region: Some(region),
            } => Ok(region),
            _ => Err(Status::permission_denied(format!(
                "{id} may not answer log queries: only regional control planes may"
            ))),
        }
    })
}

/// A region's nodes as branches of a query: each line and notice marked with the region and
/// the node that answered.
struct Nodes<'a> {
    region: &'a str,
}

impl Branch for Nodes<'_> {
    fn mark(&self, node: &str, answer: &mut LogAnswer) {
        for line in &mut answer.lines {
            line.region = self.region.to_owned();
            line.node = node.to_owned();
        }
        for notice in &mut answer.notices {
            notice.region = self.region.to_owned();
            notice.node = node.to_owned();
        }
    }

    fn missing(&self, node: &str, why: &str) -> meridian_xds::logs::LogNotice {
        meridian_xds::logs::LogNotice {
            region: self.region.to_owned(),
            node: node.to_owned(),
            ..meridian_xds::logs::LogNotice::new(
                NoticeKind::Missing.as_str(),
                format!(
                    "node {node} of region {} did not answer: {why}",
                    self.region
                ),
            )
        }
    }
}

/// Answers the global control plane's log queries for a region: asks each of its live nodes
/// (and any other agent connected) and merges their answers.
#[derive(Clone)]
pub struct RegionLogs {
    region: Arc<Region>,
    offers: Offers,
}

impl RegionLogs {
    /// Answers for `region` through its agents' `offers`.
    pub fn new(region: Arc<Region>, offers: Offers) -> RegionLogs {
        RegionLogs { region, offers }
    }
}

impl Answering for RegionLogs {
    async fn answer(&self, query: LogQuery, answers: mpsc::Sender<LogAnswer>) {
        let mut nodes: BTreeSet<String> = self
            .region
            .nodes()
            .into_iter()
            .filter(|n| n.live)
            .map(|n| n.name)
            .collect();
        nodes.extend(self.offers.peers());
        let branch = Nodes {
            region: self.region.name(),
        };
        let nodes = nodes.into_iter().collect();
        fan_in(&self.offers, nodes, query, OFFER_WAIT, answers, &branch).await;
    }
}

/// The regions as branches of a query: each line and notice marked with the region.
struct Regions;

impl Branch for Regions {
    fn mark(&self, region: &str, answer: &mut LogAnswer) {
        for line in &mut answer.lines {
            line.region = region.to_owned();
        }
        for notice in &mut answer.notices {
            notice.region = region.to_owned();
        }
    }

    fn missing(&self, region: &str, why: &str) -> meridian_xds::logs::LogNotice {
        meridian_xds::logs::LogNotice {
            region: region.to_owned(),
            ..meridian_xds::logs::LogNotice::new(
                NoticeKind::Missing.as_str(),
                format!("region {region} did not answer: {why}"),
            )
        }
    }
}

/// The API's log source on the global control plane: asks the regions through their offers.
pub struct GlobalLogs {
    offers: Offers,
}

impl GlobalLogs {
    /// Asks the regions through their `offers`.
    pub fn new(offers: Offers) -> GlobalLogs {
        GlobalLogs { offers }
    }
}

impl meridian_api::LogSource for GlobalLogs {
    fn open(
        &self,
        (org, app, service): (&str, &str, &str),
        request: &LogRequest,
        regions: Vec<String>,
    ) -> mpsc::Receiver<LogEvent> {
        let query = LogQuery {
            org: org.to_owned(),
            app: app.to_owned(),
            service: service.to_owned(),
            since_unix_nanos: request.since.map_or(0, meridian_model::logs::unix_nanos),
            tail: request.tail,
            grep: request.grep.clone().unwrap_or_default(),
            follow: request.follow,
        };
        let (wire, mut answers) = mpsc::channel(EVENT_QUEUE);
        let (events, received) = mpsc::channel(EVENT_QUEUE);
        let offers = self.offers.clone();
        tokio::spawn(async move {
            fan_in(&offers, regions, query, OFFER_WAIT, wire, &Regions).await;
        });
        tokio::spawn(async move {
            // Ends when the regions' answers end or the API's reader goes (which drops
            // `answers`, ending the fan-in and every call below it).
            while let Some(answer) = tokio::select! {
                answer = answers.recv() => answer,
                () = events.closed() => None,
            } {
                for event in to_events(answer) {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        received
    }
}

/// The API's events of `answer`: its notices, its lines, then `caught_up` if it says so.
fn to_events(answer: LogAnswer) -> impl Iterator<Item = LogEvent> {
    let some = |text: String| (!text.is_empty()).then_some(text);
    let notices = answer.notices.into_iter().map(move |n| {
        LogEvent::Notice(LogNotice {
            kind: NoticeKind::parse(&n.kind),
            region: some(n.region),
            node: some(n.node),
            instance: some(n.instance),
            text: n.text,
        })
    });
    let lines = answer.lines.into_iter().map(|l| {
        LogEvent::Line(LogLine {
            region: l.region,
            node: l.node,
            instance: l.instance,
            stream: l.stream,
            time: meridian_model::logs::format_unix_nanos(l.time_unix_nanos),
            text: l.text,
            partial: l.partial,
        })
    });
    notices
        .chain(lines)
        .chain(answer.caught_up.then_some(LogEvent::CaughtUp))
}
