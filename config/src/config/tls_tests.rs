//! Site certificates through the whole load: each check of `tls = { cert_file, key_file }`
//! becomes a diagnostic at `sites[N].tls` with its place in the file, and a good pair travels
//! in the snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A self-signed certificate for `names` (ECDSA P-256) valid until `not_after`, written as
/// `<stem>.crt` and `<stem>.key` in `dir`.
pub(super) fn cert_pair(
    dir: &Path,
    stem: &str,
    names: &[&str],
    not_after: SystemTime,
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_after =
        rcgen::date_time_ymd(1970, 1, 1) + not_after.duration_since(UNIX_EPOCH).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn in_a_year() -> SystemTime {
    SystemTime::now() + 365 * DAY
}

/// A config with one site on `hostnames`, TLS from the two files, and a TLS listener.
fn config_text(hostnames: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        r#"{extra}
[[proxy.listeners]]
name = "https"
address = "127.0.0.1:8443"
tls = true

[[sites]]
hostnames = [{hostnames}]
upstreams = ["http://127.0.0.1:9000"]
tls = {{ cert_file = "{}", key_file = "{}" }}
"#,
        cert.display(),
        key.display()
    )
}

fn problems(text: &str) -> Vec<String> {
    match parse(text, Path::new("proxy.toml")) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e
            .diagnostics(Path::new("proxy.toml"))
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

fn assert_one_at_tls(got: &[String], needle: &str) {
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("proxy.toml:10:7: sites[0].tls: ") && got[0].contains(needle),
        "{:?} should be located at sites[0].tls and say {needle:?}",
        got[0]
    );
}

#[test]
fn a_good_pair_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_pair(
        dir.path(),
        "site",
        &["secure.example", "*.wild.example"],
        in_a_year(),
    );
    let text = config_text(
        r#""secure.example", "a.wild.example", "*.wild.example""#,
        &cert,
        &key,
        "",
    );
    let config = parse(&text, Path::new("proxy.toml")).unwrap();
    let certificate = config.dynamic.sites[0].tls.certificate().unwrap();
    assert_eq!(certificate.names, ["secure.example", "*.wild.example"]);
    assert!(config.certificate_warnings(SystemTime::now()).is_empty());
    assert!(
        !format!("{config:?}").contains("PRIVATE KEY"),
        "Debug leaves the key out"
    );

    // What goes into the snapshot (controld's snapshot tests follow it onto the wire).
    assert!(certificate.chain_pem.contains("BEGIN CERTIFICATE"));
    assert!(certificate.key_pem.contains("PRIVATE KEY"));
    assert!(certificate.not_after > SystemTime::UNIX_EPOCH);

    // A renewed certificate is new content.
    cert_pair(
        dir.path(),
        "site",
        &["secure.example", "*.wild.example"],
        in_a_year(),
    );
    let renewed = parse(&text, Path::new("proxy.toml")).unwrap();
    assert_ne!(renewed, config);
}

