//! The fast path against the full one, on arbitrary datagrams and on mutated queries: whatever
//! the fast path answers, the full path answers the same (the same message, the same counts),
//! what it forwards the full path forwards, and neither panics. The fast path may always defer.
//!
//! Each property runs 4096 cases (a few seconds in CI); `PROPTEST_CASES=1000000` runs it at
//! scale.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;

use super::{answer, plain_answer, Verdict};
use crate::table::{Entry, Table, Tables};
use crate::DnsMetrics;

/// The caller whose table has names; others have none.
const CALLER: [u8; 4] = [100, 64, 1, 3];

fn tables() -> Tables {
    let entry = |address: [u8; 4]| Entry {
        address: address.into(),
        ports: vec![("http".to_owned(), 9090)],
    };
    let table: Table = HashMap::from([
        ("api.shop.internal".to_owned(), entry([100, 112, 0, 9])),
        ("fra.api.shop.internal".to_owned(), entry([100, 64, 1, 2])),
        ("internal".to_owned(), entry([100, 112, 0, 10])),
    ]);
    let tables = Tables::default();
    tables.replace(HashMap::from([(IpAddr::from(CALLER), Arc::new(table))]));
    tables
}

/// Labels that reach every branch (the zone, SRV owners, reverse names of the platform and
/// others), and arbitrary bytes.
fn label() -> impl Strategy<Value = Vec<u8>> {
    const KNOWN: [&str; 20] = [
        "api", "shop", "fra", "internal", "InTeRnAl", "_http", "_tcp", "in-addr", "arpa", "100",
        "64", "112", "0", "9", "1", "2", "3", "064", "example", "com",
    ];
    prop_oneof![
        3 => proptest::sample::select(&KNOWN[..]).prop_map(|l| l.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 1..12),
    ]
}

/// A query as a stub resolver would send it (most often), with odd headers, counts, types,
/// classes and trailing bytes now and then.
fn query() -> impl Strategy<Value = Vec<u8>> {
    let flags = prop_oneof![4 => Just(0x01u8), 1 => Just(0u8), 1 => any::<u8>()];
    let third = prop_oneof![4 => Just(0u8), 1 => any::<u8>()];
    let counts = prop_oneof![
        4 => Just([0u8, 1, 0, 0, 0, 0, 0, 0]),
        1 => proptest::array::uniform8(0u8..3),
    ];
    let kind = prop_oneof![
        Just(1u16),
        Just(28),
        Just(33),
        Just(12),
        Just(255),
        any::<u16>()
    ];
    let class = prop_oneof![4 => Just(1u16), 1 => any::<u16>()];
    let trailing =
        prop_oneof![4 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..16)];
    (
        any::<u16>(),
        flags,
        third,
        counts,
        proptest::collection::vec(label(), 0..7),
        kind,
        class,
        trailing,
    )
        .prop_map(
            |(id, flags, third, counts, labels, kind, class, trailing)| {
                let mut packet = id.to_be_bytes().to_vec();
                packet.extend([flags, third]);
                packet.extend(counts);
                for label in labels {
                    packet.push(u8::try_from(label.len()).unwrap_or(0));
                    packet.extend(label);
                }
                packet.push(0);
                packet.extend(kind.to_be_bytes());
                packet.extend(class.to_be_bytes());
                packet.extend(trailing);
                packet
            },
        )
}

/// A query with a few bytes changed, cut short or lengthened.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        query(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        prop_oneof![3 => Just(None), 1 => any::<usize>().prop_map(Some)],
    )
        .prop_map(|(mut packet, changes, cut)| {
            for (at, byte) in changes {
                let at = at % packet.len();
                packet[at] = byte;
            }
            if let Some(cut) = cut {
                packet.truncate(cut % (packet.len() + 1));
            }
            packet
        })
}

/// Checks the fast path against the full one on `datagram` from `caller`.
fn same_answer(tables: &Tables, datagram: &[u8], caller: IpAddr) -> Result<(), TestCaseError> {
    let (fast_metrics, full_metrics) = (DnsMetrics::default(), DnsMetrics::default());
    let mut scratch = String::new();
    let fast = plain_answer(datagram, caller, tables, &fast_metrics, &mut scratch);
    let full = answer(datagram, caller, tables, &full_metrics);
    match (fast, full) {
        (None, _) => {}
        (Some(Verdict::Forward), Verdict::Forward) => {}
        (Some(Verdict::Answer(fast)), Verdict::Answer(full)) => {
            let fast = hickory_proto::op::Message::from_vec(&fast);
            let full = hickory_proto::op::Message::from_vec(&full);
            prop_assert!(
                fast.is_ok(),
                "the fast path's answer does not parse: {fast:?}"
            );
            prop_assert_eq!(fast.ok(), full.ok());
            for outcome in ["answered", "nxdomain", "malformed"] {
                prop_assert_eq!(
                    fast_metrics.count(outcome),
                    full_metrics.count(outcome),
                    "{}",
                    outcome
                );
            }
        }
        (Some(fast), full) => prop_assert!(
            false,
            "fast path: {}, full path: {}",
            fast.describe(),
            full.describe()
        ),
    }
    Ok(())
}

impl Verdict {
    fn describe(&self) -> String {
        match self {
            Verdict::Answer(bytes) => format!("answer {bytes:?}"),
            Verdict::Forward => "forward".to_owned(),
            Verdict::Drop => "drop".to_owned(),
        }
    }
}

/// 4096 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        default.cases
    } else {
        4096
    };
    ProptestConfig { cases, ..default }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_fast_path_answers_queries_as_the_full_one_does(datagram in query(), known in any::<bool>()) {
        let caller = if known { IpAddr::from(CALLER) } else { IpAddr::from([100, 64, 1, 5]) };
        same_answer(&tables(), &datagram, caller)?;
    }

    #[test]
    fn the_fast_path_answers_mutated_queries_as_the_full_one_does(datagram in mutated()) {
        same_answer(&tables(), &datagram, IpAddr::from(CALLER))?;
    }

    #[test]
    fn arbitrary_datagrams_never_panic_either_path(datagram in proptest::collection::vec(any::<u8>(), 0..96)) {
        same_answer(&tables(), &datagram, IpAddr::from(CALLER))?;
    }
}
