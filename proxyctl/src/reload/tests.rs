use proto::v1::{ConfigDiff, DataPlaneResult, Diagnostic, ReloadOutcome};

use super::*;
use crate::fixtures::{self, data_plane, nacked};

#[test]
fn diagnostic_lines_leave_out_what_is_unknown() {
    let full = Diagnostic {
        key_path: "rate_limit.burst".into(),
        file: "/etc/p.toml".into(),
        line: 3,
        column: 9,
        message: "must be > 0".into(),
    };
    assert_eq!(
        diagnostic_line(&full, "/other"),
        "/etc/p.toml:3:9: rate_limit.burst: must be > 0"
    );
    let no_position = Diagnostic {
        line: 0,
        column: 0,
        ..full.clone()
    };
    assert_eq!(
        diagnostic_line(&no_position, "/other"),
        "/etc/p.toml: rate_limit.burst: must be > 0"
    );
    let syntax = Diagnostic {
        key_path: String::new(),
        file: String::new(),
        ..full
    };
    assert_eq!(
        diagnostic_line(&syntax, "/etc/fallback.toml"),
        "/etc/fallback.toml:3:9: must be > 0"
    );
}

#[test]
fn data_plane_lines() {
    let acked = data_plane("node-a", 7, DataPlaneResult::Acked, 4);
    assert_eq!(
        data_plane_line(&acked, 4),
        "  node-a (pid 7): applied version 4"
    );
    let refused = nacked("node-b", 8, "cannot bind\n0.0.0.0:443", 3);
    assert_eq!(
        data_plane_line(&refused, 4),
        "  node-b (pid 8): refused: cannot bind; 0.0.0.0:443; still serving version 3"
    );
    let late = data_plane("node-c", 9, DataPlaneResult::TimedOut, 3);
    assert_eq!(
        data_plane_line(&late, 4),
        "  node-c (pid 9): timed out; serving version 3"
    );
    let fresh = data_plane("node-c", 9, DataPlaneResult::TimedOut, 0);
    assert_eq!(
        data_plane_line(&fresh, 4),
        "  node-c (pid 9): timed out; serving no version yet"
    );
    let gone = data_plane("node-d", 10, DataPlaneResult::Disconnected, 3);
    assert_eq!(data_plane_line(&gone, 4), "  node-d (pid 10): disconnected");
    let future = DataPlaneOutcome { result: 99, ..gone };
    assert_eq!(
        data_plane_line(&future, 4),
        "  node-d (pid 10): result unknown to this proxyctl (99)"
    );
}

#[test]
fn applied_everywhere() {
    let mut reply = fixtures::applied();
    reply.warnings = vec!["logging.format changed; restart proxyd to apply it".into()];
    assert_eq!(
        render(&reply, Operation::Reload),
        "reloaded: version 3 → 4 (1 site added: a.example; 1 site modified: b.example; \
         rate_limit.burst 200 → 300) in 12 ms\n  node-a (pid 4712): applied version 4\n\
         warning: logging.format changed; restart proxyd to apply it\n"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn applied_shows_what_changed_inside_each_site_before_the_warnings() {
    let mut reply = fixtures::applied();
    reply.diff = Some(fixtures::detailed_diff());
    reply.warnings = vec!["logging.format changed".into()];
    assert_eq!(
        render(&reply, Operation::Reload),
        "reloaded: version 3 → 4 (1 site added: a.example; 1 site modified: b.example; \
         rate_limit.burst 200 → 300) in 12 ms\n  node-a (pid 4712): applied version 4\n\
         ~ site b.example\n\
         \x20   upstreams: + http://10.0.0.3:80  - http://10.0.0.1:80\n\
         \x20   routes[\"/api\"].upstreams: + http://b:80  - http://a:80\n\
         \x20   rate_limit: 10/s burst 5 → 20/s burst 10\n\
         \x20   tls.certificate: files sha256 3F:A1:0C:77…9A:01 expires 2027-01-01 → \
         files sha256 77:00:12:AB…00:01 expires 2027-06-01\n\
         warning: logging.format changed\n"
    );
    // A rollback's reply reads the same way.
    let text = render(&reply, Operation::Rollback { restores: Some(2) });
    assert!(text.contains("\n~ site b.example\n"), "{text}");
}

#[test]
fn dry_run_shows_what_would_change_inside_each_site() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::DryRun as i32,
        diff: Some(fixtures::detailed_diff()),
        data_planes: Vec::new(),
        ..fixtures::applied()
    };
    let text = render(&reply, Operation::Reload);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("dry run: version 3 would become 4 ("),
        "{text}"
    );
    assert_eq!(lines[1], "~ site b.example");
    assert_eq!(
        lines[2],
        "    upstreams: + http://10.0.0.3:80  - http://10.0.0.1:80"
    );
    assert_eq!(lines.len(), 6, "{text}");
}