#[test]
fn unreadable_or_non_pem_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let (_, key) = cert_pair(dir.path(), "site", &["secure.example"], in_a_year());
    let got = problems(&config_text(r#""secure.example""#, &missing, &key, ""));
    assert_one_at_tls(&got, "cert_file");
    assert!(got[0].contains("cannot read it"), "{got:#?}");

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let got = problems(&config_text(r#""secure.example""#, &junk, &key, ""));
    assert_one_at_tls(&got, "no \"BEGIN CERTIFICATE\" block");

    let (cert, _) = cert_pair(dir.path(), "other", &["secure.example"], in_a_year());
    let got = problems(&config_text(r#""secure.example""#, &cert, &junk, ""));
    assert_one_at_tls(&got, "no usable PEM private key");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = cert_pair(dir.path(), "one", &["secure.example"], in_a_year());
    let (_, other_key) = cert_pair(dir.path(), "two", &["secure.example"], in_a_year());
    let got = problems(&config_text(r#""secure.example""#, &cert, &other_key, ""));
    assert_one_at_tls(&got, "does not match the certificate");
    assert!(!got[0].contains("BEGIN"), "no key material in diagnostics");
}

#[test]
fn the_names_must_cover_every_hostname_of_the_site() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_pair(
        dir.path(),
        "site",
        &["secure.example", "a.wild.example"],
        in_a_year(),
    );
    let got = problems(&config_text(
        r#""secure.example", "other.example""#,
        &cert,
        &key,
        "",
    ));
    assert_one_at_tls(&got, "does not cover other.example");

    // A site wildcard needs a wildcard name, even if it names a host the wildcard matches.
    let got = problems(&config_text(r#""*.wild.example""#, &cert, &key, ""));
    assert_one_at_tls(&got, "does not cover *.wild.example");

    // A wildcard name covers one label, not the parent or deeper names.
    let (cert, key) = cert_pair(dir.path(), "wild", &["*.wild.example"], in_a_year());
    let got = problems(&config_text(
        r#""a.wild.example", "wild.example", "a.b.wild.example""#,
        &cert,
        &key,
        "",
    ));
    assert_one_at_tls(&got, "does not cover wild.example, a.b.wild.example");
}

#[test]
fn an_expired_certificate_is_refused_and_one_expiring_soon_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_pair(
        dir.path(),
        "old",
        &["secure.example"],
        SystemTime::now() - DAY,
    );
    let got = problems(&config_text(r#""secure.example""#, &cert, &key, ""));
    assert_one_at_tls(&got, "expired on");

    let (cert, key) = cert_pair(
        dir.path(),
        "soon",
        &["secure.example"],
        SystemTime::now() + 10 * DAY,
    );
    let config = parse(
        &config_text(r#""secure.example""#, &cert, &key, ""),
        Path::new("proxy.toml"),
    )
    .unwrap();
    let warnings = config.certificate_warnings(SystemTime::now());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("the certificate of site secure.example expires on ")
            && warnings[0].contains("(in 9 days)"),
        "{warnings:?}"
    );
}

#[test]
fn default_tls_site_names_a_site_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_pair(
        dir.path(),
        "site",
        &["secure.example", "www.secure.example"],
        in_a_year(),
    );
    let hostnames = r#""secure.example", "www.secure.example""#;
    let text = config_text(
        hostnames,
        &cert,
        &key,
        "default_tls_site = \"WWW.secure.example\"",
    );
    let config = parse(&text, Path::new("proxy.toml")).unwrap();
    assert_eq!(
        config.dynamic.default_tls_site.as_deref(),
        Some("secure.example"),
        "any hostname of the site; the snapshot names the site"
    );

    let text = config_text(
        hostnames,
        &cert,
        &key,
        "default_tls_site = \"nope.example\"",
    );
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("proxy.toml:1:20: default_tls_site: no site has the hostname"),
        "{got:#?}"
    );

    let plain = format!(
        "{text}\n[[sites]]\nhostnames = [\"plain.example\"]\nupstreams = [\"http://127.0.0.1:1\"]\n"
    )
    .replace("nope.example", "plain.example");
    let got = problems(&plain);
    assert!(
        got.iter()
            .any(|d| d.contains("site plain.example has no `tls`")),
        "{got:#?}"
    );
}

#[test]
fn https_redirect_is_on_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_pair(dir.path(), "site", &["secure.example"], in_a_year());
    let text = config_text(r#""secure.example""#, &cert, &key, "");
    let config = parse(&text, Path::new("proxy.toml")).unwrap();
    assert!(config.dynamic.sites[0].https_redirect);
    let off = text.replace("tls = {", "https_redirect = false\ntls = {");
    let config = parse(&off, Path::new("proxy.toml")).unwrap();
    assert!(!config.dynamic.sites[0].https_redirect);
}

#[test]
fn validation_is_pure_it_checks_file_contents_read_beforehand_against_a_given_clock() {
    let dir = tempfile::tempdir().unwrap();
    let not_after = std::time::SystemTime::now() + std::time::Duration::from_secs(90 * 86_400);
    let (cert, key) = cert_pair(dir.path(), "p", &["pure.example"], not_after);
    // Paths that do not exist: validation never opens a file.
    let text = "[[proxy.listeners]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\ntls = true\n\
                [[sites]]\nhostnames = [\"pure.example\"]\nupstreams = [\"http://127.0.0.1:1\"]\n\
                tls = { cert_file = \"/nonexistent/p.crt\", key_file = \"/nonexistent/p.key\" }\n";
    let file: super::file::FileConfig = toml::from_str(text).unwrap();
    let mut files = super::certs::Files::new();
    files.insert(
        "/nonexistent/p.crt".into(),
        Ok(std::fs::read_to_string(&cert).unwrap()),
    );
    files.insert(
        "/nonexistent/p.key".into(),
        Ok(std::fs::read_to_string(&key).unwrap()),
    );
    let inputs = super::validate::Inputs {
        now: std::time::SystemTime::now(),
        files: &files,
    };
    let config = super::validate::validate(file, &inputs).unwrap();
    assert!(config.dynamic.sites[0].tls.certificate().is_some());

    // The same contents a year later: expired, by the clock it was given.
    let file: super::file::FileConfig = toml::from_str(text).unwrap();
    let later = super::validate::Inputs {
        now: not_after + std::time::Duration::from_secs(1),
        files: &files,
    };
    let problems = super::validate::validate(file, &later).unwrap_err();
    assert!(
        problems.iter().any(|p| p.message.contains("expired")),
        "{problems:?}"
    );
}
