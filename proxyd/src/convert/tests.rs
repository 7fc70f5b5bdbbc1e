//! The edge of the data plane, checked: every refusal names its reason.

use super::*;
use crate::upstreams::Protocol;

fn snapshot() -> pb::Snapshot {
    pb::Snapshot {
        version: 3,
        content_hash: "h".into(),
        static_settings: Some(pb::StaticSettings {
            listeners: vec![pb::Listener {
                name: "http".into(),
                address: "127.0.0.1:0".into(),
                tls: false,
            }],
            shutdown_timeout_ms: 1500,
            admin_address: String::new(),
            log_format: "json".into(),
            max_request_headers: 0,
            max_request_header_bytes: 1,
            request_header_timeout_ms: 0,
            upstream_connect_timeout_ms: 250,
            upstream_idle_timeout_ms: 0,
            upstream_h2_ping_interval_ms: 0,
            upstream_h2_ping_timeout_ms: 0,
            disable_tls_session_resumption: false,
            connection_limits: None,
        }),
        dynamic: Some(pb::DynamicConfig {
            sites: vec![pb::Site {
                hostnames: vec!["a.example".into()],
                upstreams: vec!["http://127.0.0.1:9000".into()],
                rate_limit: Some(pb::RateLimit {
                    requests_per_second: 1,
                    burst: 2,
                }),
                body_limit_bytes: Some(10),
                tls: pb::SiteTls::None.into(),
                routes: vec![pb::Route {
                    path_prefix: "/api".into(),
                    action: Some(pb::route::Action::Respond(pb::FixedResponse {
                        status: 204,
                        body: String::new(),
                        headers: vec![pb::Header {
                            name: "x-a".into(),
                            value: "1".into(),
                        }],
                    })),
                    ..Default::default()
                }],
                upstream_response_timeout_ms: Some(700),
                upstream_weights: vec![],
                https_redirect: None,
                pool: Some(pb::UpstreamPool {
                    load_balancing: pb::LoadBalancing::LeastRequests.into(),
                    retries: 2,
                    health_check: None,
                    passive_health: Some(pb::PassiveHealth {
                        consecutive_failures: 0,
                        cooldown_ms: 5,
                    }),
                    limits: None,
                }),
                ..Default::default()
            }],
            rate_limit: None,
            upstream_response_timeout_ms: 0,
            body_limit_bytes: 100,
            trusted_proxies: vec!["10.0.0.0/8".into(), "::1/128".into()],
            log_level: "info".into(),
            default_tls_site: String::new(),
            merge_slashes: None,
            escaped_slashes: 0,
        }),
        certificates: vec![],
        acme_challenges: vec![],
    }
}

/// `snapshot()` with a TLS listener and a certificate for its site.
fn tls_snapshot() -> pb::Snapshot {
    let mut s = snapshot();
    s.static_settings.as_mut().unwrap().listeners[0].tls = true;
    s.dynamic.as_mut().unwrap().sites[0].tls = pb::SiteTls::Files.into();
    let (chain_pem, key_pem) = certs::test_pem(&["a.example"]);
    s.certificates = vec![pb::Certificate {
        site: "a.example".into(),
        names: vec!["a.example".into()],
        chain_pem,
        key_pem,
        not_after_unix: 4_000_000_000,
        source: "files".into(),
    }];
    s
}

#[test]
fn acme_challenges_convert_and_unknown_kinds_are_refused() {
    let mut s = snapshot();
    // As controld builds it: with the critical acmeIdentifier extension.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7; 32])];
    let certificate_pem = params.self_signed(&key).unwrap().pem();
    let key_pem = key.serialize_pem();
    s.acme_challenges = vec![
        pb::AcmeChallenge {
            r#type: pb::AcmeChallengeType::Http01.into(),
            name: "a.example".into(),
            token: "tok-EN_1".into(),
            key_authorization: "tok-EN_1.thumb".into(),
            ..Default::default()
        },
        pb::AcmeChallenge {
            r#type: pb::AcmeChallengeType::TlsAlpn01.into(),
            name: "A.example".into(),
            certificate_pem,
            key_pem,
            ..Default::default()
        },
    ];
    let spec = Spec::try_from(s.clone()).unwrap();
    assert_eq!(spec.challenges.http["tok-EN_1"], "tok-EN_1.thumb");
    assert!(spec.challenges.tls_alpn.contains_key("a.example"));

    let mut bad = s.clone();
    bad.acme_challenges[0].token = "../x".into();
    assert!(matches!(
        Spec::try_from(bad),
        Err(SnapshotError::Challenge { .. })
    ));
    let mut unknown = s.clone();
    unknown.acme_challenges[0].r#type = 99;
    let err = Spec::try_from(unknown).unwrap_err();
    assert!(err.to_string().contains("unknown challenge type"), "{err}");

    // Delivered apart from snapshots, one that does not check is named and the others are
    // answered all the same.
    let mut list = s.acme_challenges;
    list[1].key_pem = "not a key".into();
    let (answered, errors) = crate::convert::Challenges::delivered(&list);
    assert_eq!(answered.http["tok-EN_1"], "tok-EN_1.thumb");
    assert!(answered.tls_alpn.is_empty());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("A.example"), "{}", errors[0]);
}

