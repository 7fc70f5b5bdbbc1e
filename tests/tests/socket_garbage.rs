//! Garbage on both gRPC Unix sockets (controld's control socket, proxyd's admin socket): random
//! bytes, a partial HTTP/2 preface, truncated and oversized HTTP/2 frames, gRPC length prefixes
//! that lie, and absurd but valid protobuf. After each: both daemons still answer (Status on
//! both sockets, `proxyctl status`), and the process's memory stayed bounded.
//!
//! Needs `cargo build --workspace --bins` first (for proxyctl). Both daemons run in this
//! process, so its resident set covers them; the tests take turns ([`SERIAL`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;
use std::time::Instant;

use proto::v1 as pb;
use proxy_tests::grpc_raw::{H2, Subscriber, grpc_frame, message_frame};
use proxy_tests::h2raw::{self, RawConn, code, kind};
use proxy_tests::{DEADLINE, TestEnv, eventually, output_text, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::Code;

/// One test at a time: memory is measured for the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How much the process may grow during one attack: room for the messages themselves (a few
/// MiB each, decoded) and allocator noise, far below a 4 GiB allocation or growth per stream.
const RSS_GROWTH_LIMIT_KIB: u64 = 128 * 1024;

/// The limit both daemons set on a decoded request.
const MAX_MESSAGE: usize = proto::MAX_REQUEST_BYTES;

const SITE: &str = "[[sites]]\nhostnames = [\"a.example\"]\nupstreams = [\"http://127.0.0.1:9\"]\n";

/// A socket under attack and a harmless unary method on it.
struct Target {
    daemon: &'static str,
    socket: std::path::PathBuf,
    /// A method that changes nothing whatever its request says.
    unary: &'static str,
}

fn targets(env: &TestEnv) -> [Target; 2] {
    [
        Target {
            daemon: "controld",
            socket: env.socket.clone(),
            unary: "/proxy.v1.Admin/Validate",
        },
        Target {
            daemon: "proxyd",
            socket: env.proxyd_socket(),
            unary: "/proxy.v1.DataPlane/Status",
        },
    ]
}

/// Both daemons answer Status on their sockets and `proxyctl status` succeeds; memory grew by
/// less than [`RSS_GROWTH_LIMIT_KIB`] since `rss_before`.
async fn assert_both_answer(env: &TestEnv, rss_before: u64, attack: &str) {
    assert_both_answer_within(env, rss_before, attack, RSS_GROWTH_LIMIT_KIB).await;
}

async fn assert_both_answer_within(env: &TestEnv, rss_before: u64, attack: &str, limit_kib: u64) {
    assert_daemons_answer_within(env, rss_before, attack, limit_kib).await;
    let out = env.proxyctl(&["status"]).await;
    assert!(
        out.status.success(),
        "{attack}: proxyctl status: {}",
        output_text(&out)
    );
}

/// Like [`assert_both_answer`], without proxyctl.
async fn assert_daemons_answer(env: &TestEnv, rss_before: u64, attack: &str) {
    assert_daemons_answer_within(env, rss_before, attack, RSS_GROWTH_LIMIT_KIB).await;
}

async fn assert_daemons_answer_within(
    env: &TestEnv,
    rss_before: u64,
    attack: &str,
    limit_kib: u64,
) {
    let control = tokio::time::timeout(DEADLINE, env.status())
        .await
        .unwrap_or_else(|_| panic!("{attack}: controld did not answer Status"));
    assert!(control.control_plane.is_some(), "{attack}: {control:?}");
    let channel = proto::uds::connect(&env.proxyd_socket(), DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{attack}: proxyd's admin socket: {e}"));
    let local = tokio::time::timeout(
        DEADLINE,
        pb::data_plane_client::DataPlaneClient::new(channel).status(pb::DataPlaneStatusRequest {}),
    )
    .await
    .unwrap_or_else(|_| panic!("{attack}: proxyd did not answer Status"))
    .unwrap_or_else(|e| panic!("{attack}: proxyd's Status failed: {e}"));
    assert_eq!(local.get_ref().applied_version, 1, "{attack}");
    let after = rss_kib();
    eprintln!("{attack}: RSS {rss_before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(rss_before) < limit_kib,
        "{attack}: the process grew from {rss_before} KiB to {after} KiB"
    );
}

/// Writes `bytes`, then reads until the server closes the connection; panics after
/// [`DEADLINE`]. Returns what the server wrote.
async fn closed_after(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    // The server may close before taking everything: a failed write is an answer too.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{}: the connection stayed open",
        socket.display()
    );
    out
}

/// A protobuf field header (tag): field number and wire type.
fn tag(field: u32, wire_type: u32) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(u64::from(field << 3 | wire_type), &mut out);
    out
}

