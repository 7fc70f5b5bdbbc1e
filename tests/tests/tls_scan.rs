//! A long suite: an independent TLS scanner (testssl.sh, Debian package `testssl.sh`) against a
//! proxyd TLS listener, once per certificate kind (ECDSA, RSA). Any finding worse than
//! informational that concerns proxyd's TLS fails the test. Run it with scripts/long-tests.sh,
//! which installs the scanner; `TLS_SCAN_OUT=<dir>` keeps the scanner's JSON there.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_tests::tls::TestCa;
use proxy_tests::{HTTPS_ON_PORT_0, MockUpstream, TestEnv};

/// The longest one scan may take before the test fails (a full run takes a minute or two).
const SCAN_DEADLINE: Duration = Duration::from_secs(600);

/// Findings that are not about proxyd's TLS, each with the reason it does not apply. Matched
/// on the finding's `id` (exactly, or as a prefix when it ends with `*`).
const NOT_APPLICABLE: &[(&str, &str)] = &[
    // The test CA's certificates: operators bring their own, and controld checks the ones
    // they bring (docs/configuration.md, "TLS").
    (
        "cert_validityPeriod",
        "the test CA issues long-lived certificates",
    ),
    ("cert_expirationStatus", "the test CA's validity window"),
    ("cert_notAfter", "the test CA's validity window"),
    ("cert_crlDistributionPoints", "the test CA publishes no CRL"),
    ("cert_ocspURL", "the test CA runs no OCSP responder"),
    (
        "cert_revocation",
        "the test CA publishes neither CRL nor OCSP",
    ),
    (
        "cert_serialNumberLen",
        "the test CA numbers its certificates 1, 2, 3, ...",
    ),
    (
        "cert_certificatePolicies_EV",
        "a test certificate is not EV",
    ),
    ("cert_trust", "a test name, not a public one"),
    ("cert_caIssuers", "the test CA publishes no AIA"),
    ("OCSP_stapling", "no OCSP responder to staple from"),
    (
        "cert_mustStapleExtension",
        "no OCSP responder to staple from",
    ),
    ("DNS_CAArecord", "no DNS in the test (--nodns none)"),
    ("certificate_transparency", "the test CA logs nowhere"),
    // Headers of the HTTP answer come from the upstream, which is the mock here.
    (
        "HSTS",
        "Strict-Transport-Security is the application's header",
    ),
    ("HPKP", "the application's header"),
    ("security_headers", "the application's headers"),
    ("banner_application", "the mock upstream's banner"),
    ("cookie_*", "the application's cookies"),
];

/// Results this suite requires word for word (the start of the finding), whatever their
/// severity: testssl.sh 3.0 rates an offered TLS 1.0 or 1.1 only "INFO", so the severity alone
/// would let them through. Their presence also proves the scan ran these checks.
const EXPECTED: &[(&str, &str)] = &[
    ("SSLv2", "not offered"),
    ("SSLv3", "not offered"),
    ("TLS1", "not offered"),
    ("TLS1_1", "not offered"),
    ("TLS1_2", "offered"),
    ("TLS1_3", "offered"),
    ("cipherlist_NULL", "not offered"),
    ("cipherlist_aNULL", "not offered"),
    ("cipherlist_EXPORT", "not offered"),
    ("cipherlist_LOW", "not offered"),
    ("cipherlist_3DES_IDEA", "not offered"),
    ("cipherlist_AVERAGE", "not offered"),
    ("PFS", "offered"),
    ("secure_renego", "supported"),
];

/// Vulnerability checks that must have run; their severity says whether they found anything.
const MUST_BE_TESTED: &[&str] = &[
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_client_renego",
    "CRIME_TLS",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
    "cipher_order",
];

/// Severities worse than informational, and the scanner's own "could not test" marker.
const FAILING: &[&str] = &["LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN"];

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: runs the testssl.sh/sslyze scanner; run with scripts/long-tests.sh"]
async fn testssl_finds_nothing_vulnerable_on_a_tls_listener() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let out =
        std::env::var_os("TLS_SCAN_OUT").map_or_else(|| certs.path().to_owned(), PathBuf::from);
    let ca = TestCa::new();
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let mut problems = Vec::new();
    for (host, rsa) in [("scan.test", false), ("rsa.scan.test", true)] {
        let cert = if rsa {
            ca.issue_rsa(certs.path(), host, &[host])
        } else {
            ca.issue(certs.path(), host, &[host])
        };
        // The scanner's renegotiation check sends no SNI (testssl.sh 3.0: "no SNI needed"):
        // the site is also the default, as on a single-site deployment.
        let body = format!(
            "default_tls_site = \"{host}\"\n[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{}\"]\n{}\n",
            app.url(),
            cert.site_tls()
        );
        let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;
        let findings = scan(env.https.unwrap().port(), host, &ca_file, &out).await;
        problems.extend(judge(host, &findings));
        env.stop().await;
    }
    assert!(
        problems.is_empty(),
        "the scanner found:\n{}",
        problems.join("\n")
    );
}

/// Runs testssl.sh against 127.0.0.1:`port` with SNI `host` (no DNS, no outside calls) and
/// returns its flat JSON findings.
async fn scan(port: u16, host: &str, ca_file: &Path, dir: &Path) -> Vec<serde_json::Value> {
    let json = dir.join(format!("{host}.json"));
    let program = std::env::var("TESTSSL").unwrap_or_else(|_| "testssl".to_owned());
    let run = tokio::process::Command::new(&program)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
        ])
        .args(["--ip", "127.0.0.1", "--add-ca"])
        .arg(ca_file)
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("{host}:{port}"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCAN_DEADLINE, run)
        .await
        .expect("the scan finishes")
        .map_err(|e| format!("cannot run {program} (scripts/long-tests.sh installs it): {e}"))
        .unwrap();
    let text = std::fs::read_to_string(&json)
        .map_err(|e| {
            let log = proxy_tests::output_text(&output);
            format!("{program} wrote no JSON ({e}); its output:\n{log}")
        })
        .unwrap();
    if std::env::var_os("PROXY_TESTS_LOG").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    }
    serde_json::from_str(&text).unwrap()
}

/// The findings for `host` that fail the suite, as lines; also fails when a check this suite
/// relies on is missing from the scan.
fn judge(host: &str, findings: &[serde_json::Value]) -> Vec<String> {
    let field = |f: &serde_json::Value, name: &str| f[name].as_str().unwrap_or("").to_owned();
    let mut problems = Vec::new();
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| field(f, "id") == id)
            .map(|f| field(f, "finding"))
    };
    for (id, expected) in EXPECTED {
        match finding(id) {
            Some(found) if found.starts_with(expected) => {}
            Some(found) => problems.push(format!("{host}: {id}: {found:?}, not {expected:?}")),
            None => problems.push(format!("{host}: the scan has no result for {id}")),
        }
    }
    for id in MUST_BE_TESTED {
        if finding(id).is_none() {
            problems.push(format!("{host}: the scan has no result for {id}"));
        }
    }
    for f in findings {
        let (id, severity) = (field(f, "id"), field(f, "severity"));
        if FAILING.contains(&severity.as_str()) && !not_applicable(&id) {
            problems.push(format!("{host}: {severity} {id}: {}", field(f, "finding")));
        }
    }
    problems
}

fn not_applicable(id: &str) -> bool {
    NOT_APPLICABLE
        .iter()
        .any(|(pattern, _)| match pattern.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == *pattern,
        })
}
