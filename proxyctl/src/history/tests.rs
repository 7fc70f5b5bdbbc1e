use super::*;
use crate::fixtures;

#[test]
fn newest_first_with_the_serving_version_marked() {
    assert_eq!(
        render(&fixtures::history()),
        "VERSION  PUBLISHED                SOURCE         BY        SUMMARY\n\
         7*       2026-11-21 19:40:01 UTC  rollback to 5  uid 0     1 site modified: a.example\n\
         6        2026-11-21 19:39:00 UTC  reload         uid 1000  rate_limit 10/s burst 5 → none\n\
         5        2026-11-21 19:30:00 UTC  startup        -         no content change\n"
    );
}

#[test]
fn each_version_shows_what_changed_inside_its_sites() {
    let mut reply = fixtures::history();
    reply.entries[0].diff = Some(fixtures::detailed_diff());
    let text = render(&reply);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("7*  "), "{text}");
    assert_eq!(lines[2], "  ~ site b.example");
    assert_eq!(
        lines[3],
        "      upstreams: + http://10.0.0.3:80  - http://10.0.0.1:80"
    );
    assert!(lines[6].starts_with("      tls.certificate: "), "{text}");
    assert!(lines[7].starts_with("6   "), "{text}");
    assert_eq!(lines.len(), 9, "{text}");
    // The details leave the table's columns as they were.
    assert_eq!(
        lines[0],
        render(&fixtures::history()).lines().next().unwrap()
    );
}

#[test]
fn the_marker_follows_current_version() {
    let mut reply = fixtures::history();
    reply.current_version = 6;
    let text = render(&reply);
    let versions: Vec<_> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(versions, ["7", "6*", "5"]);
    // A serving version that fell out of the history marks nothing.
    reply.current_version = 99;
    assert!(!render(&reply).contains('*'));
}

#[test]
fn empty_history() {
    let reply = HistoryReply {
        entries: Vec::new(),
        current_version: 3,
    };
    assert_eq!(render(&reply), "no versions recorded\n");
}

#[test]
fn empty_cells_and_multi_line_text_keep_the_table_intact() {
    let reply = HistoryReply {
        entries: vec![HistoryEntry {
            version: 2,
            content_hash: "ab".into(),
            at_unix_ms: 0,
            source: String::new(),
            uid: None,
            pid: Some(7),
            summary: "1 site added:\na.example".into(),
            kind: "config".into(),
            diff: None,
            node: String::new(),
        }],
        current_version: 2,
    };
    assert_eq!(
        render(&reply),
        "VERSION  PUBLISHED                SOURCE  BY  SUMMARY\n\
         2*       1970-01-01 00:00:00 UTC  -       -   1 site added:; a.example\n"
    );
}