#[test]
fn tls_listeners_and_certificates_convert() {
    let mut s = tls_snapshot();
    s.dynamic.as_mut().unwrap().default_tls_site = "a.example".into();
    s.dynamic.as_mut().unwrap().sites[0].https_redirect = Some(false);
    let spec = Spec::try_from(s).unwrap();
    assert!(spec.statics.listeners[0].tls);
    let site = &spec.sites[0];
    let certificate = site.certificate.as_ref().unwrap();
    assert_eq!(certificate.names, ["a.example"]);
    assert_eq!(certificate.key.cert.len(), 1);
    assert!(!site.https_redirect);
    assert_eq!(spec.default_tls_site.as_deref(), Some("a.example"));
    assert!(
        !format!("{spec:?}").contains("PRIVATE KEY"),
        "Debug shows no key"
    );
    assert!(
        Spec::try_from(snapshot()).unwrap().sites[0].https_redirect,
        "absent means on"
    );
}

#[test]
fn a_bad_certificate_refuses_the_snapshot() {
    // A key from another pair.
    let mut s = tls_snapshot();
    s.certificates[0].key_pem = certs::test_pem(&["a.example"]).1;
    let e = Spec::try_from(s).unwrap_err().to_string();
    assert_eq!(
        e,
        "certificate of site \"a.example\": the private key does not match the certificate"
    );
    assert!(!e.contains("BEGIN"), "no key material in the NACK");

    let mut s = tls_snapshot();
    s.certificates[0].key_pem = "junk".into();
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("no usable private key")
    );

    let mut s = tls_snapshot();
    s.certificates[0].chain_pem = String::new();
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("no certificate in the chain")
    );

    let mut s = tls_snapshot();
    s.certificates[0].site = "b.example".into();
    assert_eq!(
        Spec::try_from(s).unwrap_err().to_string(),
        "certificate of site \"b.example\": no site has this name"
    );

    let mut s = tls_snapshot();
    let twice = s.certificates[0].clone();
    s.certificates.push(twice);
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("more than one certificate")
    );

    let mut s = tls_snapshot();
    s.dynamic.as_mut().unwrap().default_tls_site = "nope.example".into();
    assert!(matches!(
        Spec::try_from(s),
        Err(SnapshotError::DefaultTlsSite { .. })
    ));
}

