//! The DNS server on loopback sockets: per-caller answers, NXDOMAIN for names a caller does not
//! see, SRV for named ports, reverse lookups of the platform's network answered here, forwarding
//! of other names (failing fast without an upstream that answers), and garbage ignored.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use meridian_dns::{serve_udp, DnsMetrics, Entry, Table, Tables, Upstream, TIMEOUTS_TO_FAIL};
use tokio::net::UdpSocket;

async fn ask(server: SocketAddr, from: Ipv4Addr, name: &str, kind: RecordType) -> Message {
    let socket = UdpSocket::bind((from, 0)).await.unwrap();
    let mut query = Message::new();
    query
        .set_id(4242)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    socket
        .send_to(&query.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = Message::from_vec(&buffer[..n]).unwrap();
    assert_eq!(answer.id(), 4242);
    answer
}

/// A fake upstream resolver that answers every query with 192.0.2.1.
async fn upstream() -> SocketAddr {
    upstream_dropping(0).await.0
}

/// A fake upstream resolver that drops the first `drops` datagrams it gets and answers every
/// later query with 192.0.2.1, and how many datagrams it got (`usize::MAX`: it never answers).
async fn upstream_dropping(drops: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
            if count.fetch_add(1, Ordering::SeqCst) < drops {
                continue;
            }
            let query = Message::from_vec(&buffer[..n]).unwrap();
            let mut reply = query.clone();
            reply.set_message_type(MessageType::Response);
            let name = query.queries()[0].name().clone();
            reply.add_answer(hickory_proto::rr::Record::from_rdata(
                name,
                60,
                RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
            socket
                .send_to(&reply.to_vec().unwrap(), from)
                .await
                .unwrap();
        }
    });
    (address, received)
}

#[tokio::test]
async fn callers_see_their_names_others_get_nxdomain_and_the_rest_is_forwarded() {
    let caller = Ipv4Addr::new(127, 0, 0, 1);
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    let mut table = Table::new();
    table.insert(
        "api.shop.internal".to_owned(),
        Entry {
            address: Ipv4Addr::new(100, 64, 1, 2),
            ports: vec![("http".to_owned(), 9090)],
        },
    );
    let tables = Arc::new(Tables::default());
    tables.replace(HashMap::from([(IpAddr::V4(caller), Arc::new(table))]));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = socket.local_addr().unwrap();
    let metrics = Arc::new(DnsMetrics::default());
    tokio::spawn(serve_udp(
        socket,
        tables,
        Arc::new(Upstream::new(Some(upstream().await))),
        metrics.clone(),
    ));

    let answer = ask(server, caller, "API.shop.internal.", RecordType::A).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert!(answer.authoritative());
    assert_eq!(
        answer.answers()[0].data(),
        &RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(100, 64, 1, 2)))
    );
    let srv = ask(
        server,
        caller,
        "_http._tcp.api.shop.internal.",
        RecordType::SRV,
    )
    .await;
    match srv.answers()[0].data() {
        RData::SRV(srv) => {
            assert_eq!(srv.port(), 9090);
            assert_eq!(srv.target().to_ascii(), "api.shop.internal.");
        }
        other => panic!("{other:?}"),
    }
    // An existing name asked for another type: no records, not NXDOMAIN.
    let aaaa = ask(server, caller, "api.shop.internal.", RecordType::AAAA).await;
    assert_eq!(aaaa.response_code(), ResponseCode::NoError);
    assert!(aaaa.answers().is_empty());
    // Unknown names, and names the caller does not see, do not exist.
    let unknown = ask(server, caller, "nope.shop.internal.", RecordType::A).await;
    assert_eq!(unknown.response_code(), ResponseCode::NXDomain);
    let hidden = ask(server, stranger, "api.shop.internal.", RecordType::A).await;
    assert_eq!(hidden.response_code(), ResponseCode::NXDomain);
    // Other names go upstream.
    let outside = ask(server, caller, "example.com.", RecordType::A).await;
    assert_eq!(
        outside.answers()[0].data(),
        &RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 1)))
    );
    // Garbage is ignored, and the server goes on.
    let garbage = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    garbage.send_to(b"\x00\x01not dns", server).await.unwrap();
    let again = ask(server, caller, "api.shop.internal.", RecordType::A).await;
    assert_eq!(again.response_code(), ResponseCode::NoError);
    assert_eq!(metrics.count("malformed"), 1);
    assert_eq!(metrics.count("forwarded"), 1);
}

