//! End to end: what a reload changes inside a site (upstreams, routes, limits, the certificate)
//! is shown by `reload --dry-run`, `reload`, `check --remote` and, per version, `history`, as
//! text and as JSON, and never shows a private key.

#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use proxy_tests::tls::{Issued, TestCa};
use proxy_tests::{HTTPS_ON_PORT_0, MockUpstream, TestEnv, output_text};
use serde_json::{Value, json};

/// `app.test` with two upstreams, a `/api` route to the first, a rate limit and TLS from `cert`.
fn site(
    upstreams: [&MockUpstream; 2],
    api: &MockUpstream,
    rate: (u32, u32),
    cert: &Issued,
) -> String {
    format!(
        "[[sites]]\nhostnames = [\"app.test\"]\nupstreams = [\"{}\", \"{}\"]\n{}\n\
         rate_limit = {{ requests_per_second = {}, burst = {} }}\n\
         [[sites.routes]]\npath_prefix = \"/api\"\nupstreams = [\"{}\"]\n",
        upstreams[0].url(),
        upstreams[1].url(),
        cert.site_tls(),
        rate.0,
        rate.1,
        api.url()
    )
}

/// `sha256 3F:A1:0C:77…` as the diff starts a certificate's fingerprint.
fn fingerprint_start(cert: &Issued) -> String {
    let full = controld::config::sha256_fingerprint(&cert.der);
    format!("sha256 {}…", &full[..11])
}

/// The lines a change of `app.test` from `old` to `new` prints, after its `~ site` line.
fn expected_lines(
    a: &MockUpstream,
    b: &MockUpstream,
    c: &MockUpstream,
    old: &Issued,
    new: &Issued,
) -> Vec<String> {
    let (a, b, c) = (a.url(), b.url(), c.url());
    vec![
        "~ site app.test".to_owned(),
        format!("    upstreams: + {c}  - {b}"),
        format!("    routes[\"/api\"].upstreams: + {b}  - {a}"),
        format!(
            "    tls.cert_file: {} → {}",
            old.cert_file.display(),
            new.cert_file.display()
        ),
        format!(
            "    tls.key_file: {} → {}",
            old.key_file.display(),
            new.key_file.display()
        ),
        // The certificate line: checked by its parts below (the fingerprints are random).
        "    tls.certificate: files ".to_owned(),
        "    rate_limit: 10/s burst 5 → 20/s burst 10".to_owned(),
    ]
}

/// Checks that `text` holds the block of `expected` lines, in order, and that its certificate
/// line names both fingerprints and the expiry.
fn assert_block(text: &str, expected: &[String], old: &Issued, new: &Issued) {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == expected[0])
        .unwrap_or_else(|| panic!("no `{}` in:\n{text}", expected[0]));
    for (i, want) in expected.iter().enumerate() {
        let got = lines.get(start + i).copied().unwrap_or_default();
        assert!(
            got.starts_with(want.as_str()),
            "line {i}: want {want:?}, got {got:?}\n{text}"
        );
    }
    let certificate = lines[start + 5];
    let (was, now) = certificate.split_once(" → ").unwrap();
    assert!(was.contains(&fingerprint_start(old)), "{certificate}");
    assert!(now.contains(&fingerprint_start(new)), "{certificate}");
    // rcgen's default notAfter.
    assert!(now.ends_with(" expires 4096-01-01"), "{certificate}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_reload_check_and_history_show_what_changed_inside_the_site() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let c = MockUpstream::start("c").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.issue(certs.path(), "old", &["app.test"]);
    let new = ca.issue(certs.path(), "new", &["app.test"]);
    let env =
        TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &site([&a, &b], &a, (10, 5), &old)).await;
    let next = site([&a, &c], &b, (20, 10), &new);
    let expected = expected_lines(&a, &b, &c, &old, &new);

    // A candidate checked by the running controld, before it is written.
    let candidate = certs.path().join("candidate.toml");
    std::fs::write(&candidate, env.config_text(&next)).unwrap();
    let out = env
        .proxyctl(&["check", "--remote", candidate.to_str().unwrap()])
        .await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with(
            "valid: version 1 would become 2 (1 site modified: app.test)\n~ site app.test\n"
        ),
        "{text}"
    );
    assert_block(&text, &expected, &old, &new);

    env.write_config(&next);
    let out = env.proxyctl(&["reload", "--dry-run"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("dry run: version 1 would become 2 (1 site modified: app.test)\n"),
        "{text}"
    );
    assert_block(&text, &expected, &old, &new);

    let out = env.proxyctl(&["--json", "reload", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    let site_changes = &dry["diff"]["site_changes"];
    assert_eq!(site_changes[0]["site"], "app.test");
    assert_eq!(
        site_changes[0]["changes"][0],
        json!({"field": "upstreams",
               "old": format!("{}, {}", a.url(), b.url()),
               "new": format!("{}, {}", a.url(), c.url()),
               "added": [c.url()], "removed": [b.url()]})
    );

    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("reloaded: version 1 → 2 (1 site modified: app.test) in "),
        "{text}"
    );
    assert_block(&text, &expected, &old, &new);

    // Per version: version 2 carries its details, version 1 (startup) none.
    let out = env.proxyctl(&["history"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let indented: Vec<String> = expected.iter().map(|l| format!("  {l}")).collect();
    assert_block(&text, &indented, &old, &new);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("2*"), "{text}");
    assert_eq!(lines[2], "  ~ site app.test", "{text}");
    assert!(lines.last().unwrap().starts_with("1 "), "{text}");

    let out = env.proxyctl(&["--json", "history"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["entries"][0]["version"], 2);
    assert_eq!(history["entries"][0]["diff"], dry["diff"]);
    assert_eq!(history["entries"][1]["diff"], Value::Null);
    env.stop().await;
}