#[test]
fn a_good_snapshot_converts() {
    let spec = Spec::try_from(snapshot()).unwrap();
    assert_eq!(spec.statics.shutdown_timeout, Duration::from_millis(1500));
    let prefixes: Vec<_> = spec.sites[0]
        .routes
        .iter()
        .map(|r| r.path_prefix.as_str())
        .collect();
    assert_eq!(prefixes, ["/api", "/"], "longest prefix first");
    let upstreams: Vec<_> = spec.sites[0]
        .upstreams()
        .map(|u| u.spec.to_string())
        .collect();
    assert_eq!(upstreams, ["http://127.0.0.1:9000"]);
    assert_eq!(spec.sites[0].rate_limit.unwrap().burst.get(), 2);
    assert_eq!(spec.trusted_proxies.len(), 2);
    let pool = &spec.sites[0].pool;
    assert_eq!(
        (pool.policy, pool.retries, pool.passive),
        (Policy::LeastRequests, 2, None),
        "0 failures: no ejection"
    );
    assert_eq!(
        spec.statics.request_header_timeout,
        Duration::from_secs(30),
        "0 means the default"
    );
    assert_eq!(
        spec.statics.upstream_connect_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(spec.upstream_response_timeout, Duration::from_secs(60));
    assert_eq!(
        spec.sites[0].upstream_response_timeout,
        Some(Duration::from_millis(700))
    );
    assert_eq!(spec.statics.max_request_headers, 100, "0 means the default");
    assert_eq!(
        spec.statics.max_request_header_bytes, 8192,
        "never below hyper's minimum"
    );
    assert_eq!(spec.statics.admin_address, None, "empty means none");

    let mut s = snapshot();
    s.static_settings.as_mut().unwrap().admin_address = "127.0.0.1:9901".into();
    let spec = Spec::try_from(s).unwrap();
    assert_eq!(
        spec.statics.admin_address,
        Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
    );
}

#[test]
fn values_that_would_exhaust_memory_or_corrupt_framing_are_refused() {
    let refused = |edit: &dyn Fn(&mut pb::Snapshot)| {
        let mut s = snapshot();
        edit(&mut s);
        Spec::try_from(s).unwrap_err().to_string()
    };
    let e = refused(&|s| {
        let site = &mut s.dynamic.as_mut().unwrap().sites[0];
        site.upstream_weights = vec![u32::MAX];
    });
    assert!(e.contains("weight"), "{e}");
    let e = refused(&|s| {
        let site = &mut s.dynamic.as_mut().unwrap().sites[0];
        site.upstreams = (0..200).map(|i| format!("http://127.0.0.{i}:80")).collect();
        site.upstream_weights = vec![1000; 200];
    });
    assert!(e.contains("add up to 200000"), "{e}");
    for name in [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "upgrade",
    ] {
        let e = refused(&|s| {
            let route = &mut s.dynamic.as_mut().unwrap().sites[0].routes[0];
            if let Some(pb::route::Action::Respond(r)) = &mut route.action {
                r.headers.push(pb::Header {
                    name: name.into(),
                    value: "1".into(),
                });
            }
        });
        assert!(e.contains("set by proxyd itself"), "{name}: {e}");
    }
    let e = refused(&|s| {
        let site = &mut s.dynamic.as_mut().unwrap().sites[0];
        site.pool.as_mut().unwrap().retries = 1_000_000;
    });
    assert!(e.contains("retries"), "{e}");
    let e = refused(&|s| s.dynamic.as_mut().unwrap().escaped_slashes = 9);
    assert!(e.contains("escaped_slashes"), "{e}");
}

#[test]
fn hardening_settings_default_when_absent_and_convert_when_set() {
    let spec = Spec::try_from(snapshot()).unwrap();
    assert_eq!(spec.statics.limits, ConnectionLimits::default());
    assert_eq!(spec.sites[0].pool.limits, UpstreamLimits::default());
    assert_eq!(spec.paths, PathRules::default());

    let mut s = snapshot();
    s.static_settings.as_mut().unwrap().connection_limits = Some(pb::ConnectionLimits {
        max_connections: 5,
        max_connections_per_ip: u32::MAX,
        http2_idle_timeout_ms: 1500,
        ..Default::default()
    });
    s.dynamic.as_mut().unwrap().escaped_slashes = pb::EscapedSlashes::Keep.into();
    s.dynamic.as_mut().unwrap().merge_slashes = Some(false);
    let spec = Spec::try_from(s).unwrap();
    assert_eq!(spec.statics.limits.max_connections, 5);
    assert_eq!(spec.statics.limits.max_connections_per_ip, None, "no cap");
    assert_eq!(
        spec.statics.limits.http2_idle_timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(
        spec.statics.limits.http2_max_concurrent_streams, 100,
        "0 is the default"
    );
    assert!(spec.paths.keep_escaped_slashes && !spec.paths.merge_slashes);
}

#[test]
fn what_this_build_cannot_do_is_refused() {
    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().sites[0].tls = 42;
    assert_eq!(
        Spec::try_from(s).unwrap_err().to_string(),
        "sites[0]: unknown TLS mode 42"
    );

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().sites[0].upstream = Some(pb::UpstreamConnection {
        protocol: 42,
        tls: None,
    });
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("unknown upstream protocol 42")
    );

    let mut s = snapshot();
    let site = s.dynamic.as_ref().unwrap().sites[0].clone();
    s.dynamic.as_mut().unwrap().sites.push(site);
    assert!(matches!(
        Spec::try_from(s),
        Err(SnapshotError::DuplicateHostname { .. })
    ));

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().rate_limit = Some(pb::RateLimit {
        requests_per_second: 0,
        burst: 1,
    });
    assert!(matches!(
        Spec::try_from(s),
        Err(SnapshotError::RateLimit { .. })
    ));

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().sites[0].routes[0].action = None;
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("no action this proxyd knows")
    );

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().trusted_proxies = vec!["10.0.0.0/33".into()];
    assert!(matches!(
        Spec::try_from(s),
        Err(SnapshotError::TrustedProxy { .. })
    ));

    let mut s = snapshot();
    s.static_settings.as_mut().unwrap().listeners[0].name = "admin".into();
    assert_eq!(
        Spec::try_from(s).unwrap_err().to_string(),
        "listener name \"admin\" is reserved for the admin listener"
    );

    let mut s = snapshot();
    s.static_settings.as_mut().unwrap().admin_address = "localhost:9901".into();
    assert!(matches!(
        Spec::try_from(s),
        Err(SnapshotError::AdminAddress { .. })
    ));

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().sites[0]
        .pool
        .as_mut()
        .unwrap()
        .load_balancing = 9;
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("unknown load balancing policy 9")
    );

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().sites[0].upstream_weights = vec![1, 2];
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("2 weights for 1 upstreams")
    );

    let mut s = snapshot();
    s.dynamic = None;
    assert!(matches!(
        Spec::try_from(s),
        Err(SnapshotError::Missing { .. })
    ));
}

