use std::path::Path;

use serde_json::{Value, json};

use super::*;
use crate::fixtures;

/// The smallest valid config: one listener, one site.
const MINIMAL: &str = r#"
[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[sites]]
hostnames = ["a.example"]
upstreams = ["http://127.0.0.1:9000"]

[[sites]]
hostnames = ["b.example"]
upstreams = ["http://127.0.0.1:9001"]
"#;

/// Two problems controld reports at once: a relative upstream and a burst of 0.
const INVALID: &str = r#"
[rate_limit]
requests_per_second = 10
burst = 0

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:8080"

[[sites]]
hostnames = ["a.example"]
upstreams = ["not-a-url"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn a_valid_file_says_ok_with_what_it_declares() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "proxy.toml", MINIMAL);
    let report = local(&path);
    assert_eq!(report.exit(), Exit::Ok);
    assert_eq!(
        report.render(),
        format!("{}: ok (2 sites, 1 listeners)\n", path.display())
    );
    assert_eq!(
        to_value(&report.to_json()),
        json!({"valid": true, "diagnostics": [], "sites": 2, "listeners": 1})
    );
}

#[test]
fn an_invalid_file_lists_every_problem_as_controld_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "proxy.toml", INVALID);
    let report = local(&path);
    assert_eq!(report.exit(), Exit::Failed);
    // Exactly the lines `controld check` prints: the same code found them.
    let Err(err) = proxy_config::config::load(&path) else {
        panic!("INVALID loaded");
    };
    let expected: Vec<String> = err
        .diagnostics(&path)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(expected.len(), 2, "{expected:?}");
    assert_eq!(report.render(), output::lines(&expected));
    let text = report.render();
    let file = path.display().to_string();
    assert!(
        text.lines()
            .all(|line| line.starts_with(&format!("{file}:"))),
        "{text}"
    );
    assert!(text.contains(": rate_limit.burst: "), "{text}");
    assert!(text.contains(": sites[0].upstreams[0]: "), "{text}");

    let value = to_value(&report.to_json());
    assert_eq!(value["valid"], false);
    assert_eq!(value["sites"], Value::Null);
    assert_eq!(value["listeners"], Value::Null);
    let diagnostics = value["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 2);
    for d in diagnostics {
        assert_eq!(d["file"], file.as_str());
        assert!(d["line"].as_u64().unwrap() > 0, "{d}");
        assert!(d["column"].is_u64() && d["message"].is_string(), "{d}");
        assert!(d["key_path"].is_string(), "{d}");
    }
}

#[test]
fn a_syntax_error_has_a_null_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "broken.toml", "[[sites]\nhostnames = \n");
    let report = local(&path);
    assert_eq!(report.exit(), Exit::Failed);
    let value = to_value(&report.to_json());
    assert_eq!(value["diagnostics"][0]["key_path"], Value::Null);
}

#[test]
fn a_missing_file_is_one_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let report = local(&path);
    assert_eq!(report.exit(), Exit::Failed);
    let text = report.render();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    let value = to_value(&report.to_json());
    assert_eq!(value["diagnostics"][0]["line"], 0);
    assert_eq!(value["diagnostics"].as_array().unwrap().len(), 1);
}

#[test]
fn reading_for_remote_names_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "new.toml", MINIMAL);
    assert_eq!(read(&path).unwrap(), MINIMAL);

    let missing = dir.path().join("missing.toml");
    assert_eq!(
        read(&missing).unwrap_err().to_string(),
        format!(
            "check: reading {}: No such file or directory",
            missing.display()
        )
    );
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    assert_eq!(
        read(&binary).unwrap_err().to_string(),
        format!("check: reading {}: not UTF-8", binary.display())
    );
    let large = dir.path().join("large.toml");
    let size = usize::try_from(MAX_CONFIG_BYTES).unwrap() + 1;
    std::fs::write(&large, "#".repeat(size)).unwrap();
    assert!(
        read(&large)
            .unwrap_err()
            .to_string()
            .ends_with("bytes, which controld refuses"),
    );
}

#[test]
fn remote_valid_shows_the_change_and_warnings() {
    let reply = fixtures::validated();
    assert_eq!(remote_exit(&reply), Exit::Ok);
    assert_eq!(
        render_remote(&reply, "new.toml"),
        "valid: version 4 would become 5 (1 site added: a.example; 1 site modified: b.example; \
         rate_limit.burst 200 → 300)\n\
         warning: control.allowed_uids changed from none to 1000: needs a restart of controld\n"
    );
}

#[test]
fn remote_valid_shows_what_would_change_inside_each_site() {
    let reply = ValidateReply {
        diff: Some(fixtures::detailed_diff()),
        warnings: Vec::new(),
        ..fixtures::validated()
    };
    let text = render_remote(&reply, "new.toml");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("valid: version 4 would become 5 ("),
        "{text}"
    );
    assert_eq!(lines[1], "~ site b.example");
    assert_eq!(lines[4], "    rate_limit: 10/s burst 5 → 20/s burst 10");
    assert_eq!(lines.len(), 6, "{text}");
}

#[test]
fn remote_valid_without_change_says_so() {
    let reply = ValidateReply {
        next_version: 4,
        diff: Some(proto::v1::ConfigDiff::default()),
        warnings: Vec::new(),
        ..fixtures::validated()
    };
    assert_eq!(remote_exit(&reply), Exit::Ok);
    assert_eq!(
        render_remote(&reply, "new.toml"),
        "valid: version 4 already matches it; a reload would change nothing\n"
    );
}

#[test]
fn remote_invalid_prints_diagnostics_like_a_rejected_reload() {
    let reply = fixtures::invalid();
    assert_eq!(remote_exit(&reply), Exit::Failed);
    assert_eq!(
        render_remote(&reply, "deploy/new.toml"),
        "new.toml:7:14: sites[0].upstreams[0]: invalid URL: relative URL without a base\n\
         deploy/new.toml: rate_limit.burst: must be > 0\n\
         invalid (2 problems): a reload of it would be rejected; version 4 would keep serving\n"
    );
}

#[test]
fn valid_with_a_diagnostic_or_invalid_without_one_is_invalid() {
    let mut contradictory = fixtures::validated();
    contradictory.diagnostics = fixtures::invalid().diagnostics;
    assert!(!remote_is_valid(&contradictory));
    assert_eq!(remote_exit(&contradictory), Exit::Failed);

    let silent = ValidateReply {
        diagnostics: Vec::new(),
        ..fixtures::invalid()
    };
    assert_eq!(remote_exit(&silent), Exit::Failed);
    assert_eq!(
        render_remote(&silent, "new.toml"),
        "invalid (controld gave no reason): a reload of it would be rejected; \
         version 4 would keep serving\n"
    );
}
