//! Staged rollouts (`proxyctl reload --canary`): a version goes to its canaries first; once each
//! has applied it and its 5xx ratio stayed within the bound for the window, to every node. A
//! canary that refuses the version, drops out or degrades stops the rollout: the previous
//! content is published again (a new version, as a rollback is), which takes the canaries back.
//!
//! The head names the canaries and the stable version while the rollout is at them
//! ([`super::store::Canary`]); every other node keeps serving the stable version. A canary
//! records its data planes' response counters in its node state about once a second, and the
//! controld running the rollout reads them there.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::apply::{apply, wait_for_every_node, wait_for_nodes};
use super::link::Link;
use super::report::{report_of, unreachable_report};
use super::store::{NodeState, PublishError, Published, Publisher, Traffic};
use super::traffic::TRAFFIC_EVERY;
use crate::dataplanes::{PlaneOutcome, PlaneResult};
use crate::reloader::{CanaryFigures, CanaryPlan, CanaryReport, Outcome, ReloadReport, Reloader};

/// The canaries `plan` names among the live `nodes`, or why it names none that can be.
fn choose(plan: &CanaryPlan, nodes: &[NodeState]) -> Result<Vec<String>, String> {
    let mut live: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    live.sort_unstable();
    live.dedup();
    if plan.nodes.is_empty() {
        // By count: nodes that serve what they were last given (not one whose proxyd is down,
        // which could not apply the version and would stop every rollout).
        let mut serving: Vec<&str> = nodes
            .iter()
            .filter(|n| n.error.is_empty())
            .map(|n| n.node.as_str())
            .collect();
        serving.sort_unstable();
        serving.dedup();
        let count = usize::try_from(plan.count).unwrap_or(usize::MAX);
        if count == 0 || count > serving.len() {
            return Err(format!(
                "--canary {count}: the fleet has {} live node(s) that serve what they were \
                 given ({}); name the canaries to choose others",
                serving.len(),
                serving.join(", ")
            ));
        }
        return Ok(serving[..count].iter().map(|n| (*n).to_owned()).collect());
    }
    let mut chosen: Vec<String> = Vec::new();
    for name in &plan.nodes {
        if !live.contains(&name.as_str()) {
            return Err(format!(
                "canary {name:?} is not a live node of the fleet (live: {})",
                live.join(", ")
            ));
        }
        if !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

/// Whether a canary degraded in the window: its 5xx ratio in it rose more than `rise`
/// percentage points over its ratio before. A canary whose counters went back (its proxyd
/// restarted) is judged on what it counted since.
fn degraded(f: &CanaryFigures, rise: f64) -> Option<String> {
    let (responses, errors) = f.during;
    if f.no_figures || responses == 0 {
        return None;
    }
    let ratio = |errors: u64, all: u64| {
        if all == 0 {
            0.0
        } else {
            errors as f64 * 100.0 / all as f64
        }
    };
    let before = ratio(f.before.1, f.before.0);
    let during = ratio(errors, responses);
    (during > before + rise).then(|| {
        format!(
            "canary {}: 5xx ratio {during:.1}% in the window ({errors} of {responses} responses), \
             {before:.1}% before; the bound is a rise of {rise} point{}",
            f.node,
            if rise == 1.0 { "" } else { "s" }
        )
    })
}

/// Whether a canary is clearly degraded before its window ends: enough responses, and enough
/// of them 5xx, that the ratio is no accident of a few requests.
fn early_verdict(f: &CanaryFigures, rise: f64) -> Option<String> {
    if f.during.0 < EARLY_VERDICT_RESPONSES || f.during.1 < EARLY_VERDICT_ERRORS {
        return None;
    }
    degraded(f, rise)
}

/// The window's figures of a canary from its traffic at the start and now.
fn figures(node: &str, start: Option<Traffic>, now: Option<Traffic>) -> CanaryFigures {
    match (start, now) {
        (Some(a), Some(b)) => {
            let during = if b.responses >= a.responses && b.responses_5xx >= a.responses_5xx {
                (b.responses - a.responses, b.responses_5xx - a.responses_5xx)
            } else {
                (b.responses, b.responses_5xx)
            };
            CanaryFigures {
                node: node.to_owned(),
                before: (a.responses, a.responses_5xx),
                during,
                no_figures: false,
            }
        }
        _ => CanaryFigures {
            node: node.to_owned(),
            no_figures: true,
            ..Default::default()
        },
    }
}

/// Reads in a row without a canary's figures, after it had some, that stop the rollout.
const SILENT_READS: u32 = 3;

/// Responses in the window from which a canary is judged before the window ends.
const EARLY_VERDICT_RESPONSES: u64 = 20;

/// And 5xx responses: a healthy canary's occasional 5xx early in the window (1 of the first 20
/// is 5 %) must not stop a rollout; a clearly broken one gets there in moments.
const EARLY_VERDICT_ERRORS: u64 = 10;

/// Each canary's traffic, by node name (`None`: none recorded).
type Traffics = std::collections::BTreeMap<String, Option<Traffic>>;

/// What the window found: `Ok` with each canary's figures, or why the rollout stops.
enum Watched {
    Passed(Vec<CanaryFigures>),
    Stopped(Vec<CanaryFigures>, String),
    /// Another publish replaced the rollout's version.
    Superseded(Vec<CanaryFigures>, u64),
}

/// Watches the canaries for `plan.wait`: each must stay live and on `version`; at the end,
/// each canary's 5xx ratio is judged.
async fn watch_window(
    link: &Link,
    version: u64,
    canaries: &[String],
    start: &Traffics,
    plan: &CanaryPlan,
) -> Watched {
    let end = tokio::time::Instant::now() + plan.wait;
    // A canary that had no figures yet when it applied starts at its first.
    let mut start = start.clone();
    let mut last: Traffics = start.clone();
    let mut silent: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    let figures_now = |start: &Traffics, last: &Traffics| {
        canaries
            .iter()
            .map(|c| {
                figures(
                    c,
                    start.get(c).copied().flatten(),
                    last.get(c).copied().flatten(),
                )
            })
            .collect::<Vec<_>>()
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(TRAFFIC_EVERY)).await;
        let read = async {
            let (head, _) = link.fleet.head().await?;
            let nodes = link.fleet.nodes().await?;
            Ok::<_, PublishError>((head, nodes))
        };
        // etcd away for a moment: the window goes on; a canary's lease lapsing is seen after.
        let Ok((head, nodes)) = read.await else {
            continue;
        };
        if let Some(head) = head.filter(|h| h.version != version) {
            return Watched::Superseded(figures_now(&start, &last), head.version);
        }
        for canary in canaries {
            let Some(state) = nodes.iter().find(|n| &n.node == canary) else {
                return Watched::Stopped(
                    figures_now(&start, &last),
                    format!(
                        "canary {canary} dropped out of the fleet (its lease lapsed) in the window"
                    ),
                );
            };
            if state.applied_version < version {
                return Watched::Stopped(
                    figures_now(&start, &last),
                    format!(
                        "canary {canary} serves version {} again{}",
                        state.applied_version,
                        if state.error.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", state.error)
                        }
                    ),
                );
            }
            match state.traffic {
                Some(traffic) => {
                    silent.remove(canary);
                    last.insert(canary.clone(), Some(traffic));
                    start
                        .entry(canary.clone())
                        .or_default()
                        .get_or_insert(traffic);
                }
                // Its proxyd reported figures and no longer does: no data plane is connected
                // to its controld (crashed under the new version, say). A few reads in a row,
                // so that a worker handing over to the next is not taken for it.
                None if start.get(canary).is_some_and(Option::is_some) => {
                    let misses = silent.entry(canary.clone()).or_insert(0);
                    *misses += 1;
                    if *misses >= SILENT_READS {
                        return Watched::Stopped(
                            figures_now(&start, &last),
                            format!(
                                "canary {canary}: its proxyd stopped serving in the window (no \
                                 data plane is connected to its controld)"
                            ),
                        );
                    }
                }
                None => {}
            }
        }
        // A canary clearly worse already stops the rollout at once, not at the window's end.
        if let Some(why) = figures_now(&start, &last)
            .iter()
            .find_map(|f| early_verdict(f, plan.max_5xx_rise))
        {
            return Watched::Stopped(figures_now(&start, &last), why);
        }
    }
    let figures = figures_now(&start, &last);
    match figures.iter().find_map(|f| degraded(f, plan.max_5xx_rise)) {
        Some(why) => Watched::Stopped(figures, why),
        None => Watched::Passed(figures),
    }
}

