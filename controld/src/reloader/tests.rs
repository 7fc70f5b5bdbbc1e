//! The reload flow of the seed, proven on a real file and a real state directory.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config;
use crate::dataplanes::{Plane, PlaneResult};

struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let f = Fixture { dir, path };
        f.write("http://127.0.0.1:9001", "");
        f
    }

    fn write(&self, upstream: &str, extra: &str) {
        let text = format!(
            "{extra}\n[control]\nstate_dir = \"{}\"\n[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [[sites]]\nhostnames = [\"a.example\"]\nupstreams = [\"{upstream}\"]\n",
            self.dir.path().join("state").display()
        );
        std::fs::write(&self.path, text).unwrap();
    }

    /// The site of [`Fixture::write`], with `tls = "acme"`, a TLS listener and an `[acme]`.
    fn write_acme(&self, upstream: &str) {
        self.write(
            upstream,
            "[acme]\ndirectory_url = \"https://ca.example/dir\"\n",
        );
        let text = std::fs::read_to_string(&self.path).unwrap().replace(
            "name = \"http\"\naddress = \"127.0.0.1:0\"\n",
            "name = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [[proxy.listeners]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\ntls = true\n",
        ) + "tls = \"acme\"\n";
        std::fs::write(&self.path, text).unwrap();
    }

    fn reloader(&self, planes: Arc<DataPlanes>) -> Reloader {
        let (config, text) = config::load_with_text(&self.path).unwrap();
        Reloader::start(
            &self.path,
            config,
            &text,
            planes,
            Duration::from_secs(5),
            None,
            Default::default(),
        )
        .unwrap()
    }
}

fn upstream(current: &Current) -> String {
    current.config.dynamic.sites[0].upstreams[0].to_string()
}

/// The new value `report` gives for the live setting `field`, when the reload changed it.
fn live_change<'a>(report: &'a ReloadReport, field: &str) -> Option<&'a str> {
    let change = report
        .diff
        .limits_changed
        .iter()
        .find(|c| c.field == field)?;
    Some(&change.new)
}

fn plane(name: &str) -> Plane {
    Plane {
        node_id: name.into(),
        pid: 1,
        build_version: "test".into(),
        applied_version: 0,
        applied_hash: String::new(),
        acked_version: 0,
        acked_hash: String::new(),
        sent_version: 0,
        last_nack: None,
        listeners: vec![],
        connected_at_unix_ms: 0,
        answers_challenges: true,
        challenges_applied: 0,
        challenges_error: String::new(),
        traffic: None,
    }
}

/// A self-signed certificate for `a.example`, as ACME would add it.
fn acme_certificate() -> crate::config::Certificate {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    crate::config::check_pem(&cert.pem(), &key.serialize_pem(), std::path::Path::new("t")).unwrap()
}

#[tokio::test]
async fn a_valid_edit_is_published_and_visible_after_the_swap() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    let mut rx = r.subscribe();
    assert_eq!(r.current().version, 1);

    f.write("http://127.0.0.1:9002", "");
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!((report.previous_version, report.version), (1, 2));
    assert_eq!(report.diff.sites_modified, ["a.example"]);
    assert!(rx.has_changed().unwrap());
    let seen = rx.borrow_and_update().clone();
    assert_eq!(
        (seen.version, upstream(&seen)),
        (2, "http://127.0.0.1:9002".to_owned())
    );
    assert_eq!(seen.content.versioned(2).version, 2);
}

#[tokio::test]
async fn an_invalid_edit_is_rejected_and_the_old_snapshot_stays() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    let mut rx = r.subscribe();
    rx.borrow_and_update();

    f.write(
        "ftp://nope",
        "[rate_limit]\nrequests_per_second = 0\nburst = 1\n",
    );
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Rejected);
    assert_eq!(report.version, 1);
    let messages: Vec<_> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].contains("rate_limit.requests_per_second: must be greater than 0"));
    assert!(messages[1].contains("sites[0].upstreams[0]: invalid upstream URL"));
    assert!(!rx.has_changed().unwrap(), "nothing may be published");
    assert_eq!(upstream(&r.current()), "http://127.0.0.1:9001");
    assert_eq!(r.last_reload().unwrap().outcome, Outcome::Rejected);
}

