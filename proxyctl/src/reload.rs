//! `proxyctl reload` and `proxyctl rollback`: a `ReloadReply` as lines for an operator and an exit
//! code for a script.
//!
//! Both calls answer with the same reply, so they share one renderer; only the lines that name
//! the operation differ ([`Operation`]). Pure functions of the reply; `main` does the talking.

use proto::v1::{DataPlaneOutcome, DataPlaneResult, Diagnostic, ReloadOutcome, ReloadReply};

use crate::diff;
use crate::exit::Exit;
use crate::output::{self, one_line};

/// Which call the reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `proxyctl reload`: the config file was read again.
    Reload,
    /// `proxyctl rollback [VERSION]`: an earlier version's config was published again.
    /// `restores` is the version the operator named; `None` when controld picked the one before
    /// the serving version, which the reply does not say.
    Rollback { restores: Option<u64> },
}

impl Operation {
    /// The operation's name in headlines: `reload rejected: ...`.
    fn name(self) -> &'static str {
        match self {
            Operation::Reload => "reload",
            Operation::Rollback { .. } => "rollback",
        }
    }

    /// The headline when every data plane applied the new version:
    /// `reloaded: version 3 → 4 (<diff>) in 12 ms` or
    /// `rolled back: version 7 → 8 (restores version 5; <diff>) in 9 ms`.
    fn applied_line(self, reply: &ReloadReply) -> String {
        let summary = diff::summary(reply.diff.as_ref());
        let (done, what) = match self {
            Operation::Reload => ("reloaded", summary),
            Operation::Rollback { restores: None } => ("rolled back", summary),
            Operation::Rollback {
                restores: Some(restored),
            } => (
                "rolled back",
                format!("restores version {restored}; {summary}"),
            ),
        };
        format!(
            "{done}: version {} → {} ({what}) in {} ms",
            reply.previous_version, reply.version, reply.duration_ms
        )
    }

    /// The headline when nothing was published because nothing would change.
    fn unchanged_line(self, reply: &ReloadReply) -> String {
        match self {
            Operation::Reload => format!(
                "unchanged: version {} already matches {} (use --force to publish it again)",
                reply.version, reply.config_path
            ),
            Operation::Rollback { restores: None } => format!(
                "unchanged: version {} already has that content; nothing was published",
                reply.version
            ),
            Operation::Rollback {
                restores: Some(restored),
            } => format!(
                "unchanged: version {} already has the content of version {restored}; \
                 nothing was published",
                reply.version
            ),
        }
    }
}

/// The exit code for a reload's or a rollback's reply: 0 when the new version is serving
/// everywhere (or nothing had to change, or a dry run found the file valid); 1 when it was
/// rejected or some data plane did not apply it.
///
/// An outcome this build does not know counts as failed: a deploy script must not go on
/// believing a reload worked.
pub fn exit(reply: &ReloadReply) -> Exit {
    match ReloadOutcome::try_from(reply.outcome) {
        Ok(ReloadOutcome::Applied) if every_data_plane_applied(reply) => Exit::Ok,
        // Unchanged, but a data plane that had not applied it was sent it again: success only
        // if it applied it this time.
        Ok(ReloadOutcome::Unchanged) if every_data_plane_applied(reply) => Exit::Ok,
        Ok(ReloadOutcome::DryRun) => Exit::Ok,
        _ => Exit::Failed,
    }
}

/// Renders the reply to `operation` for a terminal, one line per fact, ending in a newline.
/// What changed inside each modified site follows the lines about the data planes (see
/// [`diff::site_lines`]); warnings come last.
pub fn render(reply: &ReloadReply, operation: Operation) -> String {
    let mut out = Vec::new();
    match ReloadOutcome::try_from(reply.outcome) {
        Ok(ReloadOutcome::Applied) => render_applied(reply, operation, &mut out),
        Ok(ReloadOutcome::Unchanged) => {
            out.push(operation.unchanged_line(reply));
            if !reply.data_planes.is_empty() {
                out.push(format!(
                    "version {} was sent again to the data planes that did not serve it:",
                    reply.version
                ));
                data_plane_lines(reply, &mut out);
            }
        }
        Ok(ReloadOutcome::Rejected) => render_rejected(reply, operation, &mut out),
        Ok(ReloadOutcome::CanaryStopped) => render_canary_stopped(reply, &mut out),
        // Only a reload has a dry run; controld never answers a rollback with one.
        Ok(ReloadOutcome::DryRun) => render_dry_run(reply, &mut out),
        Ok(ReloadOutcome::Unspecified) | Err(_) => out.push(format!(
            "{} outcome unknown to this proxyctl ({}); version {} is serving; \
             run `proxyctl status` to see what the data planes serve",
            operation.name(),
            reply.outcome,
            reply.version
        )),
    }
    // Whatever the outcome, every warning controld sent is shown, last: a static setting that
    // changed (even when nothing was published: control.* and acme.* never reach the data
    // planes), or after a rollback, that the file on disk no longer matches what runs.
    out.extend(reply.warnings.iter().map(|w| format!("warning: {w}")));
    output::lines(&out)
}

/// One line per data plane of the reply.
fn data_plane_lines(reply: &ReloadReply, out: &mut Vec<String>) {
    out.extend(
        reply
            .data_planes
            .iter()
            .map(|dp| data_plane_line(dp, reply.version)),
    );
}