/// A server on loopback answering `caller` from `table`, forwarding to `upstream`.
async fn serving(
    caller: Ipv4Addr,
    table: &[(&str, Ipv4Addr)],
    upstream: Option<SocketAddr>,
) -> (SocketAddr, Arc<DnsMetrics>) {
    let table: Table = table
        .iter()
        .map(|(name, address)| {
            let entry = Entry {
                address: *address,
                ports: Vec::new(),
            };
            ((*name).to_owned(), entry)
        })
        .collect();
    let tables = Arc::new(Tables::default());
    tables.replace(HashMap::from([(IpAddr::V4(caller), Arc::new(table))]));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let metrics = Arc::new(DnsMetrics::default());
    let upstream = Arc::new(Upstream::new(upstream));
    tokio::spawn(serve_udp(socket, tables, upstream, metrics.clone()));
    (address, metrics)
}

/// The name of the one PTR record of `answer`.
fn pointer(answer: &Message) -> String {
    match answer.answers() {
        [record] => match record.data() {
            RData::PTR(name) => name.to_ascii(),
            other => panic!("not a PTR: {other:?}"),
        },
        other => panic!("not one record: {other:?}"),
    }
}

#[tokio::test]
async fn reverse_lookups_of_the_platforms_addresses_are_answered_here_never_forwarded() {
    let caller = Ipv4Addr::new(127, 0, 0, 1);
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    let vip = Ipv4Addr::new(100, 112, 0, 9);
    let node_side = Ipv4Addr::new(100, 64, 1, 2);
    let (upstream, received) = upstream_dropping(usize::MAX).await;
    let (server, metrics) = serving(
        caller,
        &[
            ("fra.api.shop.internal", node_side),
            ("api.shop.internal", vip),
            ("api.shop.acme.internal", vip),
        ],
        Some(upstream),
    )
    .await;

    // A service's virtual IP: its shortest name.
    let service = ask(server, caller, "9.0.112.100.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(service.response_code(), ResponseCode::NoError);
    assert!(service.authoritative());
    assert_eq!(pointer(&service), "api.shop.internal.");
    // A node side that a pinned name resolves to.
    let pinned = ask(server, caller, "2.1.64.100.IN-ADDR.ARPA.", RecordType::PTR).await;
    assert_eq!(pointer(&pinned), "fra.api.shop.internal.");
    // An instance's own address, which no name gives: it does not exist, authoritatively.
    let instance = ask(server, caller, "3.1.64.100.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(instance.response_code(), ResponseCode::NXDomain);
    assert!(instance.authoritative());
    // A caller that does not see the service does not learn its name.
    let hidden = ask(
        server,
        stranger,
        "9.0.112.100.in-addr.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(hidden.response_code(), ResponseCode::NXDomain);
    assert!(hidden.answers().is_empty());
    // The zone above the addresses exists, without records.
    let above = ask(server, caller, "1.64.100.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(above.response_code(), ResponseCode::NoError);
    assert!(above.answers().is_empty());
    // None of these went upstream.
    assert_eq!(received.load(Ordering::SeqCst), 0);
    assert_eq!(metrics.count("forwarded"), 0);
}

#[tokio::test]
async fn without_an_upstream_other_names_fail_at_once_with_their_question() {
    let caller = Ipv4Addr::new(127, 0, 0, 1);
    let (server, metrics) = serving(caller, &[], None).await;
    for (name, kind) in [
        ("example.com.", RecordType::A),
        ("1.0.0.127.in-addr.arpa.", RecordType::PTR),
    ] {
        let answer = ask(server, caller, name, kind).await;
        assert_eq!(answer.response_code(), ResponseCode::ServFail, "{name}");
        assert!(!answer.authoritative(), "{name}");
        // The question comes back: stub resolvers (glibc) drop an answer without it and wait.
        let asked: Vec<_> = answer
            .queries()
            .iter()
            .map(|q| q.name().to_ascii())
            .collect();
        assert_eq!(asked, [name], "{name}");
    }
    assert_eq!(metrics.count("failed"), 2);
    assert_eq!(metrics.count("forwarded"), 0);
}

/// The one A record of `answer`.
fn address(answer: &Message) -> Ipv4Addr {
    match answer.answers() {
        [record] => match record.data() {
            RData::A(a) => a.0,
            other => panic!("not an A: {other:?}"),
        },
        other => panic!("not one record: {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_datagram_or_a_late_answer_fails_no_other_query() {
    let caller = Ipv4Addr::new(127, 0, 0, 1);
    // The query's first datagram is lost: it is sent again and answered.
    let (upstream, _) = upstream_dropping(1).await;
    let (server, _) = serving(caller, &[], Some(upstream)).await;
    let resent = ask(server, caller, "example.com.", RecordType::A).await;
    assert_eq!(resent.response_code(), ResponseCode::NoError);
    assert_eq!(address(&resent), Ipv4Addr::new(192, 0, 2, 1));

    // Both datagrams of a query are lost: it fails, and the next one is still forwarded.
    let (upstream, received) = upstream_dropping(2).await;
    let (server, metrics) = serving(caller, &[], Some(upstream)).await;
    let late = ask(server, caller, "slow.example.com.", RecordType::A).await;
    assert_eq!(late.response_code(), ResponseCode::ServFail);
    let next = ask(server, caller, "example.org.", RecordType::A).await;
    assert_eq!(next.response_code(), ResponseCode::NoError);
    assert_eq!(address(&next), Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(received.load(Ordering::SeqCst), 3);
    assert_eq!(metrics.count("forwarded"), 2);
    assert_eq!(metrics.count("failed"), 1);
}

#[tokio::test]
async fn an_upstream_that_stops_answering_gives_servfail_and_is_not_waited_on_again() {
    let caller = Ipv4Addr::new(127, 0, 0, 1);
    let (upstream, received) = upstream_dropping(usize::MAX).await;
    let (server, metrics) = serving(caller, &[], Some(upstream)).await;
    let names: Vec<String> = (0..TIMEOUTS_TO_FAIL)
        .map(|n| format!("{n}.example.com."))
        .collect();
    // At once, as callers of a node would.
    let asking: Vec<_> = names
        .iter()
        .map(|name| {
            let name = name.clone();
            tokio::spawn(async move { ask(server, caller, &name, RecordType::A).await })
        })
        .collect();
    for (asked, name) in asking.into_iter().zip(&names) {
        let answer = asked.await.unwrap();
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        assert_eq!(answer.queries()[0].name().to_ascii(), *name);
    }
    // So many timeouts in a row are remembered: the next name fails without going upstream.
    let sent = received.load(Ordering::SeqCst);
    let next = ask(server, caller, "example.org.", RecordType::A).await;
    assert_eq!(next.response_code(), ResponseCode::ServFail);
    assert_eq!(received.load(Ordering::SeqCst), sent);
    let timeouts = u64::from(TIMEOUTS_TO_FAIL);
    assert_eq!(metrics.count("forwarded"), timeouts);
    assert_eq!(metrics.count("failed"), timeouts + 1);

    // An upstream whose port is closed fails as soon as the host says so, and is remembered.
    let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let closed_address = closed.local_addr().unwrap();
    drop(closed);
    let (server, metrics) = serving(caller, &[], Some(closed_address)).await;
    let refused = ask(server, caller, "example.com.", RecordType::A).await;
    assert_eq!(refused.response_code(), ResponseCode::ServFail);
    let next = ask(server, caller, "example.org.", RecordType::A).await;
    assert_eq!(next.response_code(), ResponseCode::ServFail);
    assert_eq!(metrics.count("forwarded"), 1);
    assert_eq!(metrics.count("failed"), 2);
}