#[test]
fn https_upstreams_get_tls_and_what_cannot_work_is_refused() {
    let https = |connection: Option<pb::UpstreamConnection>| {
        let mut s = snapshot();
        let site = &mut s.dynamic.as_mut().unwrap().sites[0];
        site.upstreams = vec!["https://127.0.0.1:8443".into()];
        site.upstream = connection;
        Spec::try_from(s)
    };
    let spec = https(None).unwrap();
    let upstream = spec.sites[0].upstreams().next().unwrap();
    assert_eq!(upstream.connection.protocol, Protocol::Auto);
    let tls = upstream.connection.tls.as_ref().expect("TLS for https://");
    assert_eq!(
        tls.connector.config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );

    let h2c = https(Some(pb::UpstreamConnection {
        protocol: pb::UpstreamProtocol::H2c.into(),
        tls: None,
    }));
    assert!(h2c.unwrap_err().to_string().contains("h2c needs http://"));

    let bad_ca = https(Some(pb::UpstreamConnection {
        protocol: 0,
        tls: Some(pb::UpstreamTls {
            ca_pem: "not a certificate".into(),
            ..Default::default()
        }),
    }));
    assert!(bad_ca.unwrap_err().to_string().contains("upstream_tls CA"));

    let half_client = https(Some(pb::UpstreamConnection {
        protocol: 0,
        tls: Some(pb::UpstreamTls {
            client_cert_pem: "x".into(),
            ..Default::default()
        }),
    }));
    assert!(
        half_client
            .unwrap_err()
            .to_string()
            .contains("needs its key")
    );

    let mut s = snapshot();
    s.dynamic.as_mut().unwrap().sites[0].upstream = Some(pb::UpstreamConnection {
        protocol: pb::UpstreamProtocol::H2.into(),
        tls: None,
    });
    assert!(
        Spec::try_from(s)
            .unwrap_err()
            .to_string()
            .contains("h2 needs https://")
    );
}

#[test]
fn header_rules_refuse_framing_headers_and_unknown_placeholders() {
    let rules = |name: &str, value: &str| {
        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().sites[0].request_headers = Some(pb::HeaderRules {
            set: vec![pb::Header {
                name: name.into(),
                value: value.into(),
            }],
            ..Default::default()
        });
        Spec::try_from(s).map(|_| ())
    };
    assert!(rules("x-env", "prod").is_ok());
    assert!(
        rules("host", "backend.internal").is_ok(),
        "Host may be set upstream"
    );
    assert!(rules("x-ip", "{client_ip}").is_ok());
    for framing in [
        "transfer-encoding",
        "content-length",
        "connection",
        "te",
        "upgrade",
    ] {
        assert!(rules(framing, "x").is_err(), "{framing}");
    }
    assert!(
        rules("x-a", "{nope}")
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder")
    );
    assert!(rules("x-a", "{client_ip").is_err());
}

#[tokio::test]
async fn only_upstreams_new_to_the_data_plane_are_looked_up() {
    // Issue 20 §3: a version that changes a certificate or a challenge must not be refused for
    // a passing DNS failure of an upstream already in use.
    let mut wire = snapshot();
    if let Some(site) = wire.dynamic.as_mut().and_then(|d| d.sites.first_mut()) {
        site.upstreams = vec!["http://upstream.invalid:80".into()];
    }
    let spec = Spec::try_from(wire).unwrap();
    let known = std::collections::HashSet::from(["http://upstream.invalid:80".to_owned()]);
    assert!(
        crate::dataplane::check_upstreams_resolve(&spec, &known)
            .await
            .is_ok()
    );
    let refused = crate::dataplane::check_upstreams_resolve(&spec, &Default::default())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("upstream.invalid"),
        "{refused}"
    );
}