#[tokio::test]
async fn identical_content_is_a_no_op_unless_forced() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    let mut rx = r.subscribe();
    rx.borrow_and_update();

    // Comments and whitespace do not change the content.
    std::fs::write(
        &f.path,
        format!("# a comment\n{}", std::fs::read_to_string(&f.path).unwrap()),
    )
    .unwrap();
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!((report.outcome, report.version), (Outcome::Unchanged, 1));
    assert!(report.diff.is_empty());
    assert!(!rx.has_changed().unwrap());

    let report = r
        .reload(ReloadOptions {
            force: true,
            ..Default::default()
        })
        .await;
    assert_eq!((report.outcome, report.version), (Outcome::Applied, 2));
    assert!(rx.has_changed().unwrap());
}

#[tokio::test]
async fn a_dry_run_reports_the_diff_and_publishes_nothing() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write("http://127.0.0.1:9002", "");
    let report = r
        .reload(ReloadOptions {
            dry_run: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        (report.outcome, report.previous_version, report.version),
        (Outcome::DryRun, 1, 2)
    );
    assert_eq!(report.diff.sites_modified, ["a.example"]);
    assert_eq!(r.current().version, 1);
    assert!(r.last_reload().is_none());
    f.write("http://127.0.0.1:9001", "");
    let report = r
        .reload(ReloadOptions {
            dry_run: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        (report.outcome, report.version),
        (Outcome::DryRun, 1),
        "a no-op stays a no-op"
    );
}

#[tokio::test]
async fn static_changes_are_named_in_warnings_and_the_dynamic_part_applies() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write(
        "http://127.0.0.1:9002",
        "[proxy]\nshutdown_timeout = \"5s\"\n[logging]\nformat = \"text\"\n",
    );
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Applied);
    let fields: Vec<_> = report
        .diff
        .static_changed
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(fields, ["logging.format"]);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].starts_with("logging.format changed from json to text"),
        "{:?}",
        report.warnings
    );
    // proxyd applies [proxy] live: a change, not a warning.
    assert_eq!(
        live_change(&report, "proxy.shutdown_timeout"),
        Some("5s"),
        "{:?}",
        report.diff
    );
    assert_eq!(upstream(&r.current()), "http://127.0.0.1:9002");
}

#[tokio::test]
async fn concurrent_reloads_are_serialized_and_the_second_reads_the_latest_file() {
    let f = Fixture::new();
    let planes = Arc::new(DataPlanes::default());
    let r = Arc::new(f.reloader(planes.clone()));
    // A data plane that answers only when told to keeps the first reload inside the mutex.
    let reg = planes.register(plane("slow"));

    f.write("http://127.0.0.1:9002", "");
    let first = tokio::spawn({
        let r = r.clone();
        async move { r.reload(ReloadOptions::default()).await }
    });
    let mut rx = r.subscribe();
    rx.wait_for(|c| c.version == 2).await.unwrap();

    let second = tokio::spawn({
        let r = r.clone();
        async move { r.reload(ReloadOptions::default()).await }
    });
    // The second request is queued behind the first; the file changes while it waits.
    tokio::task::yield_now().await;
    f.write("http://127.0.0.1:9003", "");
    assert!(!second.is_finished());
    planes.acked(reg.id, 2, vec![]);

    let first = first.await.unwrap();
    assert_eq!((first.outcome, first.version), (Outcome::Applied, 2));
    assert_eq!(first.data_planes[0].result, PlaneResult::Acked);
    rx.wait_for(|c| c.version == 3).await.unwrap();
    planes.acked(reg.id, 3, vec![]);
    let second = second.await.unwrap();
    assert_eq!(
        (second.outcome, second.previous_version, second.version),
        (Outcome::Applied, 2, 3)
    );
    assert_eq!(upstream(&r.current()), "http://127.0.0.1:9003");
}