/// Why a canary did not apply the version, in one line; `None` when every one did.
fn refusal(outcomes: &[PlaneOutcome], version: u64) -> Option<String> {
    outcomes
        .iter()
        .find(|o| o.result != PlaneResult::Acked)
        .map(|o| {
            let what = match o.result {
                PlaneResult::Nacked => format!("refused version {version}"),
                PlaneResult::TimedOut => format!("did not apply version {version} in time"),
                _ => "is not live".to_owned(),
            };
            if o.error.is_empty() {
                format!("canary {} {what}", o.node_id)
            } else {
                format!("canary {} {what}: {}", o.node_id, o.error)
            }
        })
}

/// A staged rollout of `fleet_text`: published for the canaries `plan` names, watched, then
/// promoted to every node, or stopped and the previous content put back.
pub(super) async fn rollout(
    reloader: &Reloader,
    link: &Link,
    (fleet_text, publisher): (&str, &Publisher),
    plan: &CanaryPlan,
    (expected, force): (Option<u64>, bool),
    previous: u64,
    started: std::time::Instant,
) -> ReloadReport {
    let refused = |message: String| ReloadReport {
        diagnostics: vec![crate::config::Diagnostic {
            key_path: String::new(),
            file: reloader.config_path().to_owned(),
            line: 0,
            column: 0,
            message: format!("{message}; nothing was published"),
        }],
        ..report_of(previous)
    };
    let nodes = match link.fleet.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => return unreachable_report(reloader, link, &e),
    };
    let canaries = match choose(plan, &nodes) {
        Ok(canaries) => canaries,
        Err(why) => return refused(why),
    };
    let published = link
        .fleet
        .publish(fleet_text, publisher, expected, force, Some(&canaries))
        .await;
    let (version, hash) = match published {
        Ok(Published::New(v)) => (v.version, v.hash),
        Ok(Published::Unchanged(head)) => {
            return ReloadReport {
                outcome: Outcome::Unchanged,
                version: head.version,
                ..report_of(previous)
            };
        }
        Err(PublishError::Conflict { now }) => {
            return ReloadReport {
                outcome: Outcome::Conflict,
                version: now,
                ..report_of(previous)
            };
        }
        Err(PublishError::NoStableVersion) => {
            return refused(PublishError::NoStableVersion.to_string());
        }
        Err(e) => return unreachable_report(reloader, link, &e),
    };
    // The version every other node keeps meanwhile, as the head names it (a publish that lost
    // a race went after another one).
    // The canaries, as the head names them: an earlier rollout's still at theirs are among them
    // (those of them still live are waited for and watched).
    let (stable, canaries) = match link.fleet.head().await {
        Ok((Some(head), _)) if head.version == version => match head.canary {
            Some(c) => (
                c.stable_version,
                c.nodes
                    .into_iter()
                    .filter(|n| canaries.contains(n) || nodes.iter().any(|l| &l.node == n))
                    .collect(),
            ),
            None => (previous, canaries),
        },
        _ => (previous, canaries),
    };
    tracing::info!(version, canaries = ?canaries, wait = ?plan.wait, "staged rollout: the canaries first");
    let mut report = ReloadReport {
        outcome: Outcome::Applied,
        previous_version: previous,
        version,
        canary: Some(CanaryReport {
            nodes: canaries.clone(),
            wait: plan.wait,
            max_5xx_rise: plan.max_5xx_rise,
            ..Default::default()
        }),
        ..report_of(previous)
    };
    if canaries.iter().any(|c| c == link.node()) {
        link.canary_member.store(true, Ordering::Release);
        let local = apply(
            reloader,
            link,
            version,
            &hash,
            fleet_text,
            &publisher.source,
        )
        .await;
        report.diff = local.diff;
        report.warnings = local.warnings;
    }
    let deadline = tokio::time::Instant::now() + reloader.ack_timeout() + Duration::from_secs(2);
    let outcomes = wait_for_nodes(link, version, &hash, &canaries, deadline).await;
    let (figures, stopped) = match refusal(&outcomes, version) {
        Some(why) => (Vec::new(), Some((why, true))),
        None => {
            // Each canary's traffic when it applied the version: the window starts there.
            let nodes = link.fleet.nodes().await.unwrap_or_default();
            let start = canaries
                .iter()
                .map(|c| {
                    let traffic = nodes.iter().find(|n| &n.node == c).and_then(|n| n.traffic);
                    (c.clone(), traffic)
                })
                .collect();
            match watch_window(link, version, &canaries, &start, plan).await {
                Watched::Passed(figures) => (figures, None),
                Watched::Stopped(figures, why) => (figures, Some((why, true))),
                Watched::Superseded(figures, now) => (
                    figures,
                    Some((
                        format!(
                            "superseded: the fleet's version is now {now} (another publish \
                             replaced this rollout); nothing was reverted"
                        ),
                        false,
                    )),
                ),
            }
        }
    };
    if let Some(canary) = report.canary.as_mut() {
        canary.figures = figures;
    }
    match stopped {
        None => promote(reloader, link, version, &hash, report, started).await,
        Some((why, revert)) => {
            tracing::warn!(version, reason = %why, "staged rollout stopped at its canaries");
            report.outcome = Outcome::CanaryStopped;
            if let Some(canary) = report.canary.as_mut() {
                canary.stopped = why.clone();
            }
            report.data_planes = outcomes;
            if revert {
                report = revert_canaries(reloader, link, version, stable, &why, report).await;
            }
            report.duration = started.elapsed();
            report
        }
    }
}

