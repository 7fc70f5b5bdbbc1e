//! Applying fleet versions here: one joined to this host's tables and reloaded locally, its
//! outcome recorded; following the fleet's head; and waiting for every node's answer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::applied::{Applied, save_applied};
use super::etcd::Watched;
use super::link::{Link, RETRY_FIRST, RETRY_MAX};
use super::report::report_of;
use super::store::{NodeState, PublishError};
use crate::dataplanes::{PlaneOutcome, PlaneResult};
use crate::reloader::{Origin, Outcome, ReloadReport, Reloader};

/// Applies fleet version `version` (its text `fleet_text`) here: joined to this host's tables
/// from the config file, reloaded, and the outcome recorded for the fleet.
pub(super) async fn apply(
    reloader: &Reloader,
    link: &Link,
    version: u64,
    hash: &str,
    fleet_text: &str,
    why: &str,
) -> ReloadReport {
    // One apply at a time (a reload's and the follower's), and never back to an older
    // version than this node applied: a reload that lost the race to a newer head leaves it.
    let _turn = link.apply_turn.lock().await;
    let newer = link
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .applied_version
        > version;
    if newer {
        return ReloadReport {
            outcome: Outcome::Unchanged,
            ..report_of(reloader.current().version)
        };
    }
    // Only this host's tables are taken from its file: its fleet part may be stale (a
    // certificate the fleet has since replaced), and is never served.
    let host = match reloader.read_text().await {
        Ok(text) => proxy_config::fleet::split(&text).map(|s| s.host),
        Err(message) => Err(proxy_config::fleet::SplitError { line: 0, message }),
    };
    let report = match host {
        Ok(host) => {
            let text = proxy_config::fleet::join(fleet_text, &host);
            let name = PathBuf::from(format!("fleet-version-{version}.toml"));
            let origin = Origin {
                source: format!("fleet version {version} ({why})"),
                uid: None,
                pid: None,
            };
            reloader.reload_text(text, name, origin).await
        }
        Err(e) => ReloadReport {
            diagnostics: vec![crate::config::Diagnostic {
                key_path: String::new(),
                file: reloader.config_path().to_owned(),
                line: u32::try_from(e.line).unwrap_or(u32::MAX),
                column: 1,
                message: format!("this host's tables: {}", e.message),
            }],
            ..report_of(reloader.current().version)
        },
    };
    let mut error = local_problem(&report);
    // ACK = applied: a node whose controld has no data plane connected serves nothing of it
    // yet (its proxyd is reconnecting, or down). Tried again until one is.
    if error.is_empty() && reloader.planes().list().is_empty() {
        error = NO_DATA_PLANE.to_owned();
    }
    if !error.is_empty() {
        tracing::warn!(version, node = link.node(), %error, "this node does not serve the fleet version");
    }
    if error.is_empty() {
        let applied = Applied {
            version,
            hash: hash.to_owned(),
            text: fleet_text.to_owned(),
        };
        let dir = link.state_dir.clone();
        let saved = tokio::task::spawn_blocking(move || save_applied(&dir, &applied)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(version, error = %e, "cannot keep the applied fleet version in the state directory; a restart starts from the config file's");
        }
    }
    let recorded = link
        .record(|state| {
            state.tried_version = version;
            if error.is_empty() {
                state.applied_version = version;
                state.applied_hash = hash.to_owned();
            }
            state.error = error.clone();
            // A canary's traffic as it applied: where the rollout's window starts.
            if link
                .canary_member
                .load(std::sync::atomic::Ordering::Acquire)
            {
                state.traffic = super::traffic::traffic_now(reloader);
            }
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(version, error = %e, "cannot record this node's state in etcd");
    }
    report
}

/// Why a node whose controld has no data plane does not serve a version; it is tried again as
/// soon as one subscribes.
const NO_DATA_PLANE: &str =
    "no data plane is connected to this host's controld: nothing serves the version here yet";

/// Why this host does not serve what `report` tried, in one line; empty when it does.
fn local_problem(report: &ReloadReport) -> String {
    if let Some(d) = report.diagnostics.first() {
        return d.to_string();
    }
    report
        .data_planes
        .iter()
        .find(|p| p.result != PlaneResult::Acked)
        .map(plane_problem)
        .unwrap_or_default()
}

/// What a data plane that did not take something did, in one line.
pub(super) fn plane_problem(p: &PlaneOutcome) -> String {
    if p.error.is_empty() {
        format!("data plane {}: {:?}", p.node_id, p.result)
    } else {
        format!("data plane {}: {:?}: {}", p.node_id, p.result, p.error)
    }
}

/// The nodes a publish waits for: `nodes` (those live when it published) and this one.
pub(super) fn waiting_list(link: &Link, nodes: Vec<NodeState>) -> Vec<String> {
    let mut waiting: Vec<String> = nodes.into_iter().map(|n| n.node).collect();
    if !waiting.iter().any(|n| n == link.node()) {
        waiting.push(link.node().to_owned());
    }
    waiting
}

/// Waits, as a reload does, until every node live now (and this one) has applied `version`.
pub(super) async fn wait_for_every_node(
    reloader: &Reloader,
    link: &Link,
    version: u64,
    hash: &str,
) -> Vec<PlaneOutcome> {
    let listed = tokio::time::timeout(reloader.ack_timeout(), link.fleet.nodes()).await;
    let waiting = waiting_list(link, listed.ok().and_then(Result::ok).unwrap_or_default());
    let deadline = tokio::time::Instant::now() + reloader.ack_timeout() + Duration::from_secs(2);
    wait_for_nodes(link, version, hash, &waiting, deadline).await
}

/// Waits until each node of `waiting` has recorded `version` applied (or tried with an error),
/// has dropped out (its lease lapsed), or `deadline` passes.
pub(super) async fn wait_for_nodes(
    link: &Link,
    version: u64,
    hash: &str,
    waiting: &[String],
    deadline: tokio::time::Instant,
) -> Vec<PlaneOutcome> {
    let prefix = link.fleet.key("nodes/");
    let mut latest: BTreeMap<String, Option<NodeState>> =
        waiting.iter().map(|n| (n.clone(), None)).collect();
    let answered = |s: &NodeState| {
        (s.applied_version >= version && (s.applied_version > version || s.applied_hash == hash))
            || (s.tried_version >= version && !s.error.is_empty())
    };
    // The watch first, from now, then one read: every change after the read comes as an
    // event. (A watch that starts at a past revision waits for etcd's catch-up loop, up to
    // 100 ms, where one from now gets each event as it happens.) Each node's newest record
    // wins, by its revision.
    'watched: loop {
        // Every etcd call of the wait is under its deadline too.
        let Ok(Ok(mut watch)) =
            tokio::time::timeout_at(deadline, link.fleet.etcd().watch(&prefix, 0)).await
        else {
            break;
        };
        let Ok(Ok((kvs, _))) =
            tokio::time::timeout_at(deadline, link.fleet.etcd().prefix(&prefix)).await
        else {
            break;
        };
        let mut revisions: BTreeMap<String, i64> = BTreeMap::new();
        let mut present = std::collections::BTreeSet::new();
        for kv in &kvs {
            if let Ok(state) = serde_json::from_slice::<NodeState>(&kv.value) {
                present.insert(state.node.clone());
                revisions.insert(state.node.clone(), kv.mod_revision);
                if let Some(slot) = latest.get_mut(&state.node) {
                    *slot = Some(state);
                }
            }
        }
        for (node, state) in &mut latest {
            if !present.contains(node) {
                *state = None;
            }
        }
        loop {
            if latest.values().all(|s| s.as_ref().is_none_or(answered)) {
                break 'watched;
            }
            match tokio::time::timeout_at(deadline, watch.recv()).await {
                Err(_) => break 'watched,
                Ok(Some(Ok(Watched::Changes { changes, .. }))) => {
                    for change in changes {
                        let (kv, put) = match change {
                            super::etcd::Change::Put(kv) => (kv, true),
                            super::etcd::Change::Delete(kv) => (kv, false),
                        };
                        let node =
                            String::from_utf8_lossy(&kv.key[prefix.len().min(kv.key.len())..])
                                .into_owned();
                        if revisions.get(&node).is_some_and(|r| *r >= kv.mod_revision) {
                            continue;
                        }
                        revisions.insert(node.clone(), kv.mod_revision);
                        if let Some(slot) = latest.get_mut(&node) {
                            *slot = if put {
                                serde_json::from_slice::<NodeState>(&kv.value).ok()
                            } else {
                                None
                            };
                        }
                    }
                }
                Ok(_) => {
                    // The watch broke: read everything again, after a breath.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if tokio::time::Instant::now() >= deadline {
                        break 'watched;
                    }
                    continue 'watched;
                }
            }
        }
    }
    latest
        .into_iter()
        .map(|(node, state)| match state {
            None => PlaneOutcome {
                node_id: node,
                pid: 0,
                result: PlaneResult::Disconnected,
                serving_version: 0,
                error: "not live (its lease lapsed, or it never recorded a state)".to_owned(),
            },
            Some(s) => {
                let result = if s.applied_version >= version
                    && (s.applied_version > version || s.applied_hash == hash)
                {
                    PlaneResult::Acked
                } else if s.tried_version >= version && !s.error.is_empty() {
                    PlaneResult::Nacked
                } else {
                    PlaneResult::TimedOut
                };
                PlaneOutcome {
                    node_id: node,
                    pid: 0,
                    result,
                    serving_version: s.applied_version,
                    error: if result == PlaneResult::Acked {
                        String::new()
                    } else {
                        s.error
                    },
                }
            }
        })
        .collect()
}