#[tokio::test]
async fn a_reload_names_what_each_data_plane_did() {
    let f = Fixture::new();
    let planes = Arc::new(DataPlanes::default());
    let r = Arc::new(
        Reloader::start(
            &f.path,
            config::load(&f.path).unwrap(),
            &std::fs::read_to_string(&f.path).unwrap(),
            planes.clone(),
            Duration::from_millis(300),
            None,
            Default::default(),
        )
        .unwrap(),
    );
    let ok = planes.register(plane("ok"));
    let refuses = planes.register(plane("refuses"));
    let _silent = planes.register(plane("silent"));
    let gone = planes.register(plane("gone"));

    f.write("http://127.0.0.1:9002", "");
    let task = tokio::spawn({
        let r = r.clone();
        async move { r.reload(ReloadOptions::default()).await }
    });
    r.subscribe().wait_for(|c| c.version == 2).await.unwrap();
    planes.acked(ok.id, 2, vec![]);
    planes.nacked(refuses.id, 2, "no".into(), 1);
    drop(gone);
    let report = task.await.unwrap();
    let results: Vec<_> = report
        .data_planes
        .iter()
        .map(|p| (p.node_id.as_str(), p.result))
        .collect();
    assert_eq!(
        results,
        [
            ("ok", PlaneResult::Acked),
            ("refuses", PlaneResult::Nacked),
            ("silent", PlaneResult::TimedOut),
            ("gone", PlaneResult::Disconnected),
        ]
    );
    assert_eq!(
        (
            report.data_planes[1].error.as_str(),
            report.data_planes[1].serving_version
        ),
        ("no", 1)
    );
}

#[tokio::test]
async fn versions_keep_increasing_across_restarts() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write("http://127.0.0.1:9002", "");
    assert_eq!(r.reload(ReloadOptions::default()).await.version, 2);
    drop(r);

    // Same content as last published: the version is kept, so data planes see no change.
    assert_eq!(f.reloader(Arc::default()).current().version, 2);
    // Content changed while controld was down: the next version.
    f.write("http://127.0.0.1:9003", "");
    assert_eq!(f.reloader(Arc::default()).current().version, 3);
}

#[tokio::test]
async fn rollback_publishes_an_earlier_config_as_a_new_version_and_history_lists_it() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write("http://127.0.0.1:9002", "");
    assert_eq!(r.reload(ReloadOptions::default()).await.version, 2);

    let report = r
        .rollback(
            None,
            Origin {
                source: String::new(),
                uid: Some(0),
                pid: Some(7),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (report.outcome, report.previous_version, report.version),
        (Outcome::Applied, 2, 3)
    );
    assert_eq!(
        upstream(&r.current()),
        "http://127.0.0.1:9001",
        "version 1's routing is back"
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("on disk differs from what now runs (rollback to 1)")),
        "{:?}",
        report.warnings
    );

    let history = r.history();
    let sources: Vec<_> = history
        .iter()
        .map(|e| (e.version, e.source.as_str()))
        .collect();
    assert_eq!(
        sources,
        [(3, "rollback to 1"), (2, "reload"), (1, "startup")]
    );
    assert_eq!((history[0].uid, history[0].pid), (Some(0), Some(7)));
    assert_eq!(history[1].summary, "1 site modified: a.example");

    // Rolling back to what already serves changes nothing.
    let report = r.rollback(Some(3), Origin::default()).await.unwrap();
    assert_eq!((report.outcome, report.version), (Outcome::Unchanged, 3));
    assert!(matches!(
        r.rollback(Some(99), Origin::default()).await,
        Err(RollbackError::UnknownVersion(99))
    ));
}

#[tokio::test]
async fn there_is_nothing_to_roll_back_to_on_a_fresh_state_dir() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    assert!(matches!(
        r.rollback(None, Origin::default()).await,
        Err(RollbackError::NothingEarlier)
    ));
}

#[tokio::test]
async fn a_dry_run_does_not_wait_for_a_reload_in_progress() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    // A real reload holds the lock while it waits for its data planes.
    let _reload_in_progress = r.lock.lock().await;
    f.write("http://127.0.0.1:9002", "");
    let report = tokio::time::timeout(
        Duration::from_secs(5),
        r.reload(ReloadOptions {
            dry_run: true,
            ..Default::default()
        }),
    )
    .await
    .expect("a dry run answers at once");
    assert_eq!((report.outcome, report.version), (Outcome::DryRun, 2));
    assert_eq!(report.diff.sites_modified, ["a.example"]);
}