/// `depth` groups of unknown field 15, each inside the one before: valid protobuf, nested far
/// past any decoder's recursion limit.
fn nested_groups(depth: usize) -> Vec<u8> {
    let (start, end) = (tag(15, 3), tag(15, 4));
    let mut out = start.repeat(depth);
    out.extend(end.repeat(depth));
    out
}

/// `count` unknown varint fields (field 15, value 0).
fn repeated_unknown(count: usize) -> Vec<u8> {
    let mut one = tag(15, 0);
    one.push(0);
    one.repeat(count)
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_garbage_is_refused_and_both_daemons_keep_answering() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start(SITE).await;
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for target in targets(&env) {
        let socket = target.socket.as_path();
        let name = target.daemon;

        let rss = rss_kib();
        let noise: Vec<u8> = std::iter::repeat_with(|| rng.u8(..))
            .take(64 * 1024)
            .collect();
        closed_after(socket, &noise).await;
        assert_both_answer(&env, rss, &format!("{name}: 64 KiB of random bytes")).await;

        // A partial preface, held open on many connections at once.
        let rss = rss_kib();
        let mut held = Vec::new();
        for _ in 0..64 {
            let mut stream = UnixStream::connect(socket).await.unwrap();
            stream.write_all(&h2raw::PREFACE[..10]).await.unwrap();
            held.push(stream);
        }
        assert_both_answer(&env, rss, &format!("{name}: 64 partial prefaces held")).await;
        drop(held);

        // A frame whose header announces 16 KiB, then 5 bytes, then silence.
        let rss = rss_kib();
        let (mut conn, _) = RawConn::open_unix(socket, &[]).await;
        let mut truncated = h2raw::headers(1, 0, &[0u8; 16 * 1024]);
        truncated.truncate(9 + 5);
        conn.send(&truncated).await.unwrap();
        assert_both_answer(
            &env,
            rss,
            &format!("{name}: a truncated HEADERS frame held"),
        )
        .await;
        drop(conn);

        // A frame far over the 16 KiB maximum frame size.
        let (mut conn, _) = RawConn::open_unix(socket, &[]).await;
        let mut oversized = vec![0xff, 0xff, 0xff, kind::DATA, 0, 0, 0, 0, 1];
        oversized.extend_from_slice(&[0u8; 1024]);
        let _ = conn.send(&oversized).await;
        let go_away = conn.wait_for_go_away().await;
        assert_eq!(
            go_away.code, 0x6,
            "{name}: FRAME_SIZE_ERROR, got {go_away:?}"
        );
        assert_both_answer(&env, rss_kib(), &format!("{name}: an oversized frame")).await;

        // A header list of 1 MiB in CONTINUATION frames (the limit is 16 KiB).
        let rss = rss_kib();
        let (mut conn, _) = RawConn::open_unix(socket, &[]).await;
        let mut block = h2raw::request("POST", "localhost", target.unary);
        h2raw::literal(&mut block, "content-type", b"application/grpc");
        h2raw::literal_head(&mut block, "x-padding", 1 << 20);
        conn.send(&h2raw::headers(1, 0, &block)).await.unwrap();
        let chunk = vec![b'a'; 16 * 1024];
        for i in 0..64 {
            let flags = if i == 63 { h2raw::flag::END_HEADERS } else { 0 };
            if conn
                .send(&h2raw::continuation(1, flags, &chunk))
                .await
                .is_err()
            {
                break;
            }
        }
        // Refused one way or another: a reset, an answer, a GOAWAY or a closed connection.
        let refused = loop {
            match conn.recv().await {
                Some(f) if f.kind == kind::GOAWAY || f.reset_code().is_some() => break Some(f),
                Some(f) if f.kind == kind::HEADERS && f.stream == 1 => break Some(f),
                Some(_) => {}
                None => break None,
            }
        };
        eprintln!("{name}: a 1 MiB header list got {refused:?}");
        if let Some(reset) = refused.as_ref().and_then(h2raw::Frame::reset_code) {
            assert_ne!(reset, code::NO_ERROR, "{name}");
        }
        assert_both_answer(&env, rss, &format!("{name}: a 1 MiB header list")).await;
    }
    eprintln!("HTTP/2 garbage took {:?}", started.elapsed());
    env.stop().await;
}

