use serde_json::json;

use super::*;
use crate::fixtures;

#[test]
fn ready_is_healthy_and_says_which_version() {
    let dp = fixtures::local();
    assert_eq!(render(&dp), "ok: serving version 4\n");
    assert_eq!(exit(&dp), Exit::Ok);
    assert_eq!(
        serde_json::to_value(to_json(&dp)).unwrap(),
        json!({"healthy": true, "applied_version": 4, "control_plane_connected": true,
               "reason": null})
    );
}

#[test]
fn cut_off_from_controld_is_still_healthy_but_said() {
    let mut dp = fixtures::local();
    dp.control_plane_connected = false;
    dp.from_saved_snapshot = true;
    assert_eq!(
        render(&dp),
        "ok: serving version 4 (controld not connected; from a saved snapshot)\n"
    );
    assert_eq!(exit(&dp), Exit::Ok);
    let value = serde_json::to_value(to_json(&dp)).unwrap();
    assert_eq!(value["healthy"], true);
    assert_eq!(value["control_plane_connected"], false);
}

#[test]
fn not_ready_says_why() {
    let mut dp = fixtures::local();
    dp.ready = false;
    assert_eq!(
        render(&dp),
        "not ready: version 4 applied, listeners not bound yet\n"
    );
    assert_eq!(exit(&dp), Exit::Failed);

    dp.applied_version = 0;
    assert_eq!(render(&dp), "not ready: no snapshot applied yet\n");
    dp.control_plane_connected = false;
    assert_eq!(
        render(&dp),
        "not ready: no snapshot applied yet, and controld is not connected\n"
    );
    assert_eq!(
        serde_json::to_value(to_json(&dp)).unwrap(),
        json!({"healthy": false, "applied_version": 0, "control_plane_connected": false,
               "reason": "not ready: no snapshot applied yet, and controld is not connected"})
    );
}

#[test]
fn draining_is_unhealthy_even_while_ready() {
    let mut dp = fixtures::local();
    dp.draining = true;
    assert_eq!(render(&dp), "draining: proxyd edge-1 is shutting down\n");
    assert_eq!(exit(&dp), Exit::Failed);
    assert_eq!(
        serde_json::to_value(to_json(&dp)).unwrap()["healthy"],
        false
    );
}