#[tokio::test]
async fn an_unchanged_reload_sends_the_version_again_to_a_data_plane_behind() {
    let f = Fixture::new();
    let planes: Arc<DataPlanes> = Arc::default();
    let r = f.reloader(planes.clone());
    let registration = planes.register(plane("dp"));
    let id = registration.id;
    planes.nacked(id, 1, "cannot bind".into(), 0);

    // The data plane answers the resend: a refusal again, then (the second time) an ACK.
    let answering = planes.clone();
    let resend = registration.resend.clone();
    let answers = tokio::spawn(async move {
        resend.notified().await;
        answering.nacked(id, 1, "cannot bind".into(), 0);
        resend.notified().await;
        answering.acked(id, 1, vec![]);
    });
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Unchanged);
    assert_eq!(report.data_planes.len(), 1, "{report:?}");
    assert_eq!(report.data_planes[0].result, PlaneResult::Nacked);
    assert_eq!(report.data_planes[0].error, "cannot bind");

    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.data_planes[0].result, PlaneResult::Acked);
    answers.await.unwrap();

    // In sync: nothing is sent again and nothing is reported.
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Unchanged);
    assert!(report.data_planes.is_empty());
}

#[tokio::test]
async fn a_snapshot_larger_than_data_planes_accept_is_refused() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    let mut content = r.current().content.clone();
    content.snapshot.certificates.push(proto::v1::Certificate {
        site: "a.example".into(),
        chain_pem: "x".repeat(proto::MAX_SNAPSHOT_BYTES),
        ..Default::default()
    });
    let d = oversize(&content, &f.path).expect("too large");
    assert!(d.message.contains("data planes accept"), "{d}");
    assert!(oversize(&r.current().content, &f.path).is_none());
}

#[tokio::test]
async fn static_settings_controld_did_not_apply_are_reported_until_it_restarts() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write("http://127.0.0.1:9001", "");
    let text = std::fs::read_to_string(&f.path)
        .unwrap()
        .replace("[control]\n", "[control]\nallowed_uids = [4242]\n");
    std::fs::write(&f.path, &text).unwrap();
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Unchanged);
    assert!(
        report.warnings.iter().any(
            |w| w.contains("control.allowed_uids") && w.contains("needs a restart of controld")
        ),
        "{:?}",
        report.warnings
    );
    // A later change of a dynamic setting publishes; the unapplied static one is still named.
    std::fs::write(&f.path, text.replace("9001", "9002")).unwrap();
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Applied);
    let report = r.reload(ReloadOptions::default()).await;
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("controld still runs with") && w.contains("allowed_uids")),
        "{:?}",
        report.warnings
    );
    // control.metrics_address is not among them: controld applies it on reload.
    std::fs::write(
        &f.path,
        text.replace(
            "[control]\n",
            "[control]\nmetrics_address = \"127.0.0.1:0\"\n",
        ),
    )
    .unwrap();
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.contains("metrics_address")),
        "{:?}",
        report.warnings
    );
}

#[tokio::test]
async fn validate_reads_no_fifo_and_bounds_concurrent_checks() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    let fifo = f.dir.path().join("cert.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let text = std::fs::read_to_string(&f.path).unwrap().replace(
        "upstreams = [",
        &format!(
            "tls = {{ cert_file = \"{0}\", key_file = \"{0}\" }}\nupstreams = [",
            fifo.display()
        ),
    ) + "[[proxy.listeners]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\ntls = true\n";
    let report = tokio::time::timeout(Duration::from_secs(5), r.validate(text, f.path.clone()))
        .await
        .expect("a FIFO never blocks a check")
        .unwrap();
    let messages: Vec<_> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        messages.iter().any(|m| m.contains("not a regular file")),
        "{messages:#?}"
    );

    let held: Vec<_> = (0..MAX_CONCURRENT_CHECKS)
        .map(|_| r.check_permit().unwrap())
        .collect();
    assert!(matches!(
        r.validate(String::new(), f.path.clone()).await,
        Err(CheckError::Busy)
    ));
    drop(held);
    assert!(r.validate(String::new(), f.path.clone()).await.is_ok());
}

