use alloc::vec;
use alloc::vec::Vec;
use core::net::SocketAddr;

use proptest::strategy::Strategy;

use super::frame::write_frame;
use super::*;
use crate::codec::DecodeError;
use crate::ids::{Incarnation, NodeId};
use crate::time::{Duration, Instant};

const ROLES: &[Role] = &[Role::Node, Role::Client];

fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name.as_bytes()).unwrap()
}

fn hello() -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        cluster: cluster("larder"),
        role: Role::Node,
        node: NodeId(7),
        incarnation: Incarnation(3),
        serves: Some("127.0.0.1:4000".parse::<SocketAddr>().unwrap()),
    }
}

fn server_config() -> ServerConfig {
    ServerConfig {
        cluster: cluster("larder"),
        versions: PROTOCOL_VERSIONS,
        incarnation: Incarnation(99),
        node_ttl: Duration::from_secs(10),
        roles: ROLES,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        max_frame_body: 1 << 20,
    }
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn frame(kind: FrameKind, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, kind, id, body, u32::MAX).unwrap();
    out
}

fn hello_frame(h: &Hello) -> Vec<u8> {
    let mut body = [0u8; Hello::MAX_LEN];
    let n = h.encode(&mut body).unwrap();
    frame(FrameKind::Hello, 0, &body[..n])
}

fn server_events(s: &mut ServerConnection) -> Vec<ServerEvent> {
    core::iter::from_fn(|| s.poll_event()).collect()
}

fn client_events(c: &mut ClientConnection) -> Vec<ClientEvent> {
    core::iter::from_fn(|| c.poll_event()).collect()
}

fn transmit_server(s: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.poll_transmit(&mut out);
    out
}

/// Decodes every frame in `bytes`.
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut d = Deframer::new(u32::MAX);
    d.push(bytes);
    core::iter::from_fn(|| d.next_frame().unwrap()).collect()
}

/// A client and a server wired back to back, with the server accepting every Hello
/// and answering each request with its body reversed.
struct Pair {
    client: ClientConnection,
    server: ServerConnection,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
}

impl Pair {
    fn connected(now: Instant) -> Self {
        let mut client = ClientConnection::new(ClientConfig::new(hello()), now);
        assert_eq!(client_events(&mut client), vec![ClientEvent::Dial]);
        client.handle_connected(now);
        let mut pair = Pair {
            client,
            server: ServerConnection::new(server_config(), now),
            client_events: Vec::new(),
            server_events: Vec::new(),
        };
        pair.pump(now, true);
        assert_eq!(pair.client.state(), ClientState::Established);
        pair
    }

