//! proxyd with several serving threads (`--worker-threads`), as a real process: every thread's
//! event loop accepts and serves connections, and the process stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;

use proxy_tests::{Conn, MockUpstream, Process, TestEnv, listener_address};

const THREADS: usize = 2;
const CONNECTIONS: usize = 32;
const REQUESTS: usize = 50;

/// Run time in ns of each of proxyd's threads, by name (`/proc/PID/task/*/schedstat`).
fn run_time_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut times = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // a thread that just ended
        };
        let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
        *times.entry(name.trim().to_owned()).or_default() += ns;
    }
    times
}

#[tokio::test(flavor = "multi_thread")]
async fn every_serving_thread_accepts_and_serves_and_the_process_stops_cleanly() {
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
    let before = run_time_by_thread(proxyd.pid());
    assert!(
        before.contains_key("proxyd-worker-1"),
        "a second serving thread: {before:?}"
    );

    // Connections opened all at once, each then busy with requests: the threads share them.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = Conn::open(http).await;
                for _ in 0..REQUESTS {
                    let answer = conn.get("app.example", "/").await;
                    assert_eq!(answer.status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }

    let after = run_time_by_thread(proxyd.pid());
    let spent = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let (main, worker) = (spent("proxyd"), spent("proxyd-worker-1"));
    println!("run time during the requests: main {main} ns, worker {worker} ns");
    // Without spreading, whichever thread woke first took the whole burst (the other ran next
    // to nothing in two runs of three); spread, each serves about half.
    assert!(
        main * 4 >= main + worker && worker * 4 >= main + worker,
        "each thread served a quarter of the work at least: main {main} ns, worker {worker} ns"
    );

    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
}
