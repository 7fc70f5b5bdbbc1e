use std::path::Path;

use super::*;

fn config(extra: &str, sites: &str) -> Config {
    let text = format!(
        "{extra}\n[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n{sites}"
    );
    crate::config::parse(&text, Path::new("t.toml")).unwrap()
}

const A: &str = "[[sites]]\nhostnames = [\"a.example\"]\nupstreams = [\"http://127.0.0.1:1\"]\n";
const B: &str = "[[sites]]\nhostnames = [\"b.example\"]\nupstreams = [\"http://127.0.0.1:2\"]\n";
const B2: &str = "[[sites]]\nhostnames = [\"b.example\"]\nupstreams = [\"http://127.0.0.1:3\"]\n";
const C: &str = "[[sites]]\nhostnames = [\"c.example\"]\nupstreams = [\"http://127.0.0.1:4\"]\n";

#[test]
fn sites_added_removed_and_modified() {
    let old = config("", &format!("{A}{B}"));
    let new = config("", &format!("{B2}{C}"));
    let d = ConfigDiff::between(&old, &new);
    assert_eq!(d.sites_added, ["c.example"]);
    assert_eq!(d.sites_removed, ["a.example"]);
    assert_eq!(d.sites_modified, ["b.example"]);
    assert!(d.limits_changed.is_empty() && d.static_changed.is_empty());
    assert_eq!(
        d.summary(),
        "1 site added: c.example; 1 site removed: a.example; 1 site modified: b.example"
    );
}

#[test]
fn modified_sites_carry_their_changes_to_the_wire() {
    let d = ConfigDiff::between(
        &config("", &format!("{A}{B}")),
        &config("", &format!("{A}{B2}")),
    );
    assert_eq!(d.summary(), "1 site modified: b.example");
    let wire = d.to_proto();
    assert_eq!(wire.sites_modified, ["b.example"]);
    assert_eq!(
        wire.site_changes,
        [pb::SiteChange {
            site: "b.example".into(),
            changes: vec![pb::FieldChange {
                field: "upstreams".into(),
                old_value: "http://127.0.0.1:2".into(),
                new_value: "http://127.0.0.1:3".into(),
                added: vec!["http://127.0.0.1:3".into()],
                removed: vec!["http://127.0.0.1:2".into()],
            }],
        }]
    );
    // What proxyctl gets back from the wire describes the same.
    let back = FieldChange::from(&wire.site_changes[0].changes[0]);
    assert_eq!(back, d.site_changes[0].changes[0]);
    assert_eq!(
        d.site_changes[0].describe(),
        "upstreams: + http://127.0.0.1:3  - http://127.0.0.1:2"
    );
    // Added and removed sites have no per-field entry: the site is the change.
    let d = ConfigDiff::between(&config("", A), &config("", B));
    assert!(d.site_changes.is_empty());
}

#[test]
fn an_empty_value_reads_unset() {
    let c = FieldChange {
        field: "logging.level".into(),
        new: "debug".into(),
        ..FieldChange::default()
    };
    assert_eq!(c.describe(), "logging.level: (unset) → debug");
}

#[test]
fn limits_and_static_fields_are_named_with_both_values() {
    let old = config("[rate_limit]\nrequests_per_second = 10\nburst = 5\n", A);
    let new = config(
        "body_limit_bytes = 5\n[proxy]\nshutdown_timeout = \"5s\"\n[logging]\nformat = \"text\"\n",
        A,
    );
    let d = ConfigDiff::between(&old, &new);
    let change = |field: &str, old: &str, new: &str| FieldChange {
        field: field.into(),
        old: old.into(),
        new: new.into(),
        ..FieldChange::default()
    };
    assert_eq!(
        d.limits_changed,
        [
            change("body_limit_bytes", "10485760", "5"),
            change("rate_limit", "10/s burst 5", "none"),
            // proxyd applies [proxy] live: no restart.
            change("proxy.shutdown_timeout", "30s", "5s"),
        ]
    );
    assert_eq!(d.static_changed.len(), 1);
    assert_eq!(
        d.static_warnings(),
        ["logging.format changed from json to text: needs a restart of controld"]
    );
    assert!(ConfigDiff::between(&old, &old).is_empty());
}

#[test]
fn the_metrics_address_of_controld_applies_live() {
    let old = config("", A);
    let new = config("[control]\nmetrics_address = \"127.0.0.1:9100\"\n", A);
    let d = ConfigDiff::between(&old, &new);
    assert_eq!(
        d.limits_changed,
        [FieldChange {
            field: "control.metrics_address".into(),
            old: "none".into(),
            new: "127.0.0.1:9100".into(),
            ..FieldChange::default()
        }]
    );
    assert!(d.static_changed.is_empty(), "{:?}", d.static_changed);
    assert!(d.static_warnings().is_empty());
    assert!(static_changes(&old.statics, &new.statics).is_empty());
    assert_eq!(d.summary(), "control.metrics_address none → 127.0.0.1:9100");
}