    /// Moves bytes both ways until nothing moves; answers requests when `answer`.
    fn pump(&mut self, now: Instant, answer: bool) {
        loop {
            let mut moved = false;
            let mut out = Vec::new();
            if self.client.poll_transmit(&mut out) {
                self.server.handle_bytes(now, &out);
                moved = true;
            }
            while let Some(e) = self.server.poll_event() {
                match &e {
                    ServerEvent::Hello(_) => self.server.accept(now),
                    ServerEvent::Request { id, body } if answer => {
                        let reversed: Vec<u8> = body.iter().rev().copied().collect();
                        self.server.send_response(*id, &reversed).unwrap();
                    }
                    _ => {}
                }
                self.server_events.push(e);
            }
            let out = transmit_server(&mut self.server);
            if !out.is_empty() {
                self.client.handle_bytes(now, &out);
                moved = true;
            }
            self.client_events.extend(client_events(&mut self.client));
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn frame_headers_round_trip_for_every_kind() {
    for kind in FrameKind::ALL {
        let header = FrameHeader { kind, id: 0x0102_0304_0506_0708, body_len: 77 };
        assert_eq!(FrameHeader::decode(&header.encode(), 77), Ok(header));
        assert_eq!(FrameKind::from_code(kind.code()), Some(kind));
    }
    assert_eq!(FrameKind::from_code(0), None);
    assert_eq!(FrameKind::from_code(FrameKind::ALL.len() as u8 + 1), None);
}

#[test]
fn bad_headers_are_refused_from_the_header_alone() {
    let good = FrameHeader { kind: FrameKind::Request, id: 1, body_len: 10 }.encode();
    let mut magic = good;
    magic[0] = b'G';
    assert_eq!(FrameHeader::decode(&magic, 100), Err(FrameError::BadMagic([b'G', b'R'])));
    let mut kind = good;
    kind[2] = 200;
    assert_eq!(FrameHeader::decode(&kind, 100), Err(FrameError::UnknownKind(200)));
    let mut flags = good;
    flags[3] = 1;
    assert_eq!(FrameHeader::decode(&flags, 100), Err(FrameError::UnknownFlags(1)));
    assert_eq!(FrameHeader::decode(&good, 9), Err(FrameError::TooLong { len: 10, max: 9 }));
}

#[test]
fn an_oversized_length_fails_before_its_body_is_held_and_stays_failed() {
    let mut d = Deframer::new(1024);
    let header = FrameHeader { kind: FrameKind::Request, id: 1, body_len: u32::MAX }.encode();
    d.push(&header);
    assert_eq!(d.next_frame(), Err(FrameError::TooLong { len: u32::MAX, max: 1024 }));
    assert_eq!(d.buffered(), 0);
    d.push(&[0u8; 4096]);
    assert_eq!(d.buffered(), 0, "nothing is buffered after the stream failed");
    assert_eq!(d.next_frame(), Err(FrameError::TooLong { len: u32::MAX, max: 1024 }));
}

#[test]
fn frames_reassemble_from_any_split_of_the_stream() {
    let mut stream = frame(FrameKind::Request, 1, b"first");
    stream.extend(frame(FrameKind::Heartbeat, 0, b""));
    stream.extend(frame(FrameKind::Response, 2, &[9u8; 300]));
    for chunk in 1..=stream.len() {
        let mut d = Deframer::new(1024);
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            d.push(piece);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3, "chunk size {chunk}");
        assert_eq!(&got[0].body[..], b"first");
        assert_eq!((got[1].header.kind, got[1].body.len()), (FrameKind::Heartbeat, 0));
        assert_eq!((got[2].header.id, got[2].body.len()), (2, 300));
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn write_frame_refuses_a_body_over_the_peers_limit() {
    let mut out = Vec::new();
    assert_eq!(
        write_frame(&mut out, FrameKind::Request, 1, &[0u8; 11], 10),
        Err(FrameError::TooLong { len: 11, max: 10 })
    );
    assert!(out.is_empty());
}

#[test]
fn handshake_bodies_round_trip() {
    for serves in [None, Some("127.0.0.1:9".parse().unwrap()), Some("[::1]:65535".parse().unwrap())] {
        let h = Hello { serves, ..hello() };
        let mut buf = [0u8; Hello::MAX_LEN];
        let n = h.encode(&mut buf).unwrap();
        assert_eq!(Hello::decode(&buf[..n]), Ok(h));
    }
    let w = Welcome { version: 1, incarnation: Incarnation(5), node_ttl: Duration::from_secs(3) };
    let mut buf = [0u8; Welcome::LEN];
    assert_eq!(w.encode(&mut buf), Ok(Welcome::LEN));
    assert_eq!(Welcome::decode(&buf), Ok(w));
    for reason in [
        RefusalReason::VersionMismatch,
        RefusalReason::WrongCluster,
        RefusalReason::StaleIncarnation,
        RefusalReason::RoleNotAccepted,
        RefusalReason::ProtocolViolation,
        RefusalReason::Unknown(4242),
    ] {
        let r = Refusal { reason, versions: (1, 3) };
        let mut buf = [0u8; Refusal::LEN];
        assert_eq!(r.encode(&mut buf), Ok(Refusal::LEN));
        assert_eq!(Refusal::decode(&buf), Ok(r));
    }
}

#[test]
fn handshake_decoding_is_strict() {
    let mut buf = [0u8; Hello::MAX_LEN + 1];
    let n = hello().encode(&mut buf).unwrap();
    assert_eq!(Hello::decode(&buf[..n + 1]), Err(DecodeError::TrailingBytes { what: "hello", count: 1 }));
    let mut reversed = buf;
    reversed[1..3].copy_from_slice(&2u16.to_le_bytes()); // min 2 > max 1
    assert_eq!(
        Hello::decode(&reversed[..n]),
        Err(DecodeError::InvalidValue { what: "protocol version range" })
    );
    let mut role = buf;
    role[5] = 9;
    assert_eq!(Hello::decode(&role[..n]), Err(DecodeError::UnknownTag { what: "role", tag: 9 }));
    let mut name = buf;
    name[23] = b' ';
    assert_eq!(Hello::decode(&name[..n]), Err(DecodeError::InvalidValue { what: "cluster name" }));
    assert!(ClusterName::new(b"").is_err());
    assert!(ClusterName::new(&[b'a'; 65]).is_err());
    assert!(ClusterName::new(&[b'a'; 64]).is_ok());
}

#[test]
fn a_client_and_a_server_handshake_and_pipeline_requests() {
    let now = at(0);
    let mut p = Pair::connected(now);
    assert!(matches!(p.server_events[0], ServerEvent::Hello(h) if h == hello()));
    assert_eq!(p.server.state(), ServerState::Established);
    assert_eq!(p.server.version(), Some(1));
    let welcome = p.client.welcome().unwrap();
    assert_eq!((welcome.incarnation, welcome.node_ttl), (Incarnation(99), Duration::from_secs(10)));
    let ids: Vec<u64> = (0..10u8).map(|i| p.client.send_request(now, &[i, i + 1]).unwrap()).collect();
    assert_eq!(p.client.in_flight(), 10);
    p.pump(now, true);
    let responses: Vec<(u64, Vec<u8>)> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Response { id, body } => Some((*id, body.to_vec())),
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, Vec<u8>)> =
        ids.iter().zip(0..10u8).map(|(id, i)| (*id, vec![i + 1, i])).collect();
    assert_eq!(responses, expected);
    assert_eq!(p.client.in_flight(), 0);
}

#[test]
fn responses_out_of_order_reach_their_requests_and_a_late_one_is_dropped() {
    let now = at(0);
    let mut p = Pair::connected(now);
    let a = p.client.send_request(now, b"a").unwrap();
    let b = p.client.send_request(now, b"b").unwrap();
    p.pump(now, false);
    p.server.send_response(b, b"B").unwrap();
    p.pump(now, false);
    assert_eq!(
        p.client_events.last(),
        Some(&ClientEvent::Response { id: b, body: bytes::Bytes::from_static(b"B") })
    );
    // `a` times out (the connection itself stays alive on heartbeats); its response
    // arriving afterwards is not reported twice.
    p.client_events.clear();
    let mut later = now;
    for _ in 0..5 {
        later += Duration::from_secs(1);
        p.client.handle_timeout(later);
        p.pump(later, false);
    }
    assert_eq!(p.client_events, vec![ClientEvent::RequestFailed { id: a, error: RequestError::TimedOut }]);
    assert_eq!(p.client.state(), ClientState::Established);
    p.server.send_response(a, b"A").unwrap();
    let out = transmit_server(&mut p.server);
    p.client.handle_bytes(later, &out);
    assert_eq!(client_events(&mut p.client), vec![]);
}

#[test]
fn the_window_bounds_requests_in_flight() {
    let now = at(0);
    let mut config = ClientConfig::new(hello());
    config.window = 2;
    let mut c = ClientConnection::new(config, now);
    assert_eq!(c.send_request(now, b"x"), Err(client::SendError::NotConnected));
    let _ = client_events(&mut c);
    c.handle_connected(now);
    let mut s = ServerConnection::new(server_config(), now);
    let mut out = Vec::new();
    let _ = c.poll_transmit(&mut out);
    s.handle_bytes(now, &out);
    let _ = server_events(&mut s);
    s.accept(now);
    c.handle_bytes(now, &transmit_server(&mut s));
    assert!(c.can_send());
    let first = c.send_request(now, b"1").unwrap();
    c.send_request(now, b"2").unwrap();
    assert_eq!(c.send_request(now, b"3"), Err(client::SendError::WindowFull));
    s.handle_bytes(now, &{
        let mut out = Vec::new();
        let _ = c.poll_transmit(&mut out);
        out
    });
    let _ = server_events(&mut s);
    s.send_response(first, b"").unwrap();
    c.handle_bytes(now, &transmit_server(&mut s));
    assert!(c.can_send());
    assert!(c.send_request(now, b"3").is_ok());
}

#[test]
fn heartbeats_keep_an_idle_connection_alive_and_silence_ends_it() {
    let mut p = Pair::connected(at(0));
    // Each second the client heartbeats and the server answers: ten minutes pass.
    for s in 1..=600 {
        let now = at(s * 1000);
        p.client.handle_timeout(now);
        p.server.handle_timeout(now);
        p.pump(now, true);
    }
    assert_eq!(p.client.state(), ClientState::Established);
    assert_eq!(p.server.state(), ServerState::Established);
    // The server goes silent (it stops answering): the client gives up after 5 s.
    let mut last = at(600_000);
    for s in 1..=5 {
        last = at(600_000 + s * 1000);
        p.client.handle_timeout(last);
        let mut out = Vec::new();
        let _ = p.client.poll_transmit(&mut out);
    }
    assert_eq!(
        client_events(&mut p.client).last(),
        Some(&ClientEvent::Disconnected(DisconnectReason::IdleTimeout))
    );
    assert!(matches!(p.client.state(), ClientState::Waiting { .. }));
    // And a server whose peer went silent closes after its idle timeout.
    p.server.handle_timeout(last + Duration::from_secs(10));
    assert_eq!(server_events(&mut p.server), vec![ServerEvent::Closed(CloseReason::IdleTimeout)]);
    assert!(p.server.is_closed());
}

#[test]
fn a_lost_connection_fails_requests_in_flight_and_redials_with_doubling_backoff() {
    let now = at(0);
    let mut p = Pair::connected(now);
    let id = p.client.send_request(now, b"x").unwrap();
    p.client_events.clear();
    p.client.handle_disconnected(now);
    assert_eq!(
        client_events(&mut p.client),
        vec![
            ClientEvent::RequestFailed { id, error: RequestError::Disconnected },
            ClientEvent::Disconnected(DisconnectReason::PeerClosed)
        ]
    );
    let mut t = now;
    for wait_ms in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
        assert_eq!(p.client.poll_timeout(), Some(t + Duration::from_millis(wait_ms)));
        p.client.handle_timeout(t + Duration::from_millis(wait_ms - 1));
        assert_eq!(client_events(&mut p.client), vec![], "no dial before the backoff");
        t += Duration::from_millis(wait_ms);
        p.client.handle_timeout(t);
        assert_eq!(client_events(&mut p.client), vec![ClientEvent::Dial]);
        p.client.handle_connect_failed(t);
        assert_eq!(
            client_events(&mut p.client),
            vec![ClientEvent::Disconnected(DisconnectReason::ConnectFailed)]
        );
    }
    // A successful handshake resets the backoff.
    p.client.handle_timeout(t + Duration::from_millis(5000));
    t += Duration::from_millis(5000);
    let _ = client_events(&mut p.client);
    p.client.handle_connected(t);
    p.server = ServerConnection::new(server_config(), t);
    p.pump(t, true);
    assert_eq!(p.client.state(), ClientState::Established);
    p.client.handle_disconnected(t);
    assert_eq!(p.client.poll_timeout(), Some(t + Duration::from_millis(100)));
}

#[test]
fn a_dial_or_handshake_that_hangs_times_out() {
    let mut c = ClientConnection::new(ClientConfig::new(hello()), at(0));
    let _ = client_events(&mut c);
    c.handle_timeout(at(5000));
    assert_eq!(client_events(&mut c), vec![ClientEvent::Disconnected(DisconnectReason::ConnectTimeout)]);
    c.handle_timeout(at(5100));
    assert_eq!(client_events(&mut c), vec![ClientEvent::Dial]);
    c.handle_connected(at(5100));
    c.handle_timeout(at(10_100));
    assert_eq!(client_events(&mut c), vec![ClientEvent::Disconnected(DisconnectReason::ConnectTimeout)]);
}

fn refused_hello(h: &Hello) -> (Vec<ServerEvent>, Vec<u8>, bool) {
    let mut s = ServerConnection::new(server_config(), at(0));
    s.handle_bytes(at(0), &hello_frame(h));
    let events = server_events(&mut s);
    (events, transmit_server(&mut s), s.is_closed())
}

fn refusal_in(bytes: &[u8]) -> Refusal {
    let f = frames(bytes);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].header.kind, FrameKind::Refuse);
    Refusal::decode(&f[0].body).unwrap()
}