#[test]
fn rejected_and_unchanged_replies_show_no_site_details() {
    for outcome in [ReloadOutcome::Rejected, ReloadOutcome::Unchanged] {
        let reply = ReloadReply {
            outcome: outcome as i32,
            diff: Some(fixtures::detailed_diff()),
            ..fixtures::applied()
        };
        let text = render(&reply, Operation::Reload);
        assert!(!text.contains("~ site"), "{text}");
    }
}

#[test]
fn applied_without_data_planes_is_ok_with_a_note() {
    let mut reply = fixtures::applied();
    reply.data_planes.clear();
    let text = render(&reply, Operation::Reload);
    assert!(text.starts_with("reloaded: version 3 → 4 ("), "{text}");
    assert!(text.ends_with(
        "\nnote: no data plane is connected; the new version will be sent when one subscribes\n"
    ));
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn applied_but_refused_somewhere_fails() {
    let mut reply = fixtures::applied();
    reply
        .data_planes
        .push(nacked("node-b", 4713, "bad cert", 3));
    reply
        .data_planes
        .push(data_plane("node-c", 4714, DataPlaneResult::Disconnected, 3));
    assert_eq!(
        render(&reply, Operation::Reload),
        "reload published version 4, but not every data plane applied it:\n\
         \x20 node-a (pid 4712): applied version 4\n\
         \x20 node-b (pid 4713): refused: bad cert; still serving version 3\n\
         \x20 node-c (pid 4714): disconnected\n"
    );
    assert_eq!(exit(&reply), Exit::Failed);
    reply.data_planes.truncate(1);
    reply
        .data_planes
        .push(data_plane("node-d", 1, DataPlaneResult::TimedOut, 3));
    assert_eq!(exit(&reply), Exit::Failed);
}

#[test]
fn unchanged_is_ok() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::Unchanged as i32,
        version: 4,
        previous_version: 4,
        diff: None,
        data_planes: Vec::new(),
        ..fixtures::applied()
    };
    assert_eq!(
        render(&reply, Operation::Reload),
        "unchanged: version 4 already matches /etc/proxyd/proxy.toml \
         (use --force to publish it again)\n"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn rejected_prints_every_diagnostic_and_fails() {
    let reply = fixtures::rejected();
    assert_eq!(
        render(&reply, Operation::Reload),
        "/etc/proxyd/proxy.toml:14:15: sites[2].upstreams[0]: invalid URL: relative URL without \
         a base\n/etc/proxyd/proxy.toml: expected `=`\nreload rejected: version 3 is still serving\n"
    );
    assert_eq!(exit(&reply), Exit::Failed);
}

#[test]
fn dry_run_shows_the_next_version_and_warnings() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::DryRun as i32,
        previous_version: 3,
        version: 4,
        warnings: vec!["proxy.admin_address changed".into()],
        data_planes: Vec::new(),
        ..fixtures::applied()
    };
    assert_eq!(
        render(&reply, Operation::Reload),
        "dry run: version 3 would become 4 (1 site added: a.example; 1 site modified: \
         b.example; rate_limit.burst 200 → 300)\nwarning: proxy.admin_address changed\n"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn dry_run_of_an_unchanged_file_promises_no_new_version() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::DryRun as i32,
        previous_version: 3,
        version: 3,
        diff: Some(ConfigDiff::default()),
        data_planes: Vec::new(),
        ..fixtures::applied()
    };
    assert_eq!(
        render(&reply, Operation::Reload),
        "dry run: version 3 already matches /etc/proxyd/proxy.toml; a reload would change \
         nothing (use --force to publish it again)\n"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn dry_run_of_an_invalid_file_is_rejected() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::Rejected as i32,
        ..fixtures::rejected()
    };
    assert!(
        render(&reply, Operation::Reload)
            .ends_with("\nreload rejected: version 3 is still serving\n")
    );
    assert_eq!(exit(&reply), Exit::Failed);
}

#[test]
fn unknown_outcomes_fail() {
    for outcome in [0, 42] {
        let reply = ReloadReply {
            outcome,
            ..fixtures::applied()
        };
        assert_eq!(exit(&reply), Exit::Failed);
        assert!(render(&reply, Operation::Reload).starts_with(&format!(
            "reload outcome unknown to this proxyctl ({outcome})"
        )));
    }
}

const ROLLBACK_TO_5: Operation = Operation::Rollback { restores: Some(5) };
const ROLLBACK: Operation = Operation::Rollback { restores: None };

/// Version 7 → 8, applied by one data plane, with the warning controld adds to every rollback.
fn rolled_back() -> ReloadReply {
    ReloadReply {
        previous_version: 7,
        version: 8,
        diff: Some(ConfigDiff {
            sites_modified: vec!["a.example".into()],
            ..ConfigDiff::default()
        }),
        warnings: vec![
            "/etc/proxyd/proxy.toml differs from what now runs; the next reload \
                        publishes the file"
                .into(),
        ],
        data_planes: vec![data_plane("node-a", 4712, DataPlaneResult::Acked, 8)],
        duration_ms: 9,
        ..fixtures::applied()
    }
}

