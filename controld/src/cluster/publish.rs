//! A reload or rollback in a fleet: checked here as this host would serve it, published as the
//! fleet's next version, applied here, and waited for on every live node.

use std::path::PathBuf;
use std::time::Duration;

use super::apply::{apply, wait_for_nodes};
use super::link::Link;
use super::report::{report_of, unreachable_report};
use super::store::{self, PublishError, Published, Publisher};
use crate::reloader::{Origin, Outcome, ReloadOptions, ReloadReport, Reloader};

/// Publishes the config file's fleet part as the fleet's next version, applies it here, and
/// waits until every live node has applied it or said why not: what `proxyctl reload` does on
/// any host of a fleet.
pub async fn reload(reloader: &Reloader, link: &Link, options: ReloadOptions) -> ReloadReport {
    let started = std::time::Instant::now();
    let (_, text) = match reloader.read_file().await {
        Ok(read) => read,
        Err(e) => {
            let current = reloader.current();
            return ReloadReport {
                diagnostics: e.diagnostics(reloader.config_path()),
                ..report_of(current.version)
            };
        }
    };
    if let Some(expected) = &options.if_text_hash
        && crate::snapshot::text_hash(&text) != *expected
    {
        return ReloadReport {
            outcome: Outcome::FileChanged,
            ..report_of(reloader.current().version)
        };
    }
    let split = match proxy_config::fleet::split(&text) {
        Ok(split) => split,
        Err(e) => {
            return ReloadReport {
                diagnostics: vec![crate::config::Diagnostic {
                    key_path: String::new(),
                    file: reloader.config_path().to_owned(),
                    line: u32::try_from(e.line).unwrap_or(u32::MAX),
                    column: 1,
                    message: e.message,
                }],
                ..report_of(reloader.current().version)
            };
        }
    };
    // Checked here first, as this host would serve it: an invalid file publishes nothing.
    let (head, _) = match link.fleet.head().await {
        Ok(head) => head,
        Err(e) => return unreachable_report(reloader, link, &e),
    };
    let previous = head.as_ref().map_or(0, |h| h.version);
    if options.if_version.is_some_and(|v| v != previous) {
        return ReloadReport {
            outcome: Outcome::Conflict,
            version: previous,
            previous_version: previous,
            ..report_of(previous)
        };
    }
    let (diagnostics, diff) = reloader
        .check_text(text.clone(), reloader.config_path().to_owned())
        .await;
    if !diagnostics.is_empty() {
        return ReloadReport {
            diagnostics,
            ..report_of(previous)
        };
    }
    let publisher = Publisher {
        source: options.origin.source.clone(),
        uid: options.origin.uid,
        pid: options.origin.pid,
        summary: diff.summary(),
    };
    if let Some(plan) = &options.canary {
        return super::canary::rollout(
            reloader,
            link,
            (&split.fleet, &publisher),
            plan,
            (options.if_version, options.force),
            previous,
            started,
        )
        .await;
    }
    publish_and_wait(
        reloader,
        link,
        &split.fleet,
        &publisher,
        (options.if_version, options.force),
        previous,
        started,
    )
    .await
}

/// Publishes `fleet_text` as the fleet's next version (`expected`: only while the fleet is at
/// that version; `force`: even when the fleet serves that text), applies it here, and waits for
/// every node live when it was published.
async fn publish_and_wait(
    reloader: &Reloader,
    link: &Link,
    fleet_text: &str,
    publisher: &Publisher,
    (expected, force): (Option<u64>, bool),
    previous: u64,
    started: std::time::Instant,
) -> ReloadReport {
    let published = link
        .fleet
        .publish(fleet_text, publisher, expected, force, None)
        .await;
    let (version, hash, new) = match published {
        Ok(Published::New(v)) => (v.version, v.hash, true),
        Ok(Published::Unchanged(head)) => (head.version, head.hash, false),
        Err(PublishError::Conflict { now }) => {
            return ReloadReport {
                outcome: Outcome::Conflict,
                version: now,
                ..report_of(previous)
            };
        }
        Err(e) => return unreachable_report(reloader, link, &e),
    };
    tracing::info!(version, node = link.node(), new, source = %publisher.source, "fleet version published");
    // The waiting list: the nodes live now (this one included once it records).
    let listed = tokio::time::timeout(reloader.ack_timeout(), link.fleet.nodes()).await;
    let nodes = listed.ok().and_then(Result::ok).unwrap_or_default();
    let local = apply(
        reloader,
        link,
        version,
        &hash,
        fleet_text,
        &publisher.source,
    )
    .await;
    let deadline = tokio::time::Instant::now() + reloader.ack_timeout() + Duration::from_secs(2);
    let waiting = super::apply::waiting_list(link, nodes);
    let outcomes = wait_for_nodes(link, version, &hash, &waiting, deadline).await;
    ReloadReport {
        outcome: if new {
            Outcome::Applied
        } else {
            Outcome::Unchanged
        },
        previous_version: previous,
        version,
        diagnostics: local.diagnostics,
        diff: local.diff,
        warnings: local.warnings,
        data_planes: outcomes,
        duration: started.elapsed(),
        canary: None,
    }
}