/// Follows the fleet until `shutdown`: every new head is applied here, and this node's lease
/// kept alive. etcd unreachable: this host serves on, and follows again when etcd answers
/// (from the head then: a node that was away for several versions goes to the newest).
pub async fn follow(reloader: Arc<Reloader>, link: Arc<Link>, shutdown: CancellationToken) {
    tokio::spawn(link.clone().keep_alive(shutdown.clone()));
    tokio::spawn(super::traffic::report_traffic(
        reloader.clone(),
        link.clone(),
        shutdown.clone(),
    ));
    let mut wait = RETRY_FIRST;
    loop {
        let mut watching = false;
        let followed = tokio::select! {
            () = shutdown.cancelled() => return,
            r = follow_once(&reloader, &link, &mut watching) => r,
        };
        // A watch that was up and then broke (a member restarted, a compaction) is followed
        // again at once; only failures in a row back off.
        if watching {
            wait = RETRY_FIRST;
        }
        if let Err(e) = followed {
            tracing::warn!(node = link.node(), error = %e, retry_in = ?wait,
                "cannot follow the fleet; serving the last version applied");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Applies the head if this node does not serve it, then every head after it, until the watch
/// breaks (an error) or the revisions it would resume from were compacted (Ok: start over).
async fn follow_once(
    reloader: &Reloader,
    link: &Link,
    watching: &mut bool,
) -> Result<(), PublishError> {
    let head_key = link.fleet.key("head");
    // The watch first, from now (one from a past revision waits for etcd's catch-up loop, up
    // to 100 ms), then the head as it is: a change in between comes as an event.
    let mut watch = link.fleet.etcd().watch(&head_key, 0).await?;
    *watching = true;
    let (kv, _) = link.fleet.etcd().get(&head_key).await?;
    if kv.is_some() {
        catch_up(reloader, link).await?;
    }
    // A version this node could not apply (a file missing for a moment, a data plane that
    // refused it) is tried again after a while, doubling to a minute, as a single host sends a
    // refused version again: no new version needed.
    let mut retry = RETRY_FIRST * 10;
    let mut planes = reloader.planes().subscribe_changes();
    loop {
        let (failed, no_plane) = {
            let state = link.state.lock().unwrap_or_else(|e| e.into_inner());
            (!state.error.is_empty(), state.error == NO_DATA_PLANE)
        };
        tokio::select! {
            // A data plane subscribed to a node that had none: at once, not after the wait.
            _ = planes.changed(), if no_plane => {
                if !reloader.planes().list().is_empty() {
                    catch_up(reloader, link).await?;
                }
            }
            watched = watch.recv() => match watched {
                Some(watched) => match watched? {
                    Watched::Changes { .. } => {
                        retry = RETRY_FIRST * 10;
                        catch_up(reloader, link).await?;
                    }
                    Watched::Compacted { .. } => return Ok(()),
                },
                None => return Ok(()),
            },
            () = tokio::time::sleep(retry), if failed => {
                retry = (retry * 2).min(RETRY_AGAIN_MAX);
                catch_up(reloader, link).await?;
            }
        }
    }
}

/// The longest wait between tries of a version this node could not apply.
const RETRY_AGAIN_MAX: Duration = Duration::from_secs(60);

/// Applies the fleet's head here unless this node serves it already; during a staged rollout,
/// a node that is not one of its canaries serves the stable version instead.
async fn catch_up(reloader: &Reloader, link: &Link) -> Result<(), PublishError> {
    let (Some(head), _) = link.fleet.head().await? else {
        return Ok(());
    };
    let member = head
        .canary
        .as_ref()
        .is_some_and(|c| c.nodes.iter().any(|n| n == link.node()));
    link.canary_member
        .store(member, std::sync::atomic::Ordering::Release);
    let (target, target_hash) = head.target_for(link.node());
    let serving = {
        let state = link.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.applied_version, state.applied_hash.clone())
    };
    if serving.0 == target && serving.1 == target_hash {
        return Ok(());
    }
    let Some(version) = link.fleet.version(target).await? else {
        return Ok(());
    };
    apply(
        reloader,
        link,
        version.version,
        &version.hash,
        &version.text,
        &format!("published on {}", version.node),
    )
    .await;
    Ok(())
}