#[test]
fn a_hello_from_another_cluster_version_or_role_is_refused_and_closed() {
    for (h, reason) in [
        (Hello { cluster: cluster("other"), ..hello() }, RefusalReason::WrongCluster),
        (Hello { min_version: 2, max_version: 5, ..hello() }, RefusalReason::VersionMismatch),
        (Hello { role: Role::Peer, ..hello() }, RefusalReason::RoleNotAccepted),
    ] {
        let (events, out, closed) = refused_hello(&h);
        assert_eq!(events, vec![ServerEvent::Closed(CloseReason::Refused(reason))]);
        assert_eq!(refusal_in(&out), Refusal { reason, versions: PROTOCOL_VERSIONS });
        assert!(closed);
    }
}

#[test]
fn the_client_reports_a_refusal_and_keeps_trying() {
    let now = at(0);
    let mut c = ClientConnection::new(ClientConfig::new(Hello { cluster: cluster("other"), ..hello() }), now);
    let _ = client_events(&mut c);
    c.handle_connected(now);
    let mut s = ServerConnection::new(server_config(), now);
    let mut out = Vec::new();
    let _ = c.poll_transmit(&mut out);
    s.handle_bytes(now, &out);
    let _ = server_events(&mut s);
    c.handle_bytes(now, &transmit_server(&mut s));
    let refusal = Refusal { reason: RefusalReason::WrongCluster, versions: PROTOCOL_VERSIONS };
    assert_eq!(client_events(&mut c), vec![ClientEvent::Disconnected(DisconnectReason::Refused(refusal))]);
    assert!(matches!(c.state(), ClientState::Waiting { .. }));
}

