//! ACME once per fleet, on a real three-member etcd, three hosts and the real Pebble: one
//! issuer elected through a lease, the challenge answered on every node (Pebble validates
//! against a host that is not the issuer), the certificate served by every host, private keys
//! sealed with the fleet key in etcd; a renewal racing a reload; the issuer's controld gone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use controld::cluster::FleetKey;
use proxy_tests::fleet::{Hosts, watcher};
use proxy_tests::pebble::{Pebble, PebbleOptions, certificate_status, client_config};
use proxy_tests::{HTTPS_ON_PORT_0, MockUpstream, Setup, TestClock, eventually};

/// One test at a time: each starts a three-member etcd, three hosts and Pebble.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HOST: &str = "acme.test";

fn site(app: &MockUpstream, acme: &str) -> String {
    format!(
        "[[sites]]\nhostnames = [\"{HOST}\"]\nupstreams = [\"{}\"]\n{}\n",
        app.url(),
        if acme.is_empty() {
            String::new()
        } else {
            format!("tls = \"acme\"\n{acme}")
        }
    )
}

struct FleetAcme {
    challenge: &'static str,
    hosts: Hosts,
    pebble: Pebble,
    clock: Arc<TestClock>,
    key_file: std::path::PathBuf,
    _key_dir: tempfile::TempDir,
}

