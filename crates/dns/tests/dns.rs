//! The DNS server on loopback sockets: per-caller answers, NXDOMAIN for names a caller does not
//! see, SRV for named ports, forwarding of other names, and garbage ignored.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use meridian_dns::{serve_udp, DnsMetrics, Entry, Table, Tables};
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
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
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
    address
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
        Some(upstream().await),
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
