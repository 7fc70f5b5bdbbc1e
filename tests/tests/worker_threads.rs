//! proxyd with several serving threads (`--worker-threads`), as a real process: the connections
//! are spread over every thread's event loop, those of the threads that do not accept included,
//! they are served there, and the process stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;

use proxy_tests::{Conn, MockUpstream, Process, TestEnv, eventually, listener_address};
use tokio::net::TcpStream;

/// More than the threads that accept on a listener (4): two serve only what they are handed.
const THREADS: usize = 6;
const CONNECTIONS: usize = 60;

/// The file descriptors registered in each of the process's epoll instances (one per serving
/// thread's runtime), by the epoll's descriptor: `/proc/PID/fdinfo` lists them as `tfd:`. An
/// instance open under two descriptors (tokio keeps a duplicate) is counted once.
fn registered_by_epoll(pid: u32) -> BTreeMap<String, usize> {
    let mut instances = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let entry = entry.unwrap();
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue; // closed meanwhile
        };
        let registered: Vec<&str> = info.lines().filter(|l| l.starts_with("tfd:")).collect();
        if registered.is_empty() {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        // Duplicates list the same registrations: the lowest descriptor names the instance.
        let key = registered.join("\n");
        instances
            .entry(key)
            .and_modify(|(first, _): &mut (String, usize)| {
                if fd.parse::<u32>().ok() < first.parse::<u32>().ok() {
                    first.clone_from(&fd);
                }
            })
            .or_insert((fd, registered.len()));
    }
    instances.into_values().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_spread_over_every_serving_thread_and_served_there() {
    let upstream = MockUpstream::start("a").await;
    let env = TestEnv::paths_only();
    env.write_config(&format!(
        "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{}\"]\n",
        upstream.url()
    ));
    let config = env.config_path.to_str().unwrap().to_owned();
    let socket = env.socket.to_str().unwrap().to_owned();
    let _controld = Process::start("controld", &["--config", &config]);
    let threads = THREADS.to_string();
    let mut proxyd = Process::start(
        "proxyd",
        &[
            "--control-socket",
            &socket,
            "--admin-socket",
            "",
            "--worker-threads",
            &threads,
        ],
    );
    let status = env.wait_for_applied(1).await;
    let http = listener_address(&status, "http");
    let pid = proxyd.pid();
    let before = registered_by_epoll(pid);
    assert!(
        before.len() >= THREADS,
        "an epoll per serving thread: {before:?}"
    );

    // Opened all at once, before any request: whichever thread wakes first would take them all.
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(TcpStream::connect(http).await.unwrap());
    }
    let added = eventually("every connection registered with a thread's epoll", || {
        let after = registered_by_epoll(pid);
        let added: Vec<usize> = before
            .iter()
            .map(|(fd, n)| after.get(fd).copied().unwrap_or(0).saturating_sub(*n))
            .collect();
        let all: usize = added.iter().sum();
        std::future::ready((all >= CONNECTIONS).then_some(added))
    })
    .await;
    // The epolls that hold connections: one per serving thread.
    let added: Vec<usize> = added.into_iter().filter(|n| *n > 0).collect();
    let share = CONNECTIONS / THREADS;
    assert!(
        added.len() == THREADS && added.iter().all(|n| n.abs_diff(share) <= 3),
        "each of {THREADS} threads holds about {share} of {CONNECTIONS} connections: {added:?}"
    );

    // Each of them, whichever thread holds it, is served.
    let mut served = Vec::new();
    for stream in held {
        served.push(tokio::spawn(async move {
            let mut conn = Conn::over(stream).await;
            conn.get("app.example", "/").await.status
        }));
    }
    for answer in served {
        assert_eq!(answer.await.unwrap(), 200);
    }

    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
}