#[tokio::test]
async fn acme_versions_take_the_commit_path_and_rollback_skips_them() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write("http://127.0.0.1:9002", "");
    assert_eq!(
        r.reload(ReloadOptions::default()).await.outcome,
        Outcome::Applied
    );
    // The site takes its certificate from ACME: config version 3.
    f.write_acme("http://127.0.0.1:9002");
    assert_eq!(
        r.reload(ReloadOptions::default()).await.outcome,
        Outcome::Applied
    );
    // Two ACME versions on top of it: a certificate, then another.
    let published = r
        .publish_acme("acme: certificate", |o| {
            o.certificates
                .insert("a.example".into(), acme_certificate());
        })
        .await
        .unwrap();
    assert_eq!((published.version, published.published), (4, true));
    let published = r
        .publish_acme("acme: renewed", |o| {
            o.certificates
                .insert("a.example".into(), acme_certificate());
        })
        .await
        .unwrap();
    assert_eq!(published.version, 5);
    // Like a reload: the last reload and the history, with the config text.
    assert_eq!(r.last_reload().unwrap().version, 5);
    let history = r.history();
    assert_eq!(history[0].kind, Kind::Certificate);
    assert_eq!(history[0].source, "acme");
    assert!(r.config_text(5).unwrap().contains("9002"));

    // Without a version, a rollback goes back to the config before the serving one (2), not to
    // an ACME version with the same config.
    let report = r.rollback(None, Origin::default()).await.unwrap();
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert!(!r.current().text.contains("[acme]"), "{}", r.current().text);
    assert_eq!(upstream(&r.current()), "http://127.0.0.1:9002");
}

#[tokio::test]
async fn challenges_are_not_versions_and_a_data_plane_refusing_the_config_still_answers_them() {
    // Issue 20 §3: a challenge was published as a new config version, so one data plane that
    // refused the config failed every issuance. Now the set goes apart from versions, and is
    // answered whatever the data plane serves.
    let planes = Arc::new(DataPlanes::default());
    let f = Fixture::new();
    let r = f.reloader(planes.clone());
    let refusing = planes.register(plane("refusing"));
    planes.nacked(refusing.id, 1, "host does not resolve".into(), 0);
    let _old = planes.register(Plane {
        answers_challenges: false,
        ..plane("older-proxyd")
    });
    let challenge = crate::challenges::Challenge::Http01 {
        name: "a.example".into(),
        token: "tok".into(),
        key_authorization: "tok.thumb".into(),
    };
    let generation = r.challenges().current().generation;
    // The data plane answers the generation its stream delivers.
    let mut delivered = r.challenges().subscribe();
    let answering = {
        let planes = planes.clone();
        let id = refusing.id;
        tokio::spawn(async move {
            delivered.changed().await.unwrap();
            let generation = delivered.borrow().generation;
            planes.challenges_applied(id, generation, String::new());
        })
    };
    let outcomes = r.publish_challenges(|c| c.push(challenge)).await;
    answering.await.unwrap();
    let results: Vec<_> = outcomes
        .iter()
        .map(|o| (o.node_id.as_str(), o.result))
        .collect();
    assert_eq!(
        results,
        [
            ("refusing", PlaneResult::Acked),
            ("older-proxyd", PlaneResult::Nacked)
        ]
    );
    assert!(outcomes[1].error.contains("upgrade"), "{outcomes:?}");
    // Not a version: nothing was published, the snapshot holds no challenge.
    assert_eq!(r.current().version, 1);
    assert!(r.current().content.snapshot.acme_challenges.is_empty());
    assert_eq!(r.challenges().current().generation, generation + 1);
    // The same set again is no new generation.
    let same = r.challenges().change(|_| {});
    assert_eq!(same, generation + 1);
}

mod metrics_address;

#[tokio::test]
async fn validate_refuses_a_text_over_the_config_limit_and_files_over_their_budget() {
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    // Over the 4 MiB a config file may have, as a reload of it would be.
    let huge = format!(
        "# {}\n",
        "x".repeat(crate::config::MAX_CONFIG_BYTES as usize)
    );
    let report = r.validate(huge, f.path.clone()).await.unwrap();
    let messages: Vec<_> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        messages.iter().any(|m| m.contains("larger than")),
        "{messages:#?}"
    );

    // One 1 MiB file named by 60 routes (through `..` spellings, each a different path): it is
    // read once, but each place would copy it into the model and the snapshot, 60 MiB in all.
    let big = f.dir.path().join("big-ca.pem");
    std::fs::write(&big, "A".repeat(1 << 20)).unwrap();
    let sub = f.dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut text = std::fs::read_to_string(&f.path).unwrap();
    for i in 0..60 {
        let spelled = format!("{}/{}../big-ca.pem", sub.display(), "./".repeat(i));
        text.push_str(&format!(
            "[[sites.routes]]\npath_prefix = \"/r{i}\"\nupstreams = [\"https://127.0.0.1:9443\"]\n\
             upstream_tls = {{ ca_file = \"{spelled}\" }}\n"
        ));
    }
    let report = r.validate(text, f.path.clone()).await.unwrap();
    let messages: Vec<_> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("add up to more than 48 MiB")),
        "{:#?}",
        &messages[..messages.len().min(3)]
    );
}