#[test]
fn rollback_lead_line_names_the_restored_version() {
    let reply = rolled_back();
    assert_eq!(
        render(&reply, ROLLBACK_TO_5),
        "rolled back: version 7 → 8 (restores version 5; 1 site modified: a.example) in 9 ms\n\
         \x20 node-a (pid 4712): applied version 8\n\
         warning: /etc/proxyd/proxy.toml differs from what now runs; the next reload publishes \
         the file\n"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn rollback_lead_line_without_a_requested_version() {
    let mut reply = rolled_back();
    assert_eq!(
        ROLLBACK.applied_line(&reply),
        "rolled back: version 7 → 8 (1 site modified: a.example) in 9 ms"
    );
    reply.diff = None;
    assert_eq!(
        ROLLBACK_TO_5.applied_line(&reply),
        "rolled back: version 7 → 8 (restores version 5; no content change) in 9 ms"
    );
    assert_eq!(
        Operation::Reload.applied_line(&reply),
        "reloaded: version 7 → 8 (no content change) in 9 ms"
    );
}

#[test]
fn rollback_not_applied_everywhere_fails_and_keeps_the_warning() {
    let mut reply = rolled_back();
    reply
        .data_planes
        .push(nacked("node-b", 4713, "bad cert", 7));
    assert_eq!(
        render(&reply, ROLLBACK_TO_5),
        "rollback published version 8, but not every data plane applied it:\n\
         \x20 node-a (pid 4712): applied version 8\n\
         \x20 node-b (pid 4713): refused: bad cert; still serving version 7\n\
         warning: /etc/proxyd/proxy.toml differs from what now runs; the next reload publishes \
         the file\n"
    );
    assert_eq!(exit(&reply), Exit::Failed);
}

#[test]
fn rollback_without_data_planes_notes_it() {
    let mut reply = rolled_back();
    reply.data_planes.clear();
    let text = render(&reply, ROLLBACK);
    assert!(text.starts_with("rolled back: version 7 → 8 ("), "{text}");
    assert!(
        text.contains("\nnote: no data plane is connected;"),
        "{text}"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn rollback_to_the_serving_content_is_unchanged() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::Unchanged as i32,
        previous_version: 7,
        version: 7,
        diff: None,
        data_planes: Vec::new(),
        ..rolled_back()
    };
    let text = render(&reply, ROLLBACK_TO_5);
    assert!(
        text.starts_with(
            "unchanged: version 7 already has the content of version 5; nothing was published\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("the next reload publishes the file\n"),
        "{text}"
    );
    assert!(
        render(&reply, ROLLBACK)
            .starts_with("unchanged: version 7 already has that content; nothing was published\n")
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn rejected_and_unknown_outcomes_name_the_rollback() {
    let rejected = fixtures::rejected();
    assert!(
        render(&rejected, ROLLBACK).ends_with("\nrollback rejected: version 3 is still serving\n")
    );
    assert_eq!(exit(&rejected), Exit::Failed);
    let future = ReloadReply {
        outcome: 42,
        warnings: Vec::new(),
        ..rolled_back()
    };
    assert!(
        render(&future, ROLLBACK_TO_5)
            .starts_with("rollback outcome unknown to this proxyctl (42)")
    );
    assert_eq!(exit(&future), Exit::Failed);
}

#[test]
fn warnings_come_last_whatever_the_outcome() {
    let mut reply = fixtures::rejected();
    reply.warnings = vec!["w".into()];
    assert!(render(&reply, Operation::Reload).ends_with("still serving\nwarning: w\n"));
}

#[test]
fn a_rollout_stopped_at_its_canaries_says_why_and_what_went_back_and_fails() {
    let reply = ReloadReply {
        outcome: ReloadOutcome::CanaryStopped as i32,
        version: 6,
        previous_version: 4,
        data_planes: vec![data_plane("web-1", 0, DataPlaneResult::Acked, 6)],
        canary: Some(proto::v1::CanaryReport {
            nodes: vec!["web-1".into()],
            wait_ms: 30_000,
            max_5xx_rise: 1.0,
            figures: vec![proto::v1::CanaryNode {
                node: "web-1".into(),
                responses_before: 1000,
                responses_5xx_before: 2,
                responses: 40,
                responses_5xx: 30,
                no_figures: false,
            }],
            stopped: "canary web-1: 5xx ratio 75.0% in the window (30 of 40 responses), 0.2% \
                      before; the bound is a rise of 1 point"
                .into(),
            reverted_version: 6,
        }),
        ..fixtures::applied()
    };
    assert_eq!(exit(&reply), Exit::Failed);
    let text = render(&reply, Operation::Reload);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "reload stopped at its canaries: canary web-1: 5xx ratio 75.0% in the window (30 of \
             40 responses), 0.2% before; the bound is a rise of 1 point",
            "the previous content went back to the canaries as version 6:",
        ]
    );
    assert!(
        text.contains("  web-1: 5xx 75.0% in the window (30 of 40 responses), 0.2% before"),
        "{text}"
    );
}