#[test]
fn the_owner_may_refuse_a_hello_that_passed_the_connection_checks() {
    let mut s = ServerConnection::new(server_config(), at(0));
    s.handle_bytes(at(0), &hello_frame(&hello()));
    s.handle_bytes(at(0), &frame(FrameKind::Request, 1, b"sent too early"));
    assert_eq!(server_events(&mut s), vec![ServerEvent::Hello(hello())]);
    assert_eq!(s.poll_event(), None, "nothing else until the owner decides");
    s.refuse(RefusalReason::StaleIncarnation);
    assert_eq!(
        server_events(&mut s),
        vec![ServerEvent::Closed(CloseReason::Refused(RefusalReason::StaleIncarnation))]
    );
    assert_eq!(refusal_in(&transmit_server(&mut s)).reason, RefusalReason::StaleIncarnation);
}

#[test]
fn a_replayed_hello_or_a_request_before_the_handshake_closes_the_connection() {
    let violation = CloseReason::Refused(RefusalReason::ProtocolViolation);
    let now = at(0);
    let mut p = Pair::connected(now);
    p.server.handle_bytes(now, &hello_frame(&hello()));
    assert_eq!(server_events(&mut p.server), vec![ServerEvent::Closed(violation)]);
    assert_eq!(refusal_in(&transmit_server(&mut p.server)).reason, RefusalReason::ProtocolViolation);
    assert_eq!(p.server.send_response(1, b""), Err(server::SendError::NotEstablished));

    let mut s = ServerConnection::new(server_config(), now);
    s.handle_bytes(now, &frame(FrameKind::Request, 1, b"no hello"));
    assert_eq!(server_events(&mut s), vec![ServerEvent::Closed(violation)]);
    for kind in [FrameKind::Welcome, FrameKind::Response, FrameKind::Command, FrameKind::Refuse] {
        let mut p = Pair::connected(now);
        p.server.handle_bytes(now, &frame(kind, 1, b""));
        assert_eq!(server_events(&mut p.server), vec![ServerEvent::Closed(violation)], "{kind:?}");
    }
}

