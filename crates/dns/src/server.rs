//! The UDP server: one datagram in, one out. Queries for `.internal` names are answered from the
//! caller's table (authoritatively; NXDOMAIN for a name it does not see), and so are reverse
//! lookups of the platform's network; others are forwarded, and fail fast (SERVFAIL) when there
//! is no upstream or it does not answer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;

use crate::reverse::{self, Reverse};
use crate::table::{Table, Tables};
use crate::upstream::{Admission, Upstream};

/// The zone this server is authoritative for.
const ZONE: &str = "internal";
/// How long answers may be cached: short, names follow placement.
const TTL: u32 = 5;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 4096;
/// Most forwarded queries in flight; beyond, queries are answered SERVFAIL.
const MAX_FORWARDS: u64 = 256;

/// Counts of what the server did (`meridian_<component>_dns_queries_total{outcome}` once
/// registered), and the forwards in flight.
#[derive(Debug)]
pub struct DnsMetrics {
    queries: Family<Outcome, Counter>,
    /// The counters of each outcome, looked up once.
    answered: Counter,
    nxdomain: Counter,
    forwarded: Counter,
    failed: Counter,
    malformed: Counter,
    forwards_in_flight: AtomicU64,
}

impl Default for DnsMetrics {
    fn default() -> DnsMetrics {
        let queries = Family::<Outcome, Counter>::default();
        let counter = |outcome| queries.get_or_create(&Outcome { outcome }).clone();
        DnsMetrics {
            answered: counter("answered"),
            nxdomain: counter("nxdomain"),
            forwarded: counter("forwarded"),
            failed: counter("failed"),
            malformed: counter("malformed"),
            queries,
            forwards_in_flight: AtomicU64::new(0),
        }
    }
}

/// What became of a query.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `answered`, `nxdomain`, `forwarded`, `failed` (SERVFAIL: no upstream, or it did not
    /// answer or failed recently) or `malformed`.
    pub outcome: &'static str,
}

impl DnsMetrics {
    /// Counters registered in `registry`.
    pub fn new(registry: &mut Registry) -> DnsMetrics {
        let metrics = DnsMetrics::default();
        registry.register(
            "dns_queries",
            "DNS queries, by what became of them",
            metrics.queries.clone(),
        );
        metrics
    }

    /// How many queries had `outcome`.
    pub fn count(&self, outcome: &'static str) -> u64 {
        self.queries.get_or_create(&Outcome { outcome }).get()
    }
}

