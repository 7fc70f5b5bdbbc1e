//! What the fleet (`crate::cluster`) needs of the Reloader: a hook that takes over reloads and
//! rollbacks on a host of a fleet, and reloads of a text (a fleet version joined to this host's
//! tables) rather than of the file.

use super::*;

/// What a host of a fleet does in place of a reload or a rollback of itself alone (the fleet,
/// `crate::cluster`, implements it).
pub trait FleetHook: Send + Sync {
    fn reload<'a>(
        &'a self,
        reloader: &'a Reloader,
        options: ReloadOptions,
    ) -> BoxFuture<'a, ReloadReport>;
    fn rollback<'a>(
        &'a self,
        reloader: &'a Reloader,
        version: Option<u64>,
        origin: Origin,
    ) -> BoxFuture<'a, Result<ReloadReport, RollbackError>>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Reloader {
    /// Joins this host to its fleet: from now on a (non-dry-run) reload, and a rollback, go
    /// through it.
    pub fn join_fleet(&self, fleet: Arc<dyn FleetHook>) {
        let _ = self.fleet.set(fleet);
    }

    /// Whether this host belongs to a fleet.
    pub fn in_fleet(&self) -> bool {
        self.fleet.get().is_some()
    }

    /// Publishes `text` (a fleet version joined to this host's tables) as a reload of the file
    /// would: validated, diffed, versioned, sent to the data planes and waited for, under the
    /// reload lock. `name` locates its diagnostics. The config file is not touched.
    pub async fn reload_text(&self, text: String, name: PathBuf, origin: Origin) -> ReloadReport {
        let started = Instant::now();
        let options = ReloadOptions {
            origin,
            ..ReloadOptions::default()
        };
        let _serialized = self.lock.lock().await;
        self.around(&options, started, async {
            let current = self.current();
            match parse_off_thread(text.clone(), name.clone(), None).await {
                Ok(config) => self.publish(current, config, &text, &options).await,
                Err(e) => self.rejected(&current, e.diagnostics(&name)),
            }
        })
        .await
    }

    /// Checks `text` as a reload of it would be checked (parse, validation, the data plane's
    /// conversion of its snapshot; off the async threads), without a check's place: the
    /// problems, and what it would change against the serving config.
    pub async fn check_text(&self, text: String, file: PathBuf) -> (Vec<Diagnostic>, ConfigDiff) {
        let current = self.current();
        match parse_off_thread(text, file.clone(), None).await {
            Err(e) => (e.diagnostics(&file), ConfigDiff::default()),
            Ok(config) => {
                let diff = ConfigDiff::between(&current.config, &config);
                match build_off_thread(config, self.acme_overlay(), file, None).await {
                    Ok((_, _, None)) => (Vec::new(), diff),
                    Ok((_, _, Some(refused))) | Err(refused) => (vec![refused], diff),
                }
            }
        }
    }

    /// How long a reload waits for the data planes' answers.
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// The config file's text, unchecked (off the async threads, at most the config size
    /// limit): a host of a fleet takes only its own tables from it.
    pub async fn read_text(&self) -> Result<String, String> {
        let path = self.config_path.clone();
        tokio::task::spawn_blocking(move || {
            let limit = crate::config::MAX_CONFIG_BYTES;
            let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.len() > limit {
                return Err(format!("{}: larger than {limit} bytes", path.display()));
            }
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// Reads the config file as a reload does (off the async threads), without publishing.
    pub async fn read_file(&self) -> Result<(Config, String), crate::config::LoadError> {
        load_off_thread(self.config_path.clone(), None).await
    }
}