/// A caller that stops inside the HTTP/2 handshake is cut off at the handshake deadline, on
/// both sockets: before, the connection stayed open for as long as the caller liked.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_stopping_inside_the_handshake_is_cut_off() {
    let env = TestEnv::start(SITE).await;
    let limit = proto::uds::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(3);
    let mut held = Vec::new();
    for target in targets(&env) {
        // Inside the preface; the whole preface but no SETTINGS frame; nothing at all.
        for prefix in [&h2raw::PREFACE[..10], h2raw::PREFACE, &[]] {
            let mut stream = UnixStream::connect(&target.socket).await.unwrap();
            stream.write_all(prefix).await.unwrap();
            held.push((target.daemon, prefix.len(), stream));
        }
    }
    let started = Instant::now();
    for (daemon, sent, mut stream) in held {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout_at((started + limit).into(), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{daemon}: a caller that sent {sent} bytes of the handshake still connected after {limit:?}"
        );
    }
    assert_daemons_answer(&env, rss_kib(), "handshakes cut off").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_frames_that_lie_get_an_error_status() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start(SITE).await;
    let started = Instant::now();
    for target in targets(&env) {
        let name = target.daemon;
        let mut h2 = H2::connect(&target.socket).await;
        let cases: [(&str, Vec<u8>, bool, Code); 6] = [
            // A 4 GiB message announced, 1 KiB sent, the request left open: refused from the
            // prefix alone, nothing buffered.
            (
                "a 4 GiB length prefix",
                grpc_frame(0, u32::MAX, &[0; 1024]),
                false,
                Code::OutOfRange,
            ),
            (
                "one byte over the message limit",
                grpc_frame(0, u32::try_from(MAX_MESSAGE + 1).unwrap(), &[0; 16]),
                false,
                Code::OutOfRange,
            ),
            // The request ends inside the message, or inside the prefix.
            (
                "a truncated message",
                grpc_frame(0, 256, &[0; 10]),
                true,
                Code::Internal,
            ),
            ("a truncated prefix", vec![0, 0, 0], true, Code::Internal),
            // Compressed without a grpc-encoding, and a flag that means nothing.
            (
                "a compressed message",
                grpc_frame(1, 3, &[1, 2, 3]),
                true,
                Code::Internal,
            ),
            (
                "compression flag 7",
                grpc_frame(7, 3, &[1, 2, 3]),
                true,
                Code::Internal,
            ),
        ];
        for (what, body, end, code) in cases {
            let rss = rss_kib();
            let answer = h2.call(target.unary, body, end).await;
            eprintln!(
                "{name}: {what}: grpc-status {:?} {}",
                answer.grpc_status, answer.grpc_message
            );
            assert!(
                answer.grpc_status == Some(code as i32),
                "{name}: {what}: want grpc-status {code:?}, got {answer:?}"
            );
            assert_both_answer(&env, rss, &format!("{name}: {what}")).await;
        }
        // Two messages on a unary call.
        let mut two = message_frame(&pb::DataPlaneStatusRequest {});
        two.extend(message_frame(&pb::DataPlaneStatusRequest {}));
        let answer = h2.call(target.unary, two, true).await;
        eprintln!("{name}: two messages on a unary call: {answer:?}");
        assert_both_answer(&env, rss_kib(), &format!("{name}: two messages, unary")).await;

        // Many calls opened and never finished on one connection (neither server limits
        // concurrent streams).
        let rss = rss_kib();
        let mut open = Vec::new();
        for _ in 0..1000 {
            open.push(
                h2.start(target.unary, grpc_frame(0, 64, &[0; 8]), false)
                    .await,
            );
        }
        assert_both_answer(&env, rss, &format!("{name}: 1000 unfinished calls")).await;
        drop(open);
    }
    eprintln!("lying gRPC frames took {:?}", started.elapsed());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absurd_but_valid_protobuf_is_answered() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start(SITE).await;
    let started = Instant::now();
    let mut controld = H2::connect(&env.socket).await;
    let validate = "/proxy.v1.Admin/Validate";

    // A config of 3 MiB of NULs: refused with a few located diagnostics.
    let rss = rss_kib();
    let request = pb::ValidateRequest {
        config_text: "\0".repeat(3 << 20),
        file_name: String::new(),
    };
    let answer = controld.call(validate, message_frame(&request), true).await;
    assert_eq!(answer.grpc_status, Some(0), "{answer:?}");
    let reply: pb::ValidateReply = answer.message();
    assert!(!reply.valid && !reply.diagnostics.is_empty(), "{reply:?}");
    assert!(
        reply.diagnostics.len() <= 101,
        "{}",
        reply.diagnostics.len()
    );
    assert_both_answer(&env, rss, "controld: Validate of 3 MiB of NULs").await;

    // 100 000 unknown keys (and no listener): the first 100 and a count of the rest.
    let rss = rss_kib();
    let text: String = (0..100_000).map(|i| format!("k{i} = 1\n")).collect();
    let request = pb::ValidateRequest {
        config_text: text,
        file_name: "many.toml".into(),
    };
    let answer = controld.call(validate, message_frame(&request), true).await;
    let reply: pb::ValidateReply = answer.message();
    assert_eq!(reply.diagnostics.len(), 101);
    let last = reply.diagnostics.last().unwrap();
    assert!(
        last.message.starts_with("99901 more problems not shown"),
        "{last:?}"
    );
    assert_both_answer(&env, rss, "controld: Validate of 100 000 unknown keys").await;

    for target in targets(&env) {
        let name = target.daemon;
        let mut h2 = H2::connect(&target.socket).await;
        // Unknown fields, valid protobuf: skipped, except groups nested past prost's recursion
        // limit (100), which are refused.
        let cases: [(&str, Vec<u8>, Code); 3] = [
            (
                "groups nested 1 000 000 deep",
                nested_groups(1_000_000),
                Code::Internal,
            ),
            (
                "a million unknown fields",
                repeated_unknown(1_000_000),
                Code::Ok,
            ),
            (
                "a 3 MiB unknown field of NULs",
                {
                    let mut field = tag(15, 2);
                    prost::encoding::encode_varint(3 << 20, &mut field);
                    field.extend(std::iter::repeat_n(0u8, 3 << 20));
                    field
                },
                Code::Ok,
            ),
        ];
        for (what, payload, code) in cases {
            assert!(payload.len() <= MAX_MESSAGE, "{what}");
            let rss = rss_kib();
            let frame = grpc_frame(0, u32::try_from(payload.len()).unwrap(), &payload);
            let answer = h2.call(target.unary, frame, true).await;
            eprintln!(
                "{name}: {what}: grpc-status {:?} {}",
                answer.grpc_status, answer.grpc_message
            );
            assert!(
                answer.grpc_status == Some(code as i32),
                "{name}: {what}: want grpc-status {code:?}, got {answer:?}"
            );
            assert_both_answer(&env, rss, &format!("{name}: {what}")).await;
        }
    }

    // A data plane that says hello with a 1 MB node id is refused: controld keeps and shows
    // what a data plane says of itself, so it is bounded.
    let rss = rss_kib();
    let hello = pb::DataPlaneMessage {
        msg: Some(pb::data_plane_message::Msg::Hello(pb::Hello {
            node_id: "n".repeat(1_000_000),
            pid: 1,
            build_version: "garbage".into(),
            current_version: 0,
            current_content_hash: String::new(),
            answers_challenges: false,
        })),
    };
    let mut connection = H2::connect(&env.socket).await;
    let answer = connection
        .call("/proxy.v1.Control/Subscribe", message_frame(&hello), false)
        .await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::InvalidArgument as i32),
        "{answer:?}"
    );
    assert!(answer.grpc_message.contains("256"), "{answer:?}");
    drop(connection);
    assert_daemons_answer(&env, rss, "controld: Hello with a 1 MB node id").await;

    // An Ack listing a million (empty) listeners: 2 MB, within the message limit. Written by
    // hand, so that the test itself holds no million structs.
    let rss = rss_kib();
    let mut plane = Subscriber::hello(&env, "a-million-listeners").await;
    let mut ack = vec![0x08, 0x01]; // version = 1
    ack.extend(
        tag(2, 2)
            .into_iter()
            .chain([0])
            .collect::<Vec<u8>>()
            .repeat(1_000_000),
    );
    let mut message = tag(2, 2); // DataPlaneMessage.ack
    prost::encoding::encode_varint(ack.len() as u64, &mut message);
    message.extend(ack);
    plane.send_raw(message);
    // Kept short: a data plane has a handful of listeners.
    eventually(
        "the Ack of a million listeners recorded, cut to 64",
        || async {
            let status = env.status().await;
            status
                .data_planes
                .iter()
                .any(|p| p.node_id == "a-million-listeners" && p.listeners.len() == 64)
                .then_some(())
        },
    )
    .await;
    assert_both_answer(&env, rss, "controld: an Ack of a million listeners").await;
    plane.gone(&env).await;
    eprintln!("absurd protobuf took {:?}", started.elapsed());
    env.stop().await;
}