#[test]
fn garbage_and_oversized_frames_close_the_connection_with_a_clear_reason() {
    let now = at(0);
    let mut s = ServerConnection::new(server_config(), now);
    s.handle_bytes(now, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        server_events(&mut s),
        vec![ServerEvent::Closed(CloseReason::BadFrame(FrameError::BadMagic(*b"GE")))]
    );
    assert!(s.is_closed());
    let mut p = Pair::connected(now);
    let header = FrameHeader { kind: FrameKind::Request, id: 5, body_len: (1 << 20) + 1 }.encode();
    p.server.handle_bytes(now, &header);
    assert_eq!(
        server_events(&mut p.server),
        vec![ServerEvent::Closed(CloseReason::BadFrame(FrameError::TooLong {
            len: (1 << 20) + 1,
            max: 1 << 20
        }))]
    );
    // A client fed garbage by its server disconnects too.
    p = Pair::connected(now);
    p.client.handle_bytes(now, &[0xff; 40]);
    assert_eq!(
        client_events(&mut p.client),
        vec![ClientEvent::Disconnected(DisconnectReason::BadFrame(FrameError::BadMagic([0xff, 0xff])))]
    );
}

#[test]
fn a_server_that_never_hears_a_hello_closes_after_the_handshake_timeout() {
    let mut s = ServerConnection::new(server_config(), at(0));
    assert_eq!(s.poll_timeout(), Some(at(5000)));
    s.handle_timeout(at(4999));
    assert_eq!(s.poll_event(), None);
    s.handle_timeout(at(5000));
    assert_eq!(server_events(&mut s), vec![ServerEvent::Closed(CloseReason::HandshakeTimeout)]);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn commands_flow_to_the_client_and_acks_back() {
    let now = at(0);
    let mut p = Pair::connected(now);
    p.server.send_command(41, b"persist").unwrap();
    p.pump(now, true);
    assert_eq!(
        p.client_events.last(),
        Some(&ClientEvent::Command { id: 41, body: bytes::Bytes::from_static(b"persist") })
    );
    p.client.ack_command(now, 41, b"done");
    p.pump(now, true);
    assert_eq!(
        p.server_events.last(),
        Some(&ServerEvent::CommandAck { id: 41, body: bytes::Bytes::from_static(b"done") })
    );
}

#[test]
fn a_closed_client_fails_what_is_in_flight_and_never_redials() {
    let now = at(0);
    let mut p = Pair::connected(now);
    let id = p.client.send_request(now, b"x").unwrap();
    p.client_events.clear();
    p.client.close();
    assert_eq!(
        client_events(&mut p.client),
        vec![ClientEvent::RequestFailed { id, error: RequestError::Disconnected }]
    );
    assert_eq!(p.client.poll_timeout(), None);
    p.client.handle_timeout(at(1_000_000));
    assert_eq!(client_events(&mut p.client), vec![]);
}

#[test]
fn before_the_handshake_only_a_hello_sized_frame_is_accepted() {
    let mut s = ServerConnection::new(server_config(), at(0));
    let header = FrameHeader { kind: FrameKind::Hello, id: 0, body_len: Hello::MAX_LEN as u32 + 1 }.encode();
    s.handle_bytes(at(0), &header);
    let too_long = FrameError::TooLong { len: Hello::MAX_LEN as u32 + 1, max: Hello::MAX_LEN as u32 };
    assert_eq!(server_events(&mut s), vec![ServerEvent::Closed(CloseReason::BadFrame(too_long))]);
    // Once established, the configured maximum applies.
    let mut p = Pair::connected(at(0));
    p.client.send_request(at(0), &[7u8; 100_000]).unwrap();
    p.pump(at(0), true);
    assert!(
        matches!(p.client_events.last(), Some(ClientEvent::Response { body, .. }) if body.len() == 100_000)
    );
}

#[test]
fn a_peer_trickling_bytes_does_not_stretch_the_handshake_deadline() {
    let mut s = ServerConnection::new(server_config(), at(0));
    let hello = hello_frame(&hello());
    for (i, byte) in hello[..hello.len() - 1].iter().enumerate() {
        let now = at(i as u64 * 1000);
        s.handle_bytes(now, &[*byte]);
        s.handle_timeout(now);
        if s.is_closed() {
            break;
        }
    }
    assert_eq!(server_events(&mut s), vec![ServerEvent::Closed(CloseReason::HandshakeTimeout)]);
}

#[test]
fn a_welcome_for_a_version_never_offered_is_a_protocol_violation() {
    let mut c = ClientConnection::new(ClientConfig::new(hello()), at(0));
    let _ = client_events(&mut c);
    c.handle_connected(at(0));
    let mut body = [0u8; Welcome::LEN];
    Welcome { version: 9, incarnation: Incarnation(1), node_ttl: Duration::from_secs(1) }
        .encode(&mut body)
        .unwrap();
    c.handle_bytes(at(0), &frame(FrameKind::Welcome, 0, &body));
    assert_eq!(client_events(&mut c), vec![ClientEvent::Disconnected(DisconnectReason::ProtocolViolation)]);
}

/// What a socket would carry for `frames`, encoded the simple way.
fn flat(frames: &[(u64, Vec<Vec<u8>>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, parts) in frames {
        write_frame(&mut out, FrameKind::Request, *id, &parts.concat(), u32::MAX).unwrap();
    }
    out
}

/// Drains `t` the way a socket driver does: vectored writes of at most `iov` chunks,
/// each taking at most `take` bytes.
fn drain(t: &mut Transmit, iov: usize, take: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    while !t.is_empty() {
        let mut budget = take;
        let before = wire.len();
        for chunk in t.chunks(iov) {
            let n = chunk.len().min(budget);
            wire.extend_from_slice(&chunk[..n]);
            budget -= n;
            if budget == 0 {
                break;
            }
        }
        t.advance(wire.len() - before);
    }
    wire
}

proptest::proptest! {
    #[test]
    fn queued_frames_reach_the_socket_byte_for_byte_however_the_writes_split(
        frames in proptest::collection::vec(
            (0u64..1000, proptest::collection::vec(
                proptest::prop_oneof![0usize..64, 16_000usize..40_000].prop_map(|n| vec![0x5a; n]), 0..4)),
            1..6),
        split in 0usize..6,
        iov in 1usize..8,
        take in 1usize..70_000,
    ) {
        let mut frames = frames;
        for (i, (_, parts)) in frames.iter_mut().enumerate() {
            for (j, part) in parts.iter_mut().enumerate() {
                part.iter_mut().enumerate().for_each(|(k, b)| *b = (i * 31 + j * 7 + k) as u8);
            }
        }
        // Frames queued on two queues, the second appended to the first after part of
        // the first was written: what reaches the socket is still every frame, in order.
        let (mut first, mut second) = (Transmit::new(), Transmit::new());
        for (n, (id, parts)) in frames.iter().enumerate() {
            let parts: Vec<bytes::Bytes> = parts.iter().map(|p| bytes::Bytes::from(p.clone())).collect();
            let queue = if n < split { &mut first } else { &mut second };
            queue.push_frame(FrameKind::Request, *id, &parts, u32::MAX).unwrap();
        }
        let want = flat(&frames);
        let mut wire = Vec::new();
        let early = first.len() / 2;
        if early > 0 {
            let mut budget = early;
            let mut taken = 0;
            for chunk in first.chunks(iov) {
                let n = chunk.len().min(budget);
                wire.extend_from_slice(&chunk[..n]);
                taken += n;
                budget -= n;
                if budget == 0 { break; }
            }
            first.advance(taken);
        }
        first.append(&mut second);
        proptest::prop_assert!(second.is_empty());
        proptest::prop_assert_eq!(first.len(), want.len() - wire.len());
        wire.extend(drain(&mut first, iov, take));
        proptest::prop_assert_eq!(wire, want);
    }
}

#[test]
fn a_large_body_part_is_written_from_its_own_buffer() {
    let value = bytes::Bytes::from(vec![7u8; frame::CHAIN_AT_LEAST]);
    let mut t = Transmit::new();
    t.push_frame(FrameKind::Request, 1, &[bytes::Bytes::from_static(b"head"), value.clone()], u32::MAX)
        .unwrap();
    let chunks: Vec<&[u8]> = t.chunks(8).collect();
    assert_eq!(chunks.len(), 2, "header and small part packed, the value on its own");
    assert_eq!(chunks[0].len(), FRAME_HEADER_LEN + 4);
    assert!(core::ptr::eq(chunks[1], &value[..]), "the value is not copied");
}

#[test]
fn a_body_over_the_limit_queues_nothing() {
    let mut t = Transmit::new();
    let body = bytes::Bytes::from(vec![0u8; 101]);
    assert_eq!(
        t.push_frame(FrameKind::Request, 1, &[body], 100),
        Err(FrameError::TooLong { len: 101, max: 100 })
    );
    assert!(t.is_empty());
}

/// Reads `stream` into the deframer's receive buffer in pieces of `piece` bytes, as a
/// socket would, taking frames out after each read.
fn receive_in_place(d: &mut Deframer, stream: &[u8], piece: usize) -> Vec<Frame> {
    let mut got = Vec::new();
    for part in stream.chunks(piece) {
        let buf = d.receive_buffer();
        assert!(buf.capacity() - buf.len() >= part.len().min(64 << 10), "room for a read");
        buf.extend_from_slice(part);
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
    }
    got
}

proptest::proptest! {
    /// Pipelined frames read in place in any pieces, taken out a few at a time between
    /// reads (as a server that answers in bounded batches does, so the deframer's
    /// memory of the whole frames it walked is used and moved): every frame comes out
    /// whole and in order.
    #[test]
    fn frames_left_buffered_between_reads_come_out_whole_and_in_order(
        sizes in proptest::collection::vec(proptest::prop_oneof![0usize..40, 1_000usize..70_000], 1..40),
        piece in 1usize..100_000,
        takes in proptest::collection::vec(0usize..3, 1..50),
    ) {
        let bodies: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(i, n)| (0..*n).map(|j| (i * 13 + j) as u8).collect()).collect();
        let stream: Vec<u8> =
            bodies.iter().enumerate().flat_map(|(i, b)| frame(FrameKind::Request, i as u64, b)).collect();
        let mut d = Deframer::new(1 << 20);
        let mut got = Vec::new();
        for (n, part) in stream.chunks(piece).enumerate() {
            d.receive_buffer().extend_from_slice(part);
            for _ in 0..takes[n % takes.len()] {
                match d.next_frame().unwrap() {
                    Some(f) => got.push(f),
                    None => break,
                }
            }
        }
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
        proptest::prop_assert_eq!(got.len(), bodies.len());
        for (i, (f, body)) in got.iter().zip(&bodies).enumerate() {
            proptest::prop_assert_eq!(f.header.id, i as u64);
            proptest::prop_assert_eq!(&f.body[..], &body[..]);
        }
        proptest::prop_assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn frames_read_in_place_reassemble_from_any_split_of_the_stream() {
    let mut stream = frame(FrameKind::Request, 1, b"first");
    stream.extend(frame(FrameKind::Heartbeat, 0, b""));
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    stream.extend(frame(FrameKind::Response, 2, &big));
    stream.extend(frame(FrameKind::Request, 3, b"last"));
    for piece in [1, 7, 16, 17, 4096, 65_536, stream.len()] {
        let mut d = Deframer::new(1 << 20);
        let got = receive_in_place(&mut d, &stream, piece);
        assert_eq!(got.len(), 4, "pieces of {piece}");
        assert_eq!(&got[0].body[..], b"first");
        assert_eq!((got[1].header.kind, got[1].body.len()), (FrameKind::Heartbeat, 0));
        assert_eq!(&got[2].body[..], &big[..]);
        assert_eq!((got[3].header.id, &got[3].body[..]), (3, &b"last"[..]));
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn once_a_header_is_in_the_receive_buffer_has_room_for_its_whole_body() {
    let mut d = Deframer::new(64 << 20);
    let header = FrameHeader { kind: FrameKind::Request, id: 1, body_len: 1 << 20 }.encode();
    d.receive_buffer().extend_from_slice(&header);
    assert_eq!(d.next_frame(), Ok(None));
    let buf = d.receive_buffer();
    assert!(buf.capacity() - buf.len() >= 1 << 20, "one read can land the whole body");
}

#[test]
fn room_for_an_announced_body_grows_only_with_what_arrives() {
    let mut d = Deframer::new(64 << 20);
    let header = FrameHeader { kind: FrameKind::Request, id: 1, body_len: 60 << 20 }.encode();
    d.receive_buffer().extend_from_slice(&header);
    let room = d.receive_buffer().capacity();
    assert!(room <= 5 << 20, "a 60 MiB announcement got {room} bytes before any body arrived");
}

#[test]
fn an_oversized_length_read_in_place_fails_and_holds_nothing() {
    let mut d = Deframer::new(1024);
    let header = FrameHeader { kind: FrameKind::Request, id: 1, body_len: u32::MAX }.encode();
    d.receive_buffer().extend_from_slice(&header);
    assert!(d.receive_buffer().capacity() <= 128 << 10, "no room made for the announced body");
    assert_eq!(d.next_frame(), Err(FrameError::TooLong { len: u32::MAX, max: 1024 }));
    d.receive_buffer().extend_from_slice(&[0u8; 4096]);
    assert_eq!(d.next_frame(), Err(FrameError::TooLong { len: u32::MAX, max: 1024 }));
    assert_eq!(d.buffered(), 0, "nothing is held after the stream failed");
}

#[test]
fn a_large_body_read_in_place_is_handed_out_where_it_landed() {
    let mut d = Deframer::new(64 << 20);
    let body = vec![0x3cu8; 1 << 20];
    let header = FrameHeader { kind: FrameKind::Request, id: 1, body_len: body.len() as u32 }.encode();
    d.receive_buffer().extend_from_slice(&header);
    let buf = d.receive_buffer();
    let landed_at = buf.as_ptr() as usize + buf.len();
    buf.extend_from_slice(&body);
    let frame = d.next_frame().unwrap().expect("a whole frame");
    assert_eq!(&frame.body[..], &body[..]);
    assert_eq!(frame.body.as_ptr() as usize, landed_at, "the body is not copied");
}

/// An established server connection (the Hello taken and accepted).
fn established_server() -> ServerConnection {
    let mut s = ServerConnection::new(server_config(), at(0));
    s.handle_bytes(at(0), &hello_frame(&hello()));
    assert_eq!(server_events(&mut s), vec![ServerEvent::Hello(hello())]);
    s.accept(at(0));
    let _ = transmit_server(&mut s);
    s
}

/// A request whose body's rest the owner reads from the stream itself: wherever the
/// stream is cut, the diverted request's bytes are exactly its body, and the frames
/// around it come out whole, in order, as if nothing had been diverted.
#[test]
fn a_diverted_request_takes_exactly_its_body_and_the_stream_goes_on_around_it() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = frame(FrameKind::Request, 1, b"before");
    let large_at = stream.len();
    stream.extend(frame(FrameKind::Request, 2, &body));
    stream.extend(frame(FrameKind::Request, 3, b"after"));
    for first in [large_at + 1, large_at + FRAME_HEADER_LEN, large_at + FRAME_HEADER_LEN + 1, large_at + 700]
    {
        let mut s = established_server();
        s.handle_bytes(at(1), &stream[..first]);
        let mut events = server_events(&mut s);
        if first < large_at + FRAME_HEADER_LEN {
            // The header is not in yet: nothing to divert.
            assert_eq!(s.partial_request(), None);
            s.handle_bytes(at(1), &stream[first..large_at + FRAME_HEADER_LEN]);
        }
        let received = first.max(large_at + FRAME_HEADER_LEN) - large_at - FRAME_HEADER_LEN;
        assert_eq!(
            s.partial_request().map(|(id, got, len)| (id, got.len(), len)),
            Some((2, received, body.len()))
        );
        let diverted = s.divert_request().unwrap();
        assert_eq!((diverted.id, diverted.missing), (2, body.len() - received));
        // The owner reads the rest of the body from the stream, then gives the
        // connection what follows it.
        let rest_at = large_at + FRAME_HEADER_LEN + body.len();
        let mut taken = diverted.received.to_vec();
        taken.extend_from_slice(&stream[rest_at - diverted.missing..rest_at]);
        assert_eq!(taken, body);
        s.handle_bytes(at(2), &stream[rest_at..]);
        events.extend(server_events(&mut s));
        let requests: Vec<_> = events
            .iter()
            .map(|e| match e {
                ServerEvent::Request { id, body } => (*id, body.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(requests, vec![(1, b"before".to_vec()), (3, b"after".to_vec())], "cut at {first}");
    }
}

/// Only the frame at the front of the stream, a request, whose body is not all in,
/// can be diverted: not while an earlier event is untaken, not a whole frame, and not
/// before the connection is established.
#[test]
fn only_a_partial_request_at_the_front_is_diverted() {
    let large = frame(FrameKind::Request, 2, &[7u8; 3000]);
    let mut s = established_server();
    s.handle_bytes(at(1), &frame(FrameKind::Request, 1, b"first"));
    s.handle_bytes(at(1), &large[..100]);
    assert_eq!(s.partial_request(), None, "a frame before it is in the buffer");
    let first = s.poll_event();
    assert!(matches!(first, Some(ServerEvent::Request { id: 1, .. })), "{first:?}");
    assert!(s.partial_request().is_some());
    s.handle_bytes(at(1), &large[100..]);
    assert_eq!(s.partial_request(), None, "whole now");
    assert!(matches!(s.poll_event(), Some(ServerEvent::Request { id: 2, .. })));

    let mut s = established_server();
    s.handle_bytes(at(1), &frame(FrameKind::Heartbeat, 0, b"")[..FRAME_HEADER_LEN - 1]);
    assert_eq!(s.partial_request(), None, "no header yet");
    // Under the handshake's frame limit, so that only the state refuses it.
    let mut fresh = ServerConnection::new(server_config(), at(0));
    fresh.handle_bytes(at(0), &frame(FrameKind::Request, 2, &[7u8; 100])[..60]);
    assert_eq!(fresh.partial_request(), None, "not established");
    assert_eq!(fresh.divert_request(), None);
}

/// Reads that follow the server's receive limit, whatever sizes the socket gives,
/// always leave a large request partial at the front once its first
/// [`FRAME_PROBE`] bytes are in (frames ahead of it taken out first), so its owner can
/// divert the rest; small frames come out whole as before.
#[test]
fn reads_within_the_receive_limit_always_stop_a_large_request_at_its_probe() {
    let large = vec![5u8; 200_000];
    let mut stream = frame(FrameKind::Request, 1, &[1u8; 10_000]);
    stream.extend(frame(FrameKind::Request, 2, &large));
    stream.extend(frame(FrameKind::Request, 3, b"after"));
    for socket_gives in [1usize, 7, 4096, 20_000, 1 << 20] {
        let mut s = established_server();
        let (mut pos, mut ids, mut probed) = (0, Vec::new(), None);
        while pos < stream.len() {
            let n = s.receive_limit().min(socket_gives).min(stream.len() - pos);
            assert!(n > 0);
            s.handle_bytes(at(1), &stream[pos..pos + n]);
            pos += n;
            while let Some(event) = s.poll_event() {
                let ServerEvent::Request { id, body } = event else { panic!("{event:?}") };
                ids.push((id, body.len()));
            }
            if let Some((2, received, len)) = s.partial_request() {
                if received.len() + FRAME_HEADER_LEN >= FRAME_PROBE {
                    probed.get_or_insert((received.len(), len));
                }
            }
        }
        assert_eq!(ids, vec![(1, 10_000), (2, large.len()), (3, 5)], "reads of {socket_gives}");
        let (received, len) = probed.expect("the large request was seen partial past its probe");
        assert_eq!((received + FRAME_HEADER_LEN, len), (FRAME_PROBE, large.len()), "reads of {socket_gives}");
    }
}
