//! One validator (issue 20 §1): a config controld accepts is one every proxyd of the same build
//! applies. Property: every plausible config (proxy-config's strategies) that validation accepts
//! makes a snapshot proxyd's own conversion takes. And the drifts found by review, each
//! refused by controld now, at its key.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;

use controld::config::{self, LoadError};
use controld::snapshot::{Content, data_plane_refusal};
use proptest::prelude::*;
use proxy_config::config::strategies;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_config_controld_accepts_is_one_proxyd_applies(table in strategies::valid_config()) {
        let text = toml::to_string(&table).unwrap();
        let file = Path::new("proxy.toml");
        let config = match config::parse(&text, file) {
            Ok(config) => config,
            Err(e) => return Err(TestCaseError::fail(format!("refused:\n{e}\n--- text:\n{text}"))),
        };
        let content = Content::build(&config);
        if let Some(refused) = data_plane_refusal(&content, file) {
            return Err(TestCaseError::fail(format!("{refused}\n--- text:\n{text}")));
        }
    }
}

const SITE: &str = "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\n\
                    [[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"http://127.0.0.1:9000\"]\n";

/// The diagnostics controld gives `extra` (appended to a valid site), as text.
fn refused(extra: &str) -> Vec<String> {
    let text = format!("{SITE}{extra}");
    match config::parse(&text, Path::new("proxy.toml")) {
        Ok(config) => match data_plane_refusal(&Content::build(&config), Path::new("proxy.toml")) {
            Some(d) => vec![format!("(only by the data plane's conversion) {d}")],
            None => Vec::new(),
        },
        Err(LoadError::Invalid(diagnostics)) => {
            diagnostics.iter().map(ToString::to_string).collect()
        }
        Err(other) => vec![other.to_string()],
    }
}

fn assert_refused_at(extra: &str, key: &str, secret: Option<&str>) {
    let got = refused(extra);
    assert!(
        got.iter()
            .any(|d| d.contains(key) && d.starts_with("proxy.toml:")),
        "{extra:?} should be refused at {key}, located: {got:#?}"
    );
    if let Some(secret) = secret {
        assert!(
            got.iter().all(|d| !d.contains(secret)),
            "a diagnostic quotes the header value: {got:#?}"
        );
    }
}

#[test]
fn the_drifts_review_found_are_refused_by_controld_at_their_key() {
    assert_refused_at(
        "request_headers = { set = { Authorization = \"Bearer eyJ{abc\" } }\n",
        "sites[0].request_headers",
        Some("eyJ"),
    );
    assert_refused_at(
        "health_check = { path = \"/health\", timeout = \"999us\", interval = \"5s\" }\n",
        "sites[0].health_check.timeout",
        None,
    );
    assert_refused_at(
        "upstream_response_timeout = \"500us\"\n",
        "sites[0].upstream_response_timeout",
        None,
    );
    assert_refused_at(
        "health_check = { path = \"/santé\" }\n",
        "sites[0].health_check.path",
        None,
    );
    for (prefix, extra) in [
        ("/api//v2", ""),
        ("/a/./b", ""),
        ("/a/../b", ""),
        ("/%61pi", ""),
        ("/caf%c3%a9/admin", ""),
        ("/a%2Fb", ""),
        ("/a%5Cb", ""),
        ("/api", "rewrite = \"/ü/\"\n"),
    ] {
        let route = format!(
            "[[sites.routes]]\npath_prefix = \"{prefix}\"\nupstreams = [\"http://127.0.0.1:9001\"]\n{extra}"
        );
        let key = if extra.is_empty() {
            "path_prefix"
        } else {
            "rewrite"
        };
        assert_refused_at(&route, &format!("sites[0].routes[0].{key}"), None);
    }
    assert_refused_at(
        "[[sites.routes]]\npath_prefix = \"/old\"\nredirect = { location = \"/new\\u0007\" }\n",
        "sites[0].routes[0].redirect.location",
        None,
    );
}

#[test]
fn prefixes_with_bytes_browsers_send_unescaped_are_accepted() {
    // Next.js asset paths hold `[slug]`; browsers send `[ ] | ^` unescaped and proxyd takes them.
    let route = "[[sites.routes]]\npath_prefix = \"/_next/static/chunks/pages/[slug]\"\n\
                 upstreams = [\"http://127.0.0.1:9001\"]\n";
    assert_eq!(refused(route), Vec::<String>::new());
    let route = "[[sites.routes]]\npath_prefix = \"/caf%C3%A9/\"\nupstreams = [\"http://127.0.0.1:9001\"]\n";
    assert_eq!(refused(route), Vec::<String>::new());
}