impl FleetAcme {
    /// Three hosts with the fleet key, serving the site on plain HTTP; web-1 made the fleet's
    /// issuer (its lease holds the issuer key) and Pebble validating against web-3.
    async fn start(app: &MockUpstream, challenge: &'static str) -> FleetAcme {
        let key_dir = tempfile::tempdir().unwrap();
        let key_file = key_dir.path().join("fleet.key");
        std::fs::write(
            &key_file,
            "8f3a6c1d2e4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeef\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let clock = Arc::new(TestClock::default());
        let setup = Setup {
            listeners: HTTPS_ON_PORT_0.to_owned(),
            acme: Some(controld::acme::AcmeOptions {
                clock: clock.clone(),
                recheck: Duration::from_millis(200),
                backoff_initial: Duration::from_millis(300),
                backoff_max: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(60),
            }),
            ..Setup::default()
        };
        let hosts = Hosts::start_with(
            &site(app, ""),
            &setup,
            &format!("key_file = \"{}\"", key_file.display()),
        )
        .await;
        // web-1 issues: the issuer key under web-1's own lease, as its controld would take it.
        let w = watcher(&hosts.etcd);
        let (kv, _) = w.etcd().get(&w.key("nodes/web-1")).await.unwrap();
        let kv = kv.unwrap();
        let state: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        let issuer = serde_json::json!({"node": "web-1", "instance": state["instance"]});
        assert!(
            w.etcd()
                .create(
                    &w.key("acme/issuer"),
                    issuer.to_string().into_bytes(),
                    kv.lease
                )
                .await
                .unwrap()
        );
        let pebble = Pebble::start(PebbleOptions {
            http_port: hosts.hosts[2].http.port(),
            tls_port: hosts.hosts[2].https.unwrap().port(),
            ..PebbleOptions::default()
        })
        .await;
        FleetAcme {
            challenge,
            hosts,
            pebble,
            clock,
            key_file,
            _key_dir: key_dir,
        }
    }

    fn body(&self, app: &MockUpstream) -> String {
        site(app, &self.pebble.acme_section(self.challenge))
    }

    /// The serial host `i` serves for the site (Admin.Certificates); empty while none.
    async fn serial(&self, i: usize) -> String {
        certificate_status(&self.hosts.hosts[i], HOST).await.serial
    }

    /// Waits until each of `hosts` serves a certificate other than `not`, the same on each,
    /// and a TLS client verifying against Pebble's root gets the site through each.
    async fn wait_served(&self, hosts: &[usize], not: &str) -> String {
        let serial = eventually("every host serving one new certificate", || async {
            let mut serials = Vec::new();
            for &i in hosts {
                serials.push(self.serial(i).await);
            }
            let first = serials[0].clone();
            (!first.is_empty() && first != not && serials.iter().all(|s| *s == first))
                .then_some(first)
        })
        .await;
        let roots = self.pebble.root().await;
        for &i in hosts {
            let answer = eventually("the site over TLS", || async {
                let stream = proxy_tests::tls::connect(
                    self.hosts.hosts[i].https.unwrap(),
                    HOST,
                    client_config(&roots),
                )
                .await
                .ok()?;
                let answer = proxy_tests::Conn::over(stream).await.get(HOST, "/").await;
                (answer.status == 200).then_some(answer)
            })
            .await;
            assert!(answer.body.starts_with("upstream"), "host {i}: {answer:?}");
        }
        serial
    }
}

/// Every value etcd holds for the fleet, by key.
async fn everything(hosts: &Hosts) -> Vec<(String, String)> {
    let w = watcher(&hosts.etcd);
    let (kvs, _) = w.etcd().prefix(b"/proxy/fleets/shop/").await.unwrap();
    kvs.into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// Every value ever written under the fleet's prefix (etcd keeps each revision until a
/// compaction, which these tests never run): what a backup of etcd's history holds.
async fn ever_written(hosts: &Hosts) -> Vec<(String, String)> {
    use controld::cluster::etcd::{Change, Watched};
    let w = watcher(&hosts.etcd);
    let (_, now) = w.etcd().get(b"/").await.unwrap();
    let mut watch = w.etcd().watch(b"/proxy/fleets/shop/", 1).await.unwrap();
    let mut seen = Vec::new();
    let mut at = 0;
    while at < now {
        match tokio::time::timeout(proxy_tests::DEADLINE, watch.recv()).await {
            Ok(Some(Ok(Watched::Changes { revision, changes }))) => {
                at = at.max(revision);
                for change in changes {
                    if let Change::Put(kv) = change {
                        at = at.max(kv.mod_revision);
                        seen.push((
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            String::from_utf8_lossy(&kv.value).into_owned(),
                        ));
                    }
                }
            }
            other => panic!("the history of etcd: {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn one_issuer_orders_every_host_answers_and_serves_and_etcd_holds_no_usable_key() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let t = FleetAcme::start(&app, "http-01").await;

    // web-2 publishes the site with tls = "acme" for the fleet.
    t.hosts.hosts[1].write_config(&t.body(&app));
    let reply = t.hosts.reload(1).await;
    assert_eq!(reply["outcome"], "applied", "{reply}");

    // web-1 orders; Pebble validates on web-3 (the challenge went to every node first); every
    // host serves the one certificate.
    t.wait_served(&[0, 1, 2], "").await;
    let all = everything(&t.hosts).await;
    let value = |suffix: &str| {
        all.iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {suffix} in {all:#?}"))
    };
    let issuer: serde_json::Value = serde_json::from_str(&value("acme/issuer")).unwrap();
    assert_eq!(issuer["node"], "web-1");
    let record: serde_json::Value =
        serde_json::from_str(&value(&format!("acme/certs/{HOST}"))).unwrap();
    assert_eq!(record["node"], "web-1", "issued once, by the issuer");
    assert_eq!(
        all.iter()
            .filter(|(k, _)| k.contains("/acme/accounts/"))
            .count(),
        1,
        "one account for the fleet: {all:#?}"
    );
    // No private key in clear anywhere in etcd, at any revision; the sealed one opens with
    // the fleet key.
    let history = ever_written(&t.hosts).await;
    assert!(history.iter().any(|(k, _)| k.ends_with("acme/challenges")));
    for (key, value) in history.iter().chain(&all) {
        assert!(!value.contains("PRIVATE KEY"), "{key} holds a key in clear");
    }
    let fleet_key = FleetKey::read(&t.key_file).unwrap();
    let opened = fleet_key
        .open(
            &format!("acme/certs/{HOST}"),
            record["key_sealed"].as_str().unwrap(),
        )
        .unwrap();
    assert!(String::from_utf8(opened).unwrap().contains("PRIVATE KEY"));
    // Every host keeps its copy (a restart with etcd away serves it).
    for env in &t.hosts.hosts {
        assert!(
            env.dir
                .path()
                .join(format!("state/acme/certs/{HOST}.pem"))
                .exists()
        );
    }
    // A node whose data planes answered records it.
    for node in ["web-1", "web-2", "web-3"] {
        let confirmed: serde_json::Value =
            serde_json::from_str(&value(&format!("acme/confirmed/{node}"))).unwrap();
        assert!(
            !confirmed["set"].as_str().unwrap().is_empty() && confirmed["error"] == "",
            "{node}: {confirmed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_racing_a_reload_both_land_and_another_node_issues_when_the_issuer_is_gone() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let other = MockUpstream::start("other").await;
    let mut t = FleetAcme::start(&app, "http-01").await;
    t.hosts.hosts[0].write_config(&t.body(&app));
    assert_eq!(t.hosts.reload(0).await["outcome"], "applied");
    let first = t.wait_served(&[0, 1, 2], "").await;

    // The certificate falls due on the issuer while web-3 reloads a new upstream: both land,
    // on every host.
    let due = certificate_status(&t.hosts.hosts[0], HOST)
        .await
        .not_after_unix
        - 3600;
    t.hosts.hosts[2].write_config(&t.body(&other));
    t.clock.set(UNIX_EPOCH + Duration::from_secs(due + 1));
    let reply = t.hosts.reload(2).await;
    assert_eq!(reply["outcome"], "applied", "{reply}");
    let renewed = t.wait_served(&[0, 1, 2], &first).await;
    t.clock.reset();
    let roots = t.pebble.root().await;
    for i in 0..3 {
        eventually("the new upstream over TLS", || async {
            let stream = proxy_tests::tls::connect(
                t.hosts.hosts[i].https.unwrap(),
                HOST,
                client_config(&roots),
            )
            .await
            .ok()?;
            let answer = proxy_tests::Conn::over(stream).await.get(HOST, "/").await;
            answer.body.starts_with("upstream other").then_some(())
        })
        .await;
    }

    // The issuer's controld goes: its lease lapses, another node issues from the fleet's
    // account and back-off, and the others serve what it issues.
    t.hosts.hosts[0].stop_controld().await;
    let w = watcher(&t.hosts.etcd);
    let next = eventually("another issuer", || async {
        let (kv, _) = w.etcd().get(&w.key("acme/issuer")).await.ok()?;
        let issuer: serde_json::Value = serde_json::from_slice(&kv?.value).ok()?;
        (issuer["node"] != "web-1").then(|| issuer["node"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(next == "web-2" || next == "web-3", "{next}");
    let accounts_before: Vec<_> = everything(&t.hosts)
        .await
        .into_iter()
        .filter(|(k, _)| k.contains("/acme/accounts/"))
        .collect();
    let due = certificate_status(&t.hosts.hosts[1], HOST)
        .await
        .not_after_unix
        - 3600;
    t.clock.set(UNIX_EPOCH + Duration::from_secs(due + 1));
    t.wait_served(&[1, 2], &renewed).await;
    t.clock.reset();
    let accounts_after: Vec<_> = everything(&t.hosts)
        .await
        .into_iter()
        .filter(|(k, _)| k.contains("/acme/accounts/"))
        .collect();
    assert_eq!(accounts_before, accounts_after, "the fleet's one account");
    let all = everything(&t.hosts).await;
    let record = all
        .iter()
        .find(|(k, _)| k.ends_with(&format!("acme/certs/{HOST}")))
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&record.1).unwrap();
    assert_eq!(record["node"], next.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn01_challenges_are_answered_by_every_host_with_their_key_sealed() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let t = FleetAcme::start(&app, "tls-alpn-01").await;
    t.hosts.hosts[0].write_config(&t.body(&app));
    assert_eq!(t.hosts.reload(0).await["outcome"], "applied");
    // Pebble dials web-3's TLS listener with ALPN acme-tls/1; web-1 issues.
    t.wait_served(&[0, 1, 2], "").await;
    let all = everything(&t.hosts).await;
    let challenges = all
        .iter()
        .find(|(k, _)| k.ends_with("acme/challenges"))
        .map(|(_, v)| v.clone())
        .unwrap();
    // The challenge's key went through etcd sealed, at every revision.
    let history = ever_written(&t.hosts).await;
    assert!(
        history
            .iter()
            .any(|(k, v)| k.ends_with("acme/challenges") && v.contains("\"key_sealed\":\"v1:")),
        "a TLS-ALPN-01 challenge with its key sealed"
    );
    for (key, value) in history.iter().chain(&all) {
        assert!(!value.contains("PRIVATE KEY"), "{key} holds a key in clear");
    }
    let record: serde_json::Value = serde_json::from_str(&challenges).unwrap();
    assert!(record["generation"].as_u64().unwrap() >= 2, "{record}");
}