#[tokio::test]
async fn a_history_entry_lost_in_a_crash_is_written_again_at_startup() {
    // Issue 20 §3: the history entry is written after the version is published; a crash in
    // between left a serving version with no history, and `rollback` counted back from the
    // wrong one.
    let f = Fixture::new();
    let r = f.reloader(Arc::default());
    f.write("http://127.0.0.1:9002", "");
    let report = r.reload(ReloadOptions::default()).await;
    assert_eq!(report.version, 2);
    drop(r);
    // The crash: version 2 is recorded as published, its history entry is not.
    let history = f.dir.path().join("state").join("history");
    std::fs::remove_file(history.join("2.json")).unwrap();
    std::fs::remove_file(history.join("2.toml")).unwrap();
    let r = f.reloader(Arc::default());
    assert_eq!(r.current().version, 2);
    let entries = r.history();
    assert_eq!(entries.first().map(|e| e.version), Some(2), "{entries:?}");
    // And a rollback goes to version 1, the one before the serving config.
    let report = r.rollback(None, Origin::default()).await.unwrap();
    assert_eq!(report.version, 3);
    assert!(
        upstream(&r.current()).contains("9001"),
        "{}",
        upstream(&r.current())
    );
}

#[tokio::test]
async fn an_acme_change_dropped_while_the_data_planes_answer_leaves_the_overlay_in_step() {
    // Issue 20 §3: publish_acme was not cancel-safe. A caller that timed out during the wait
    // for the data planes left the overlay behind the serving version, and the version that
    // followed served the old certificate again.
    let planes = Arc::new(DataPlanes::default());
    let f = Fixture::new();
    f.write_acme("http://127.0.0.1:9001");
    let r = f.reloader(planes.clone());
    // A data plane that never answers: the commit waits for it.
    let _silent = planes.register(plane("silent"));
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        r.publish_acme("acme: certificate", |o| {
            o.certificates
                .insert("a.example".into(), acme_certificate());
        }),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the caller gave up while the data plane was waited for"
    );
    assert_eq!(r.current().version, 2, "the version was published");
    assert_eq!(
        r.acme_overlay().certificates.len(),
        1,
        "the overlay is the serving version's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_keeps_its_place_until_its_work_ends_even_when_its_caller_hangs_up() {
    // Issue 20 §4: the place was the caller's, so cancel-and-retry ran any number of parses
    // at once past the limit of four.
    let f = Fixture::new();
    let r = Arc::new(f.reloader(Arc::default()));
    // A candidate that takes a while to check.
    let mut text = std::fs::read_to_string(&f.path).unwrap();
    for i in 0..40_000 {
        text.push_str(&format!(
            "[[sites]]\nhostnames = [\"s{i}.example\"]\nupstreams = [\"http://127.0.0.1:9\"]\n"
        ));
    }
    let callers: Vec<_> = (0..MAX_CONCURRENT_CHECKS)
        .map(|_| {
            let (r, text, path) = (r.clone(), text.clone(), f.path.clone());
            tokio::spawn(async move { r.validate(text, path).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while r.checks.available_permits() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checks never started"
        );
        tokio::task::yield_now().await;
    }
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    // The callers are gone; their work is not: no place is free.
    assert_eq!(r.checks.available_permits(), 0);
    assert!(matches!(
        r.validate(String::new(), f.path.clone()).await,
        Err(CheckError::Busy)
    ));
    // Until it ends.
    while r.checks.available_permits() < MAX_CONCURRENT_CHECKS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the places never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.validate(String::new(), f.path.clone()).await.is_ok());
}