/// A data plane that stops reading its Subscribe stream in the middle of a snapshot does not hold
/// up controld's exit: open calls get a short grace, then are dropped. (hyper's graceful shutdown
/// waits for every stream to end, and this one cannot: its data waits on a window that never
/// opens.)
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stops_reading_does_not_hold_up_shutdown() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::start(SITE).await;
    let stuck = Subscriber::hello_with_window(&env, "stuck", 64).await;
    let started = Instant::now();
    // Panics after DEADLINE if controld does not stop.
    env.stop_controld().await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(8),
        "controld took {took:?} to stop"
    );
    drop(stuck);
    env.stop().await;
}

/// proxyctl status while a data plane with the longest node id controld takes is subscribed,
/// and one that sent a long refusal: the table stays a table.
#[tokio::test(flavor = "multi_thread")]
async fn proxyctl_status_shows_a_data_plane_with_the_longest_node_id() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start(SITE).await;
    let node_id = "n".repeat(256);
    let plane = Subscriber::hello(&env, &node_id).await;
    let out = env.proxyctl(&["status"]).await;
    let text = proxy_tests::output_text(&out);
    // Degraded (exit 1: this hand-made data plane never ACKs), but a table, not a panic.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&node_id), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    plane.gone(&env).await;
    env.stop().await;
}