/// Why a fleet rollback could not be attempted.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("version {0} is not in the fleet's history (etcd keeps the last {kept})", kept = store::KEPT_VERSIONS)]
    UnknownVersion(u64),
    #[error("there is no earlier fleet version to roll back to")]
    NothingEarlier,
    #[error(transparent)]
    Etcd(#[from] PublishError),
}

/// Publishes fleet version `version` (`None`: the one before the fleet's version now) again,
/// as the fleet's next version, applied on every node like a reload. Checked on this host
/// first: rules may have tightened since.
pub async fn rollback(
    reloader: &Reloader,
    link: &Link,
    version: Option<u64>,
    origin: &Origin,
) -> Result<ReloadReport, RollbackError> {
    let started = std::time::Instant::now();
    let (head, _) = link.fleet.head().await?;
    let now = head.as_ref().map_or(0, |h| h.version);
    let target = match version {
        Some(v) => v,
        None => {
            let history = link.fleet.history().await?;
            let serving = head.as_ref().map(|h| h.hash.clone()).unwrap_or_default();
            // The newest version with other content than the fleet serves.
            history
                .iter()
                .find(|e| e.version < now && e.hash != serving)
                .map(|e| e.version)
                .ok_or(RollbackError::NothingEarlier)?
        }
    };
    let old = link
        .fleet
        .version(target)
        .await?
        .ok_or(RollbackError::UnknownVersion(target))?;
    let host = match reloader.read_text().await {
        Ok(text) => proxy_config::fleet::split(&text).map(|s| s.host),
        Err(message) => Err(proxy_config::fleet::SplitError { line: 0, message }),
    };
    let host = match host {
        Ok(host) => host,
        Err(e) => {
            return Ok(ReloadReport {
                diagnostics: vec![crate::config::Diagnostic {
                    key_path: String::new(),
                    file: reloader.config_path().to_owned(),
                    line: u32::try_from(e.line).unwrap_or(u32::MAX),
                    column: 1,
                    message: format!("this host's tables: {}", e.message),
                }],
                ..report_of(now)
            });
        }
    };
    let name = PathBuf::from(format!("fleet-version-{target}.toml"));
    let (diagnostics, diff) = reloader
        .check_text(proxy_config::fleet::join(&old.text, &host), name)
        .await;
    if !diagnostics.is_empty() {
        return Ok(ReloadReport {
            diagnostics,
            ..report_of(now)
        });
    }
    let publisher = Publisher {
        source: format!("rollback to {target}"),
        uid: origin.uid,
        pid: origin.pid,
        summary: diff.summary(),
    };
    Ok(publish_and_wait(
        reloader,
        link,
        &old.text,
        &publisher,
        (None, true),
        now,
        started,
    )
    .await)
}

impl crate::reloader::FleetHook for Link {
    fn reload<'a>(
        &'a self,
        reloader: &'a Reloader,
        options: ReloadOptions,
    ) -> crate::reloader::BoxFuture<'a, ReloadReport> {
        Box::pin(reload(reloader, self, options))
    }

    fn rollback<'a>(
        &'a self,
        reloader: &'a Reloader,
        version: Option<u64>,
        origin: Origin,
    ) -> crate::reloader::BoxFuture<'a, Result<ReloadReport, crate::reloader::RollbackError>> {
        Box::pin(async move {
            match rollback(reloader, self, version, &origin).await {
                Ok(report) => Ok(report),
                Err(RollbackError::UnknownVersion(v)) => {
                    Err(crate::reloader::RollbackError::UnknownVersion(v))
                }
                Err(RollbackError::NothingEarlier) => {
                    Err(crate::reloader::RollbackError::NothingEarlier)
                }
                Err(RollbackError::Etcd(e)) => Ok(unreachable_report(reloader, self, &e)),
            }
        })
    }
}