fn render_applied(reply: &ReloadReply, operation: Operation, out: &mut Vec<String>) {
    if every_data_plane_applied(reply) {
        out.push(operation.applied_line(reply));
    } else {
        out.push(format!(
            "{} published version {}, but not every data plane applied it:",
            operation.name(),
            reply.version
        ));
    }
    data_plane_lines(reply, out);
    if reply.data_planes.is_empty() {
        out.push(
            "note: no data plane is connected; the new version will be sent when one subscribes"
                .to_owned(),
        );
    }
    canary_lines(reply, out);
    out.extend(diff::site_lines(reply.diff.as_ref(), ""));
}

/// A staged rollout that stopped at its canaries: why, what went back, what each node serves.
fn render_canary_stopped(reply: &ReloadReply, out: &mut Vec<String>) {
    let Some(canary) = &reply.canary else {
        out.push(format!(
            "reload stopped at its canaries; version {} serves",
            reply.version
        ));
        return;
    };
    out.push(format!(
        "reload stopped at its canaries: {}",
        canary.stopped
    ));
    if canary.reverted_version != 0 {
        out.push(format!(
            "the previous content went back to the canaries as version {}:",
            canary.reverted_version
        ));
    }
    data_plane_lines(reply, out);
    canary_lines(reply, out);
}

/// One line per canary: its 5xx ratio before the window and in it.
fn canary_lines(reply: &ReloadReply, out: &mut Vec<String>) {
    let Some(canary) = &reply.canary else {
        return;
    };
    if canary.stopped.is_empty() {
        out.push(format!(
            "canaries {} served it for {} first, within a 5xx rise of {} points:",
            canary.nodes.join(", "),
            humantime::format_duration(std::time::Duration::from_millis(canary.wait_ms)),
            canary.max_5xx_rise
        ));
    }
    let ratio = |errors: u64, all: u64| {
        if all == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", errors as f64 * 100.0 / all as f64)
        }
    };
    for f in &canary.figures {
        out.push(if f.no_figures {
            format!(
                "  {}: its proxyd reports no figures (an older build): not checked",
                f.node
            )
        } else {
            format!(
                "  {}: 5xx {} in the window ({} of {} responses), {} before",
                f.node,
                ratio(f.responses_5xx, f.responses),
                f.responses_5xx,
                f.responses,
                ratio(f.responses_5xx_before, f.responses_before)
            )
        });
    }
}

fn render_rejected(reply: &ReloadReply, operation: Operation, out: &mut Vec<String>) {
    out.extend(
        reply
            .diagnostics
            .iter()
            .map(|d| diagnostic_line(d, &reply.config_path)),
    );
    out.push(format!(
        "{} rejected: version {} is still serving",
        operation.name(),
        reply.version
    ));
}

fn render_dry_run(reply: &ReloadReply, out: &mut Vec<String>) {
    // controld answers a dry run with the version a reload would publish: the same one when the
    // snapshot's content would not change.
    if reply.version == reply.previous_version {
        out.push(format!(
            "dry run: version {} already matches {}; a reload would change nothing \
             (use --force to publish it again)",
            reply.previous_version, reply.config_path
        ));
    } else {
        out.push(format!(
            "dry run: version {} would become {} ({})",
            reply.previous_version,
            reply.version,
            diff::summary(reply.diff.as_ref())
        ));
        out.extend(diff::site_lines(reply.diff.as_ref(), ""));
    }
}

fn every_data_plane_applied(reply: &ReloadReply) -> bool {
    reply
        .data_planes
        .iter()
        .all(|dp| dp.result == DataPlaneResult::Acked as i32)
}

/// A diagnostic as compilers print them: `file:line:column: key_path: message`. The location is
/// left out when unknown (line 0), the key path when empty (syntax errors); the message is
/// verbatim. A diagnostic without a file names the config file that was read.
pub fn diagnostic_line(diagnostic: &Diagnostic, config_path: &str) -> String {
    let file = if diagnostic.file.is_empty() {
        config_path
    } else {
        &diagnostic.file
    };
    proxy_config::config::diagnostic_text(
        file,
        diagnostic.line,
        diagnostic.column,
        &diagnostic.key_path,
        &diagnostic.message,
    )
}

/// What one data plane did with `version`, indented under the headline:
/// `  node-a (pid 4712): refused: <error>; still serving version 3`.
pub fn data_plane_line(dp: &DataPlaneOutcome, version: u64) -> String {
    let who = format!("  {} (pid {})", dp.node_id, dp.pid);
    match DataPlaneResult::try_from(dp.result) {
        Ok(DataPlaneResult::Acked) => format!("{who}: applied version {version}"),
        Ok(DataPlaneResult::Nacked) => {
            let error = one_line(&dp.error);
            let error = if error.is_empty() {
                "no reason given".to_owned()
            } else {
                error
            };
            format!(
                "{who}: refused: {error}; {}",
                serving(dp.serving_version, "still serving")
            )
        }
        Ok(DataPlaneResult::TimedOut) => {
            format!(
                "{who}: timed out; {}",
                serving(dp.serving_version, "serving")
            )
        }
        Ok(DataPlaneResult::Disconnected) => format!("{who}: disconnected"),
        Ok(DataPlaneResult::Unspecified) | Err(_) => {
            format!("{who}: result unknown to this proxyctl ({})", dp.result)
        }
    }
}

/// `still serving version 3`, or the truth when the data plane has no snapshot at all.
fn serving(version: u64, verb: &str) -> String {
    if version == 0 {
        "serving no version yet".to_owned()
    } else {
        format!("{verb} version {version}")
    }
}

#[cfg(test)]
mod tests;