/// Issue 20 §4: every GetConfig and History call cloned and encoded the whole snapshot, and a
/// caller whose HTTP/2 window never opens kept that copy for as long as it liked: a few dozen
/// such calls held hundreds of MiB. Now each version's reply is encoded once and every call
/// sends a reference to the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn readers_that_never_open_their_window_share_one_reply() {
    let _serial = SERIAL.lock().await;
    // A config whose GetConfig reply is several MiB (its text and its snapshot).
    let sites = many_sites();
    let env = TestEnv::start(&sites).await;
    let get_config = message_frame(&pb::GetConfigRequest {});
    // One whole call first: the reply as a caller gets it, and its size.
    let answer = H2::connect(&env.socket)
        .await
        .call("/proxy.v1.Admin/GetConfig", get_config.clone(), true)
        .await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::Ok as i32),
        "{:?}",
        answer.grpc_message
    );
    let reply_kib = answer.body.len() as u64 / 1024;
    assert!(reply_kib > 4 * 1024, "the reply is {reply_kib} KiB");
    let reply = <pb::GetConfigReply as prost::Message>::decode(&answer.body[5..]).unwrap();
    assert_eq!(reply.snapshot.unwrap().dynamic.unwrap().sites.len(), 30_000);
    drop(answer);

    let rss = rss_kib();
    let mut stuck = Vec::new();
    for _ in 0..30 {
        let mut connection = H2::connect_with_window(&env.socket, 0).await;
        let (response, send) = connection
            .start("/proxy.v1.Admin/GetConfig", get_config.clone(), true)
            .await;
        let response = tokio::time::timeout(DEADLINE, response)
            .await
            .expect("the headers need no window")
            .unwrap();
        assert_eq!(response.status(), 200);
        stuck.push((connection, response, send));
    }
    // 30 copies would be 30 times the reply; a shared one is none.
    assert_daemons_answer_within(
        &env,
        rss,
        "30 GetConfig readers that never read",
        reply_kib * 5,
    )
    .await;
    drop(stuck);
    env.stop().await;
}

