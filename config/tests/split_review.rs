//! The review of issue 21 (fleets): the split of a config text into the fleet's part and the
//! host's tables, and `[cluster]`'s endpoints. A split either puts every host table on the
//! host's side, or refuses the text: never a host table published.

#![allow(clippy::unwrap_used, reason = "tests")]
use proxy_config::fleet::split;

/// A quoted header with an escape names the same table: `["contr\u006fl"]` is `[control]`.
#[test]
fn an_escaped_host_header_stays_on_the_host() {
    let text = "[[sites]]\nhostnames = [\"a.example\"]\n\n[\"contr\\u006fl\"]\nsocket = \"/run/web-1.sock\"\n";
    let parsed: toml::Table = toml::from_str(text).unwrap();
    assert!(parsed.contains_key("control"));
    if let Ok(s) = split(text) {
        assert!(!s.fleet.contains("web-1.sock"), "published: {:?}", s.fleet);
    }
}

/// A multi-line string closed with extra quotes inside a multi-line array: the scanner loses
/// track and takes the string's content for a header.
#[test]
fn a_string_with_extra_closing_quotes_does_not_move_the_fleet_s_text() {
    let text = "[[sites]]\nhostnames = [\n  \"\"\"a.example\"\"\"\", \"\"\"\n[control]\n\"\"\",\n]\nupstreams = [\"http://10.0.0.5:80\"]\n";
    toml::from_str::<toml::Table>(text).unwrap();
    if let Ok(s) = split(text) {
        assert!(
            s.host.is_empty(),
            "host: {:?}\nfleet: {:?}",
            s.host,
            s.fleet
        );
    }
}

/// One `http://` endpoint among `https://` ones (a typo) is accepted: that member is spoken to
/// in clear text, fleet config and all, although `[cluster] tls` is set.
#[test]
fn a_plain_endpoint_among_tls_ones_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let text = format!(
        "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\
         [[sites]]\nhostnames = [\"a.example\"]\nupstreams = [\"http://10.0.0.5:80\"]\n\
         [cluster]\netcd = [\"https://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nnode = \"a\"\n\
         tls = {{ ca_file = \"{}\" }}\n",
        ca.display()
    );
    let all_tls = text.replace("http://10.0.0.2", "https://10.0.0.2");
    proxy_config::config::parse(&all_tls, std::path::Path::new("proxy.toml")).unwrap();
    let parsed = proxy_config::config::parse(&text, std::path::Path::new("proxy.toml"));
    assert!(
        parsed.is_err(),
        "accepted: {:?}",
        parsed.map(|c| c.statics.cluster)
    );
}