/// Ends the rollout: every node is to serve `version` now; waits for them as a reload does.
async fn promote(
    reloader: &Reloader,
    link: &Link,
    version: u64,
    hash: &str,
    mut report: ReloadReport,
    started: std::time::Instant,
) -> ReloadReport {
    // A promotion whose answer was lost may have landed: trying again says so.
    let mut promoted = link.fleet.promote(version, hash).await;
    for _ in 0..3 {
        if promoted.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        promoted = link.fleet.promote(version, hash).await;
    }
    match promoted {
        Ok(true) => {}
        Ok(false) => {
            report.outcome = Outcome::CanaryStopped;
            if let Some(canary) = report.canary.as_mut() {
                canary.stopped = "superseded: another publish replaced this rollout before it \
                                  went to every node; nothing was reverted"
                    .to_owned();
            }
            report.duration = started.elapsed();
            return report;
        }
        Err(e) => {
            report.outcome = Outcome::CanaryStopped;
            if let Some(canary) = report.canary.as_mut() {
                canary.stopped = format!(
                    "the canaries passed, but the rollout could not go on to every node: {e}; \
                     the canaries serve version {version}, the others the version before \
                     (run the reload again, or roll back)"
                );
            }
            report.duration = started.elapsed();
            return report;
        }
    }
    tracing::info!(
        version,
        "staged rollout: the canaries passed; every node now"
    );
    report.data_planes = wait_for_every_node(reloader, link, version, hash).await;
    report.duration = started.elapsed();
    report
}

