//! `proxyctl check FILE [--remote]`: is a config file valid, before anyone reloads it?
//!
//! Without `--remote` the file is checked here, by controld's own code
//! (`proxy_config::config::load`, what `controld check` and every reload run), so no daemon is
//! needed: for CI, editors and hosts without controld. With `--remote` its text goes to the
//! running controld (`Admin.Validate`), which checks it the same way and also says what a reload
//! of it would change against the serving version, applying nothing: for deploy scripts, before
//! they write the file.
//!
//! Both print the answer on stdout: the diagnostics when the file is invalid, one line when it is
//! valid. Pure functions apart from reading the file; `main` does the talking.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proto::v1::ValidateReply;
use proxy_config::config::{self, Diagnostic, LoadError, MAX_CONFIG_BYTES};

use crate::client::describe_io;
use crate::diff;
use crate::exit::Exit;
use crate::json;
use crate::output;
use crate::reload::diagnostic_line;

/// What a local check found in a file.
#[derive(Debug)]
pub struct Local {
    file: PathBuf,
    outcome: Result<Counts, Vec<Diagnostic>>,
}

/// What a valid file declares.
#[derive(Debug, Clone, Copy)]
struct Counts {
    sites: usize,
    listeners: usize,
}

/// Checks `file` exactly as controld would load it: read (size-capped), parse, validate. Every
/// problem is a diagnostic, a file that cannot be read too.
pub fn local(file: &Path) -> Local {
    let outcome = match controld::snapshot::load_checked(file).map(|(c, _)| c) {
        Ok(config) => Ok(Counts {
            sites: config.dynamic.sites.len(),
            listeners: config.statics.proxy.listeners.len(),
        }),
        Err(err) => {
            let mut diagnostics = err.diagnostics(file);
            if diagnostics.is_empty() {
                // Never happens today; an invalid file must still say so.
                diagnostics.push(Diagnostic {
                    key_path: String::new(),
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    message: "invalid, with no details".to_owned(),
                });
            }
            Err(diagnostics)
        }
    };
    Local {
        file: file.to_owned(),
        outcome,
    }
}

impl Local {
    /// `proxy.toml: ok (2 sites, 1 listeners)` (the line `controld check` prints), or every
    /// diagnostic as `file:line:col: key.path: message`, one a line.
    pub fn render(&self) -> String {
        match &self.outcome {
            Ok(counts) => output::lines(&[format!(
                "{}: ok ({} sites, {} listeners)",
                self.file.display(),
                counts.sites,
                counts.listeners
            )]),
            Err(diagnostics) => output::lines(
                &diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// 0 when valid, 1 when not.
    pub fn exit(&self) -> Exit {
        if self.outcome.is_ok() {
            Exit::Ok
        } else {
            Exit::Failed
        }
    }

    pub fn to_json(&self) -> json::Check {
        match &self.outcome {
            Ok(counts) => json::Check {
                valid: true,
                diagnostics: Vec::new(),
                sites: Some(counts.sites),
                listeners: Some(counts.listeners),
            },
            Err(diagnostics) => json::Check {
                valid: false,
                diagnostics: diagnostics.iter().map(json::Diagnostic::from).collect(),
                sites: None,
                listeners: None,
            },
        }
    }
}

/// `check --remote` could not read FILE: `check: reading proxy.toml: No such file or directory`.
#[derive(Debug, thiserror::Error)]
#[error("check: reading {}: {reason}", .file.display())]
pub struct ReadError {
    file: PathBuf,
    reason: String,
}

/// Reads FILE for `check --remote` with controld's own limits (at most
/// [`MAX_CONFIG_BYTES`], UTF-8), so that what controld could not load is refused here.
pub fn read(file: &Path) -> Result<String, ReadError> {
    let failed = |reason: String| ReadError {
        file: file.to_owned(),
        reason,
    };
    match config::read(file) {
        Ok(text) => Ok(text),
        Err(LoadError::Read { source, .. }) => Err(failed(describe_io(&source))),
        Err(LoadError::TooLarge { .. }) => Err(failed(format!(
            "larger than {MAX_CONFIG_BYTES} bytes, which controld refuses"
        ))),
        Err(LoadError::NotUtf8 { .. }) => Err(failed("not UTF-8".to_owned())),
        // `read` does not parse; should that change, say what it found.
        Err(other @ LoadError::Invalid(_)) => Err(failed(output::one_line(&other.to_string()))),
    }
}

/// Whether controld found the file valid. `valid` with a diagnostic is not: a deploy script
/// must never go on with a file that has a problem.
pub fn remote_is_valid(reply: &ValidateReply) -> bool {
    reply.valid && reply.diagnostics.is_empty()
}

/// 0 when controld found the file valid, 1 when not.
pub fn remote_exit(reply: &ValidateReply) -> Exit {
    if remote_is_valid(reply) {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

/// controld's verdict for a terminal. `file` is FILE as given; it names the diagnostics without
/// a file of their own. Valid: `valid: version 4 would become 5 (<diff>)` and what would change
/// inside each modified site, or `valid: version 4 already matches it; a reload would change
/// nothing`. Invalid: every diagnostic as a rejected
/// reload prints them, then `invalid: ...`. Warnings last, either way.
pub fn render_remote(reply: &ValidateReply, file: &str) -> String {
    let mut out = Vec::new();
    if remote_is_valid(reply) {
        if reply.next_version == reply.current_version {
            out.push(format!(
                "valid: version {} already matches it; a reload would change nothing",
                reply.current_version
            ));
        } else {
            out.push(format!(
                "valid: version {} would become {} ({})",
                reply.current_version,
                reply.next_version,
                diff::summary(reply.diff.as_ref())
            ));
            out.extend(diff::site_lines(reply.diff.as_ref(), ""));
        }
    } else {
        out.extend(reply.diagnostics.iter().map(|d| diagnostic_line(d, file)));
        let mut headline = "invalid".to_owned();
        match reply.diagnostics.len() {
            0 => headline.push_str(" (controld gave no reason)"),
            1 => headline.push_str(" (1 problem)"),
            n => {
                let _ = write!(headline, " ({n} problems)");
            }
        }
        let _ = write!(
            headline,
            ": a reload of it would be rejected; version {} would keep serving",
            reply.current_version
        );
        out.push(headline);
    }
    out.extend(reply.warnings.iter().map(|w| format!("warning: {w}")));
    output::lines(&out)
}

#[cfg(test)]
mod tests;
