//! The one path every new version takes, and sending the serving version again to data planes
//! that do not serve it.

use super::*;

impl Reloader {
    /// The one path of every new version (reload, rollback, ACME): record the version, record
    /// it in the history with its kind and config text, publish it, and wait for the data
    /// planes' answers. The caller runs it inside [`Reloader::around`] (systemd status, metrics,
    /// the last reload) and under the reload lock.
    pub(super) async fn commit(
        &self,
        current: &Current,
        change: Change,
        origin: &Origin,
    ) -> Result<(u64, Vec<PlaneOutcome>), Diagnostic> {
        let version = current.version + 1;
        let hash = change.content.hash.clone();
        // Off the async threads: a write and fsyncs.
        let recorded = {
            let (state, published) = (
                self.state.clone(),
                Published {
                    version,
                    hash: hash.clone(),
                },
            );
            tokio::task::spawn_blocking(move || state.record(&published))
                .await
                .unwrap_or_else(|e| {
                    Err(Error::StateDir {
                        path: self.state.path().to_owned(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, version, "cannot record the new version; nothing was published");
            return Err(Diagnostic {
                key_path: "control.state_dir".to_owned(),
                file: self.state.path().to_owned(),
                line: 0,
                column: 0,
                message: format!("cannot record version {version}, so nothing was published: {e}"),
            });
        }
        let entry = Entry {
            version,
            hash: change.content.hash.clone(),
            at_unix_ms: unix_ms(SystemTime::now()),
            source: origin.source.clone(),
            uid: origin.uid,
            pid: origin.pid,
            summary: change.summary.clone(),
            kind: change.kind,
            diff: change.diff.clone(),
        };
        if change.kind == Kind::Certificate {
            tracing::info!(old_version = current.version, new_version = version, changes = %change.summary, "publishing new config version");
        }
        let waiting = self.planes.connected();
        let text = change.text.clone();
        if let Some(overlay) = change.overlay {
            *self.acme.lock().unwrap_or_else(|e| e.into_inner()) = overlay;
        }
        if let Some(acme) = &change.acme {
            self.acme_config
                .send_if_modified(|serving| replace_if_changed(serving, acme));
        }
        self.current.send_replace(Arc::new(Current {
            version,
            config: change.config,
            content: change.content,
            text: change.text,
        }));
        // Recorded once the data planes have the snapshot on its way: its writes and fsyncs
        // (two files) no longer delay the new routes (only the version must be durable first),
        // off the async threads.
        let history = self.history.clone();
        let recorded = tokio::task::spawn_blocking(move || history.record(&entry, &text)).await;
        self.history_written
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(Err(e)) | Err(e) = recorded.map_err(|e| Error::StateDir {
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        }) {
            // The version is published either way; only its history entry is missing (the next
            // start writes it again).
            tracing::warn!(error = %e, version, "cannot record the version in the history");
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        let planes = self
            .planes
            .wait_for_content(version, &hash, &waiting, deadline)
            .await;
        Ok((version, planes))
    }

    /// Sends the serving snapshot again to every connected data plane that has not applied it
    /// (it refused it, or missed it) and waits for their answers. Once per reload: a data plane
    /// that refuses the same version again is reported, never looped on.
    pub(super) async fn resync(&self, current: &Current) -> Vec<PlaneOutcome> {
        let behind: Vec<_> = self
            .planes
            .connected()
            .into_iter()
            .filter(|(_, p)| {
                p.acked_version != current.version
                    || !p.serves(current.version, &current.content.hash)
            })
            .collect();
        if behind.is_empty() {
            return Vec::new();
        }
        for (id, plane) in &behind {
            tracing::info!(node_id = %plane.node_id, serving = plane.applied_version,
                version = current.version, "data plane out of sync; sending the serving version again");
            self.planes.resend(*id, current.version);
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        self.planes
            .wait_for_content(current.version, &current.content.hash, &behind, deadline)
            .await
    }
}