/// Publishes the stable version's content again, only while the fleet is still at the
/// rollout's `version`, and waits for every node to serve it.
async fn revert_canaries(
    reloader: &Reloader,
    link: &Link,
    version: u64,
    stable: u64,
    why: &str,
    mut report: ReloadReport,
) -> ReloadReport {
    let mut note = |message: String| {
        if let Some(canary) = report.canary.as_mut() {
            canary.stopped = format!("{}; {message}", canary.stopped);
        }
    };
    let old = match link.fleet.version(stable).await {
        Ok(Some(old)) => old,
        Ok(None) => {
            note(format!(
                "version {stable} is no longer in etcd: the canaries stay on version {version} \
                 (roll back by hand)"
            ));
            return report;
        }
        Err(e) => {
            note(format!(
                "reverting failed: {e}; the canaries stay on version {version} (roll back by hand)"
            ));
            return report;
        }
    };
    let publisher = Publisher {
        source: format!("canary of {version} reverted"),
        summary: why.to_owned(),
        ..Publisher::default()
    };
    let published = link
        .fleet
        .publish(&old.text, &publisher, Some(version), true, None)
        .await;
    let reverted = match published {
        Ok(Published::New(v)) => v,
        Ok(Published::Unchanged(_)) => return report,
        Err(PublishError::Conflict { now }) => {
            note(format!(
                "not reverted: the fleet's version is now {now} (another publish replaced this \
                 rollout)"
            ));
            return report;
        }
        Err(e) => {
            note(format!(
                "reverting failed: {e}; the canaries stay on version {version} (roll back by hand)"
            ));
            return report;
        }
    };
    tracing::info!(
        version = reverted.version,
        from = version,
        "staged rollout reverted"
    );
    apply(
        reloader,
        link,
        reverted.version,
        &reverted.hash,
        &reverted.text,
        &publisher.source,
    )
    .await;
    report.data_planes =
        wait_for_every_node(reloader, link, reverted.version, &reverted.hash).await;
    report.version = reverted.version;
    if let Some(canary) = report.canary.as_mut() {
        canary.reverted_version = reverted.version;
    }
    report
}

#[cfg(test)]
mod tests;
