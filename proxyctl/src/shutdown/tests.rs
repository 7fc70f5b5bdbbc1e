use std::time::Duration;

use serde_json::json;

use super::*;
use crate::fixtures;

#[test]
fn the_draining_line_names_the_node_and_the_deadline() {
    let drain = DrainReply {
        deadline_ms: 30_000,
    };
    assert_eq!(
        draining_line(&fixtures::local(), &drain),
        "draining: proxyd edge-1 stops accepting; in-flight requests have up to 30s to finish"
    );
    let odd = DrainReply { deadline_ms: 1_500 };
    assert!(draining_line(&fixtures::local(), &odd).contains("up to 1s 500ms to finish"));
}

#[test]
fn json_shape() {
    let drain = DrainReply {
        deadline_ms: 30_000,
    };
    assert_eq!(
        serde_json::to_value(to_json(&fixtures::local(), &drain, None)).unwrap(),
        json!({"node_id": "edge-1", "pid": 812, "deadline_ms": 30_000, "stopped": null})
    );
    let waited = serde_json::to_value(to_json(&fixtures::local(), &drain, Some(true))).unwrap();
    assert_eq!(waited["stopped"], true);
}

#[tokio::test]
async fn waiting_ends_when_the_socket_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    assert!(wait_until_stopped(&socket, Duration::from_secs(1)).await);

    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let started = std::time::Instant::now();
    assert!(
        !wait_until_stopped(&socket, Duration::from_millis(300)).await,
        "still listening"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    let path = socket.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(listener);
        let _ = std::fs::remove_file(path);
    });
    assert!(wait_until_stopped(&socket, Duration::from_secs(5)).await);
}
