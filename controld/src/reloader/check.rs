//! Checks that publish nothing: `Validate` and dry runs, at most [`MAX_CONCURRENT_CHECKS`] at
//! once, each holding its place until its work ends.

use super::*;

impl Reloader {
    /// Checks `text` exactly as a reload of it would be checked, and diffs it against the
    /// running snapshot; publishes nothing.
    ///
    /// Parsing and the certificate files it names are read off the async threads, and at most
    /// [`MAX_CONCURRENT_CHECKS`] run at once: any local user may call it.
    pub async fn validate(
        &self,
        text: String,
        file: PathBuf,
    ) -> Result<ValidateReport, CheckError> {
        let permit = self.check_permit()?;
        let current = self.current();
        let mut report = ValidateReport {
            text_hash: crate::snapshot::text_hash(&text),
            diagnostics: Vec::new(),
            diff: ConfigDiff::default(),
            warnings: Vec::new(),
            current_version: current.version,
            next_version: current.version,
        };
        if text.len() as u64 > crate::config::MAX_CONFIG_BYTES {
            report.diagnostics =
                crate::config::LoadError::TooLarge { path: file.clone() }.diagnostics(&file);
            return Ok(report);
        }
        let parsed = parse_off_thread(text, file.clone(), Some(permit.clone())).await;
        match parsed {
            Ok(config) => {
                let built =
                    build_off_thread(config, self.acme_overlay(), file.clone(), Some(permit)).await;
                let (config, content, refused) = match built {
                    Ok(built) => built,
                    Err(failed) => {
                        report.diagnostics.push(failed);
                        return Ok(report);
                    }
                };
                report.diff = ConfigDiff::between(&current.config, &config);
                report.warnings = self.warnings(&report.diff, &config);
                if let Some(refused) = refused {
                    report.diagnostics.push(refused);
                } else if content.hash != current.content.hash
                    || controld_changed(&current.config, &config)
                {
                    report.next_version = current.version + 1;
                }
            }
            Err(e) => report.diagnostics = e.diagnostics(&file),
        }
        Ok(report)
    }

    /// A place among the [`MAX_CONCURRENT_CHECKS`] Validate calls and dry runs checked at once.
    /// Held by the work, not the caller: a caller that hangs up does not free its place while
    /// the parse it started goes on.
    pub fn check_permit(&self) -> Result<Arc<tokio::sync::OwnedSemaphorePermit>, CheckError> {
        self.checks
            .clone()
            .try_acquire_owned()
            .map(Arc::new)
            .map_err(|_| CheckError::Busy)
    }
}
