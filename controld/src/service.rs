//! The gRPC services on the control socket: Control.Subscribe for data planes, Admin for
//! proxyctl and deploy scripts. Proto types are converted here and nowhere else.

use std::sync::Arc;
use std::time::SystemTime;

use proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::access::{Access, audit};
use crate::dataplanes::{DataPlanes, PlaneResult};
use crate::reloader::{
    Origin, Outcome, ReloadOptions, ReloadReport, Reloader, RollbackError, unix_ms,
};

mod control;
mod reads;

pub use control::ControlService;
pub use reads::SharedReads;

pub struct AdminService {
    pub reloader: Arc<Reloader>,
    /// The fleet this host belongs to, if any: Status and History answer for it.
    pub fleet: Option<Arc<crate::cluster::Link>>,
    pub planes: Arc<DataPlanes>,
    pub access: Access,
    pub started_at: SystemTime,
    pub shutdown: CancellationToken,
    pub acme: Arc<crate::acme::Acme>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadReply>, Status> {
        // A dry run changes nothing: anyone who can connect may ask for one, but a data plane.
        let caller = match request.get_ref().dry_run {
            true => {
                self.access.authorize_read(&request, "Reload")?;
                None
            }
            false => Some(self.access.authorize(&request, "Reload")?),
        };
        let req = request.into_inner();
        let req_hash = req.if_text_hash.clone();
        let options = ReloadOptions {
            dry_run: req.dry_run,
            force: req.force,
            if_version: req.if_version,
            if_text_hash: req.if_text_hash.clone(),
            check_permit: None,
            canary: canary_plan(&req)?,
            origin: Origin {
                source: "reload".to_owned(),
                uid: caller.and_then(|c| c.uid),
                pid: caller.and_then(|c| c.pid),
            },
        };
        if options.dry_run {
            // Open to anyone: bounded by places the work holds to its end (the reading goes
            // on when a caller hangs up; its place is not free before).
            let permit = self
                .reloader
                .check_permit()
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            let options = ReloadOptions {
                check_permit: Some(permit),
                ..options
            };
            let report = self.reloader.reload(options).await;
            if let Some(conflict) = conflict(&report, req_hash.as_deref()) {
                return Err(conflict);
            }
            return Ok(Response::new(reload_reply(&report, &self.reloader)));
        }
        // A reload runs to its end even if the caller gives up (a short --timeout drops this
        // handler): its version is published and its outcome recorded, and audited, either way
        // (the task that does the work writes the audit line).
        let reloader = self.reloader.clone();
        let report = tokio::spawn(async move {
            let report = reloader.reload(options).await;
            if let Some(caller) = caller {
                let outcome = format!(
                    "{:?}, version {} → {}",
                    report.outcome, report.previous_version, report.version
                );
                audit("Reload", &caller, &outcome.to_ascii_lowercase());
            }
            report
        })
        .await
        .map_err(|e| Status::internal(format!("reload task failed: {e}")))?;
        if let Some(conflict) = conflict(&report, req_hash.as_deref()) {
            return Err(conflict);
        }
        Ok(Response::new(reload_reply(&report, &self.reloader)))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateReply>, Status> {
        self.access.authorize_read(&request, "Validate")?;
        let req = request.into_inner();
        let name = if req.file_name.is_empty() {
            "candidate.toml".to_owned()
        } else {
            req.file_name
        };
        let report = self
            .reloader
            .validate(req.config_text, std::path::PathBuf::from(name))
            .await
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(pb::ValidateReply {
            text_hash: report.text_hash,
            valid: report.diagnostics.is_empty(),
            diagnostics: report.diagnostics.iter().map(diagnostic).collect(),
            diff: Some(report.diff.to_proto()),
            warnings: report.warnings,
            current_version: report.current_version,
            next_version: report.next_version,
        }))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigReply>, Status> {
        self.access.authorize_read(&request, "GetConfig")?;
        // Served by [`SharedReads`] on the socket; this answers direct callers of the trait.
        let current = self.reloader.current();
        let path = self.reloader.config_path().display().to_string();
        let reply = tokio::task::spawn_blocking(move || reads::get_config_reply(&current, path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(reply))
    }

    async fn shutdown(
        &self,
        request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownReply>, Status> {
        let caller = self.access.authorize(&request, "Shutdown")?;
        audit("Shutdown", &caller, "stopping");
        tracing::info!("shutdown requested on the control socket");
        // Answer first: the server stops taking calls once the token is cancelled.
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            shutdown.cancel();
        });
        Ok(Response::new(pb::ShutdownReply {
            version: self.reloader.current().version,
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ReloadReply>, Status> {
        let caller = self.access.authorize(&request, "Rollback")?;
        let version = request.into_inner().version;
        let origin = Origin {
            source: String::new(),
            uid: caller.uid,
            pid: caller.pid,
        };
        // Like a reload, it runs to its end, and is audited, even if the caller gives up.
        let reloader = self.reloader.clone();
        let result = tokio::spawn(async move {
            let result = reloader.rollback(version, origin).await;
            match &result {
                Ok(report) => {
                    let outcome = format!(
                        "{:?}, version {} → {}",
                        report.outcome, report.previous_version, report.version
                    );
                    audit("Rollback", &caller, &outcome.to_ascii_lowercase());
                }
                Err(e) => audit("Rollback", &caller, &format!("refused: {e}")),
            }
            result
        })
        .await
        .map_err(|e| Status::internal(format!("rollback task failed: {e}")))?;
        let report = result.map_err(|e| match e {
            RollbackError::UnknownVersion(_) => Status::not_found(e.to_string()),
            RollbackError::NothingEarlier => Status::failed_precondition(e.to_string()),
        })?;
        Ok(Response::new(reload_reply(&report, &self.reloader)))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        self.access.authorize_read(&request, "History")?;
        // In a fleet: the fleet's versions, from etcd.
        if let Some(link) = &self.fleet {
            return crate::cluster::history(link)
                .await
                .map(Response::new)
                .map_err(|e| Status::unavailable(e.to_string()));
        }
        // Served by [`SharedReads`] on the socket; this answers direct callers of the trait.
        let reloader = self.reloader.clone();
        let version = reloader.current().version;
        let reply = tokio::task::spawn_blocking(move || reads::history_reply(&reloader, version))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(reply))
    }

    async fn certificates(
        &self,
        request: Request<pb::CertificatesRequest>,
    ) -> Result<Response<pb::CertificatesReply>, Status> {
        self.access.authorize_read(&request, "Certificates")?;
        use crate::config::SiteTls;
        let current = self.reloader.current();
        let overlay = self.reloader.acme_overlay();
        let unix = |t: SystemTime| unix_ms(t) / 1000;
        let certificates = current
            .config
            .dynamic
            .sites
            .iter()
            .filter(|s| s.tls != SiteTls::None)
            .map(|site| {
                // What serves now is what the snapshot carries.
                let serving = current
                    .content
                    .snapshot
                    .certificates
                    .iter()
                    .find(|c| c.site == site.name());
                let mut status = pb::CertificateStatus {
                    site: site.name().to_owned(),
                    hostnames: site.hostnames.iter().map(ToString::to_string).collect(),
                    source: match site.tls {
                        SiteTls::Acme => "acme",
                        _ => "files",
                    }
                    .to_owned(),
                    names: serving.map(|c| c.names.clone()).unwrap_or_default(),
                    not_after_unix: serving.map_or(0, |c| c.not_after_unix),
                    serial: site
                        .tls
                        .certificate()
                        .or_else(|| overlay.certificates.get(site.name()))
                        .filter(|_| serving.is_some())
                        .map(|c| c.serial.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                };
                if site.tls == SiteTls::Acme {
                    let acme = self
                        .acme
                        .status(site, overlay.certificates.get(site.name()));
                    status.next_renewal_unix = acme.next_attempt.map_or(0, unix);
                    status.last_error = acme.backoff.last_error;
                    status.last_error_unix = acme.backoff.last_error_unix_ms / 1000;
                    status.failures = acme.backoff.failures;
                    status.state = if acme.issuing { "issuing" } else { "waiting" }.to_owned();
                }
                status
            })
            .collect();
        Ok(Response::new(pb::CertificatesReply {
            certificates,
            now_unix: unix(self.acme.now()),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.access.authorize_read(&request, "Status")?;
        let current = self.reloader.current();
        let last_reload = self.reloader.last_reload().map(|l| pb::LastReload {
            at_unix_ms: unix_ms(l.at),
            outcome: outcome(l.outcome).into(),
            summary: l.summary,
            version: l.version,
        });
        let data_planes = self
            .planes
            .list()
            .into_iter()
            .map(|p| pb::DataPlaneStatus {
                in_sync: p.serves(current.version, &current.content.hash),
                applied_content_hash: p.applied_hash.clone(),
                node_id: p.node_id,
                pid: p.pid,
                build_version: p.build_version,
                applied_version: p.applied_version,
                desired_version: current.version,
                last_nack_version: p.last_nack.as_ref().map_or(0, |(v, _)| *v),
                last_nack_error: p.last_nack.map(|(_, e)| e).unwrap_or_default(),
                listeners: p
                    .listeners
                    .into_iter()
                    .map(|(name, address)| pb::BoundListener { name, address })
                    .collect(),
                connected_at_unix_ms: p.connected_at_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            control_plane: Some(pb::ControlPlaneStatus {
                config_path: self.reloader.config_path().display().to_string(),
                version: current.version,
                content_hash: current.content.hash.clone(),
                pid: std::process::id(),
                build_version: proto::BUILD_VERSION.to_owned(),
                started_at_unix_ms: unix_ms(self.started_at),
                last_reload,
                // Where `/metrics` is served now (it follows reloads).
                metrics_address: self
                    .reloader
                    .metrics_listener()
                    .bound()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            }),
            data_planes,
            fleet: match &self.fleet {
                Some(link) => Some(crate::cluster::status(link).await),
                None => None,
            },
        }))
    }
}

/// A reload that a precondition stopped, as the FAILED_PRECONDITION scripts read: nothing was
/// published.
fn conflict(report: &ReloadReport, expected_hash: Option<&str>) -> Option<Status> {
    match report.outcome {
        Outcome::Conflict => Some(Status::failed_precondition(format!(
            "version is now {}: another writer published first; nothing was reloaded",
            report.version
        ))),
        Outcome::FileChanged => Some(Status::failed_precondition(format!(
            "the config file is not the one validated (expected text hash {}): another writer \
             changed it; nothing was reloaded",
            expected_hash.unwrap_or("-")
        ))),
        _ => None,
    }
}

fn outcome(o: Outcome) -> pb::ReloadOutcome {
    match o {
        Outcome::Applied => pb::ReloadOutcome::Applied,
        Outcome::Unchanged => pb::ReloadOutcome::Unchanged,
        Outcome::Rejected => pb::ReloadOutcome::Rejected,
        Outcome::DryRun => pb::ReloadOutcome::DryRun,
        Outcome::CanaryStopped => pb::ReloadOutcome::CanaryStopped,
        // Answered as FAILED_PRECONDITION before a reply is built.
        Outcome::Conflict | Outcome::FileChanged => pb::ReloadOutcome::Unspecified,
    }
}

fn reload_reply(report: &ReloadReport, reloader: &Reloader) -> pb::ReloadReply {
    pb::ReloadReply {
        outcome: outcome(report.outcome).into(),
        previous_version: report.previous_version,
        version: report.version,
        diagnostics: report.diagnostics.iter().map(diagnostic).collect(),
        diff: Some(report.diff.to_proto()),
        warnings: report.warnings.clone(),
        data_planes: report
            .data_planes
            .iter()
            .map(|p| pb::DataPlaneOutcome {
                node_id: p.node_id.clone(),
                pid: p.pid,
                result: match p.result {
                    PlaneResult::Acked => pb::DataPlaneResult::Acked,
                    PlaneResult::Nacked => pb::DataPlaneResult::Nacked,
                    PlaneResult::TimedOut => pb::DataPlaneResult::TimedOut,
                    PlaneResult::Disconnected => pb::DataPlaneResult::Disconnected,
                }
                .into(),
                serving_version: p.serving_version,
                error: p.error.clone(),
            })
            .collect(),
        duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        config_path: reloader.config_path().display().to_string(),
        canary: report.canary.as_ref().map(|c| pb::CanaryReport {
            nodes: c.nodes.clone(),
            wait_ms: u64::try_from(c.wait.as_millis()).unwrap_or(u64::MAX),
            max_5xx_rise: c.max_5xx_rise,
            figures: c
                .figures
                .iter()
                .map(|f| pb::CanaryNode {
                    node: f.node.clone(),
                    responses_before: f.before.0,
                    responses_5xx_before: f.before.1,
                    responses: f.during.0,
                    responses_5xx: f.during.1,
                    no_figures: f.no_figures,
                })
                .collect(),
            stopped: c.stopped.clone(),
            reverted_version: c.reverted_version,
        }),
    }
}

/// The staged rollout a Reload asks for, if any; refused as INVALID_ARGUMENT when it cannot be.
#[allow(clippy::result_large_err)]
fn canary_plan(req: &pb::ReloadRequest) -> Result<Option<crate::reloader::CanaryPlan>, Status> {
    use crate::reloader::{CANARY_MAX_5XX_RISE, CANARY_WAIT, CANARY_WAIT_MAX, CanaryPlan};
    if req.canary_nodes.is_empty() && req.canary_count == 0 {
        if req.canary_wait_ms.is_some() || req.canary_max_5xx_rise.is_some() {
            return Err(Status::invalid_argument(
                "a canary window or bound without canaries: name them (canary_nodes) or count \
                 them (canary_count)",
            ));
        }
        return Ok(None);
    }
    if !req.canary_nodes.is_empty() && req.canary_count != 0 {
        return Err(Status::invalid_argument(
            "name the canaries or count them, not both",
        ));
    }
    if req.dry_run {
        return Err(Status::invalid_argument(
            "a dry run publishes nothing: it takes no canaries",
        ));
    }
    const MAX_CANARIES: usize = 1000;
    if req.canary_nodes.len() > MAX_CANARIES
        || req
            .canary_nodes
            .iter()
            .any(|n| n.is_empty() || n.len() > 253)
    {
        return Err(Status::invalid_argument(format!(
            "canary_nodes: at most {MAX_CANARIES} node names, each 1 to 253 bytes"
        )));
    }
    let wait = req
        .canary_wait_ms
        .map_or(CANARY_WAIT, std::time::Duration::from_millis);
    if wait > CANARY_WAIT_MAX {
        return Err(Status::invalid_argument(format!(
            "canary_wait_ms: at most {} ms",
            CANARY_WAIT_MAX.as_millis()
        )));
    }
    let rise = req.canary_max_5xx_rise.unwrap_or(CANARY_MAX_5XX_RISE);
    if !(0.0..=100.0).contains(&rise) {
        return Err(Status::invalid_argument(
            "canary_max_5xx_rise: percentage points, from 0 to 100",
        ));
    }
    Ok(Some(CanaryPlan {
        nodes: req.canary_nodes.clone(),
        count: req.canary_count,
        wait,
        max_5xx_rise: rise,
    }))
}

fn diagnostic(d: &crate::config::Diagnostic) -> pb::Diagnostic {
    pb::Diagnostic {
        key_path: d.key_path.clone(),
        file: d.file.display().to_string(),
        line: d.line,
        column: d.column,
        message: d.message.clone(),
    }
}