/// The review of issue 20 found the shared reply's build owned by the caller: a GetConfig caller
/// that hung up dropped the build half-way, so callers cancelling every few milliseconds started
/// one whole build each (10 GiB in 3 s). The build is now a task of its own: callers that come
/// and go wait for that one build and take its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn get_config_callers_that_hang_up_share_one_build() {
    let _serial = SERIAL.lock().await;
    let sites = many_sites();
    let env = TestEnv::start(&sites).await;
    let get_config = message_frame(&pb::GetConfigRequest {});
    let (rss, cpu) = (rss_kib(), cpu_ticks());
    let stop = Instant::now() + std::time::Duration::from_secs(3);
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let (socket, body) = (env.socket.clone(), get_config.clone());
        attackers.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let mut connection = H2::connect(&socket).await;
            while Instant::now() < stop {
                let (response, send) = connection
                    .start("/proxy.v1.Admin/GetConfig", body.clone(), true)
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                // RST_STREAM(CANCEL): the caller hangs up.
                drop((response, send));
                calls += 1;
            }
            calls
        }));
    }
    let mut peak = rss;
    while Instant::now() < stop + std::time::Duration::from_secs(5) {
        peak = peak.max(rss_kib());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut calls = 0;
    for attacker in attackers {
        calls += attacker.await.unwrap();
    }
    let cpu_s = (cpu_ticks() - cpu) as f64 / 100.0;
    eprintln!(
        "{calls} cancelled GetConfig calls: RSS {rss} KiB -> peak {peak} KiB; {cpu_s:.1} s CPU"
    );
    assert!(calls > 100, "{calls} calls");
    assert!(
        peak.saturating_sub(rss) < 200 * 1024,
        "peak grew by {} MiB",
        (peak - rss) / 1024
    );
    assert!(cpu_s < 8.0, "{cpu_s} s of CPU for one version's reply");
    // And the reply is there for the next caller.
    let answer = H2::connect(&env.socket)
        .await
        .call("/proxy.v1.Admin/GetConfig", get_config, true)
        .await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::Ok as i32),
        "{:?}",
        answer.grpc_message
    );
    env.stop().await;
}

/// This process's user and system CPU time, in clock ticks (100 per second).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// 30,000 sites: a config whose GetConfig reply is several MiB (its text and its snapshot).
fn many_sites() -> String {
    (0..30_000)
        .map(|i| {
            format!(
                "[[sites]]\nhostnames = [\"s{i}.example\"]\nupstreams = [\"http://127.0.0.1:9\"]\n"
            )
        })
        .collect()
}