/// Serves queries on `socket` until the task is dropped, answering from `tables` and forwarding
/// other names to `upstream`.
pub async fn serve_udp(
    socket: UdpSocket,
    tables: Arc<Tables>,
    upstream: Arc<Upstream>,
    metrics: Arc<DnsMetrics>,
) {
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut name = String::with_capacity(256);
    loop {
        let (length, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "receiving a query failed");
                continue;
            }
        };
        let datagram = &buffer[..length];
        let verdict = plain_answer(datagram, from.ip(), &tables, &metrics, &mut name)
            .unwrap_or_else(|| answer(datagram, from.ip(), &tables, &metrics));
        let admission = match verdict {
            Verdict::Answer(bytes) => {
                let _ = socket.send_to(&bytes, from).await;
                continue;
            }
            Verdict::Drop => continue,
            Verdict::Forward
                if metrics.forwards_in_flight.load(Ordering::Relaxed) >= MAX_FORWARDS =>
            {
                Admission::Fail
            }
            Verdict::Forward => upstream.admit(),
        };
        let Admission::Send(address) = admission else {
            metrics.failed.inc();
            if let Some(bytes) = failure_reply(datagram) {
                let _ = socket.send_to(&bytes, from).await;
            }
            continue;
        };
        metrics.forwarded.inc();
        metrics.forwards_in_flight.fetch_add(1, Ordering::Relaxed);
        let (socket, query, metrics, upstream) = (
            socket.clone(),
            datagram.to_vec(),
            metrics.clone(),
            upstream.clone(),
        );
        tokio::spawn(async move {
            let reply = match upstream.ask(&query, address).await {
                Some(reply) => Some(reply),
                None => {
                    metrics.failed.inc();
                    failure_reply(&query)
                }
            };
            if let Some(reply) = reply {
                let _ = socket.send_to(&reply, from).await;
            }
            metrics.forwards_in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What to do with a datagram.
enum Verdict {
    Answer(Vec<u8>),
    Forward,
    Drop,
}

/// The verdict on a plain query (one question of class IN, no other records, an uncompressed
/// name of printable labels) for a name other than an SRV owner, read straight from the
/// datagram: the hot path, with no message parsed or built. `None` for anything else, which
/// [`answer`] handles in full. `name` is scratch space.
fn plain_answer(
    datagram: &[u8],
    caller: IpAddr,
    tables: &Tables,
    metrics: &DnsMetrics,
    name: &mut String,
) -> Option<Verdict> {
    let header = datagram.get(..12)?;
    // A query (QR 0) with opcode QUERY, and counts 1, 0, 0, 0.
    if header[2] & 0xf8 != 0 || header[4..12] != [0, 1, 0, 0, 0, 0, 0, 0] {
        return None;
    }
    name.clear();
    let mut at = 12;
    loop {
        let length = usize::from(*datagram.get(at)?);
        if length == 0 {
            break;
        }
        let label = datagram.get(at + 1..at + 1 + length)?;
        if length & 0xc0 != 0 || !label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        at += 1 + length;
    }
    let question = datagram.get(at + 1..at + 5)?;
    let (kind, class) = (
        u16::from_be_bytes([question[0], question[1]]),
        u16::from_be_bytes([question[2], question[3]]),
    );
    if class != 1 || datagram.len() != at + 5 {
        return None;
    }
    if name != ZONE && !name.ends_with(".internal") {
        if name.ends_with(".in-addr.arpa") {
            return None; // Perhaps the platform's own: the full path tells.
        }
        return Some(Verdict::Forward);
    }
    if name.starts_with('_') || kind == u16::from(RecordType::SRV) {
        return None;
    }
    let (code, address) = match tables.address(caller, name) {
        Some(address) => {
            metrics.answered.inc();
            let a = kind == u16::from(RecordType::A);
            (ResponseCode::NoError, a.then_some(address))
        }
        None => {
            metrics.nxdomain.inc();
            (ResponseCode::NXDomain, None)
        }
    };
    edited_reply(datagram, code, address).map(Verdict::Answer)
}

fn answer(datagram: &[u8], caller: IpAddr, tables: &Tables, metrics: &DnsMetrics) -> Verdict {
    let Ok(query) = Message::from_vec(datagram) else {
        metrics.malformed.inc();
        return Verdict::Drop;
    };
    if query.message_type() != MessageType::Query {
        return Verdict::Drop;
    }
    if query.op_code() != OpCode::Query || query.queries().len() != 1 {
        metrics.malformed.inc();
        return full_reply(&query, ResponseCode::FormErr, Vec::new());
    }
    let question = &query.queries()[0];
    let mut name = question.name().to_ascii();
    name.make_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let (asked, kind) = (question.name(), question.query_type());
    let found = match reverse::platform_name(name) {
        Some(reverse) => reverse_records(tables.of(caller).as_deref(), reverse, asked, kind),
        None if name == ZONE || name.ends_with(".internal") => {
            records(tables.of(caller).as_deref(), name, asked, kind)
        }
        None => return Verdict::Forward,
    };
    let code = if found.is_some() {
        metrics.answered.inc();
        ResponseCode::NoError
    } else {
        metrics.nxdomain.inc();
        ResponseCode::NXDomain
    };
    let records = found.unwrap_or_default();
    // The common case (one question, no EDNS, at most one A record) is answered by editing the
    // query in place; anything else is serialized in full.
    let address = match records.as_slice() {
        [] => Some(None),
        [record] => match record.data() {
            RData::A(a) => Some(Some(a.0)),
            _ => None,
        },
        _ => None,
    };
    if let Some(bytes) = address.and_then(|address| edited_reply(datagram, code, address)) {
        return Verdict::Answer(bytes);
    }
    full_reply(&query, code, records)
}

/// The answer to `query` with `code` and `records`, serialized in full (authoritative for
/// NOERROR and NXDOMAIN).
fn full_reply(query: &Message, code: ResponseCode, records: Vec<Record>) -> Verdict {
    let mut message = Message::new();
    message
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(authoritative(code))
        .set_response_code(code);
    for q in query.queries() {
        message.add_query(q.clone());
    }
    message.add_answers(records);
    message.to_vec().map_or(Verdict::Drop, Verdict::Answer)
}

/// Whether an answer with `code` is given as the zone's authority (the others are failures).
fn authoritative(code: ResponseCode) -> bool {
    code == ResponseCode::NoError || code == ResponseCode::NXDomain
}

/// The answer to a plain query (one question, no other records, an uncompressed name) with
/// `code` and, if given, one A record for the asked name: the query's header and question, with
/// the response flags set (AA as [`authoritative`] says) and the record appended (its name a
/// pointer to the question's). `None` for any other query.
fn edited_reply(
    query: &[u8],
    code: ResponseCode,
    address: Option<std::net::Ipv4Addr>,
) -> Option<Vec<u8>> {
    let counts = query.get(4..12)?;
    if counts != [0, 1, 0, 0, 0, 0, 0, 0] {
        return None;
    }
    // The end of the question's name, then its type and class.
    let mut at = 12;
    loop {
        let length = usize::from(*query.get(at)?);
        if length == 0 {
            break;
        }
        if length & 0xc0 != 0 {
            return None;
        }
        at += 1 + length;
    }
    let end = at + 1 + 4;
    let mut reply = Vec::with_capacity(end + 16);
    reply.extend_from_slice(query.get(..end)?);
    // QR, the query's opcode and RD, AA; RA and the response code.
    reply[2] = 0x80 | (query[2] & 0x79) | if authoritative(code) { 0x04 } else { 0 };
    reply[3] = 0x80 | (u16::from(code) & 0x0f) as u8;
    if let Some(address) = address {
        reply[7] = 1;
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        reply.extend_from_slice(&TTL.to_be_bytes());
        reply.extend_from_slice(&[0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

/// The records for `name` of `kind` in `table`; `None` when the name does not exist for the
/// caller (an existing name asked for another type has no records).
fn records(
    table: Option<&Table>,
    name: &str,
    asked: &Name,
    kind: RecordType,
) -> Option<Vec<Record>> {
    let table = table?;
    if let Some(entry) = table.get(name) {
        let records = match kind {
            RecordType::A => vec![Record::from_rdata(
                asked.clone(),
                TTL,
                RData::A(A(entry.address)),
            )],
            _ => Vec::new(),
        };
        return Some(records);
    }
    // `_<port>._tcp.<name>`
    let (port_label, rest) = name.split_once('.')?;
    let service = rest.strip_prefix("_tcp.")?;
    let entry = table.get(service)?;
    let port_name = port_label.strip_prefix('_')?;
    let port = entry.ports.iter().find(|(n, _)| n == port_name)?.1;
    let target = Name::from_ascii(format!("{service}.")).ok()?;
    Some(match kind {
        RecordType::SRV => vec![Record::from_rdata(
            asked.clone(),
            TTL,
            RData::SRV(SRV::new(0, 0, port, target)),
        )],
        _ => Vec::new(),
    })
}

/// The records for the reverse name `reverse` of `kind` in `table`: a `PTR` to the name the
/// caller's table gives the address; `None` when the name does not exist for the caller.
fn reverse_records(
    table: Option<&Table>,
    reverse: Reverse,
    asked: &Name,
    kind: RecordType,
) -> Option<Vec<Record>> {
    let address = match reverse {
        Reverse::Address(address) => address,
        Reverse::Above => return Some(Vec::new()),
        Reverse::Nothing => return None,
    };
    let target = Name::from_ascii(format!("{}.", reverse::name_of(table?, address)?)).ok()?;
    Some(match kind {
        RecordType::PTR => vec![Record::from_rdata(
            asked.clone(),
            TTL,
            RData::PTR(PTR(target)),
        )],
        _ => Vec::new(),
    })
}

/// The SERVFAIL answer to a query that could not be forwarded, with the query's question (stub
/// resolvers ignore an answer without it, and wait).
fn failure_reply(datagram: &[u8]) -> Option<Vec<u8>> {
    edited_reply(datagram, ResponseCode::ServFail, None).or_else(|| {
        let query = Message::from_vec(datagram).ok()?;
        match full_reply(&query, ResponseCode::ServFail, Vec::new()) {
            Verdict::Answer(bytes) => Some(bytes),
            _ => None,
        }
    })
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Entry;
    use hickory_proto::op::Query;
    use std::collections::HashMap;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    #[test]
    fn the_plain_path_answers_as_the_full_one_does() {
        let caller: IpAddr = [100, 64, 1, 3].into();
        let tables = Tables::default();
        let entry = Entry {
            address: [100, 112, 0, 9].into(),
            ports: vec![("http".to_owned(), 9090)],
        };
        let table: Table = HashMap::from([("api.shop.internal".to_owned(), entry)]);
        tables.replace(HashMap::from([(caller, Arc::new(table))]));
        let metrics = DnsMetrics::default();
        let mut scratch = String::new();
        for (name, kind) in [
            ("api.shop.internal.", RecordType::A),
            ("API.Shop.Internal.", RecordType::A),
            ("api.shop.internal.", RecordType::AAAA),
            ("web.shop.internal.", RecordType::A),
            ("internal.", RecordType::A),
        ] {
            let datagram = query(name, kind);
            let Some(Verdict::Answer(plain)) =
                plain_answer(&datagram, caller, &tables, &metrics, &mut scratch)
            else {
                panic!("{name} {kind}: not answered on the plain path");
            };
            let Verdict::Answer(full) = answer(&datagram, caller, &tables, &metrics) else {
                panic!("{name} {kind}: not answered");
            };
            assert_eq!(
                Message::from_vec(&plain).unwrap(),
                Message::from_vec(&full).unwrap(),
                "{name} {kind}"
            );
        }
        assert_eq!(metrics.count("answered"), 6);
        assert_eq!(metrics.count("nxdomain"), 4);
        // Other names are forwarded; SRV and odd queries take the full path.
        let forward = query("example.com.", RecordType::A);
        assert!(matches!(
            plain_answer(&forward, caller, &tables, &metrics, &mut scratch),
            Some(Verdict::Forward)
        ));
        for datagram in [
            query("_http._tcp.api.shop.internal.", RecordType::SRV),
            query("api.shop.internal.", RecordType::SRV),
            vec![0; 11],
        ] {
            assert!(plain_answer(&datagram, caller, &tables, &metrics, &mut scratch).is_none());
        }
    }
}
