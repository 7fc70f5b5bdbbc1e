//! The ACME account (one per CA: restored from the fleet or the state directory, else created
//! once) and the CA's suggested renewal times (ARI).

use std::time::Duration;

use instant_acme::{Account, NewAccount};

use super::{Acme, AriChoice, client, lock, schedule};
use crate::config::{AcmeConfig, Certificate, Site};

impl Acme {
    /// The account for the CA of `acme`: cached, else restored from the state directory, else
    /// created (and stored) once.
    pub(super) async fn account(&self, acme: &AcmeConfig) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some((config, account)) = slot.as_ref()
            && config == acme
        {
            return Ok(account.clone());
        }
        let http = client::CaClient::new(acme, self.retry_after.clone())?;
        let builder = Account::builder_with_http(Box::new(http));
        let url = acme.directory_url.clone();
        // In a fleet, the fleet's account first: one account per fleet and CA.
        let from_fleet = match self.fleet() {
            Some(fleet) => fleet
                .load_account(url.clone())
                .await?
                .map(|json| {
                    serde_json::from_slice::<instant_acme::AccountCredentials>(&json)
                        .map_err(|e| format!("the fleet's ACME account is unreadable: {e}"))
                })
                .transpose()?,
            None => None,
        };
        // (A host's own account from before it joined is not the fleet's: not used there.)
        let stored = match self.fleet() {
            Some(_) => from_fleet,
            None => self.on_store(move |s| s.load_account(&url)).await??,
        };
        let account = match stored {
            Some(credentials) => builder
                .from_credentials(credentials)
                .await
                .map_err(|e| format!("reaching the ACME server: {e}"))?,
            None => {
                let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        acme.directory_url.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("creating the ACME account: {e}"))?;
                if let Some(fleet) = self.fleet() {
                    let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
                    fleet
                        .save_account(acme.directory_url.clone(), json)
                        .await
                        .map_err(|e| format!("storing the ACME account in the fleet: {e}"))?;
                }
                let url = acme.directory_url.clone();
                self.on_store(move |s| s.save_account(&url, &credentials))
                    .await??;
                tracing::info!(ca = %acme.directory_url, "ACME account created and stored");
                account
            }
        };
        *slot = Some((acme.clone(), account.clone()));
        Ok(account)
    }

    /// Asks the CA for its suggested renewal window (ARI) when it offers one and the last
    /// answer is stale. Best effort: without an answer the one-third rule applies.
    pub(super) async fn refresh_ari(
        &self,
        acme: &AcmeConfig,
        site: &Site,
        certificate: Option<&Certificate>,
    ) {
        use std::sync::atomic::Ordering;
        let Some(certificate) = certificate else {
            return;
        };
        if self.no_ari.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now();
        let fresh = lock(&self.ari)
            .get(site.name())
            .is_some_and(|a| a.serial == certificate.serial && a.refresh_at > now);
        if fresh {
            return;
        }
        // Whatever the outcome, not asked again for an hour (or what the CA says): without an
        // answer the one-third rule stands.
        let fallback = AriChoice {
            serial: certificate.serial.clone(),
            renew_at: schedule::renewal_time(certificate.not_before, certificate.not_after),
            refresh_at: now + Duration::from_secs(60 * 60),
        };
        lock(&self.ari).insert(site.name().to_owned(), fallback);
        // In the background task, like every exchange with the CA; a CA that is down costs one
        // refused connection per hour.
        let account = match self.account(acme).await {
            Ok(account) => account,
            Err(e) => {
                tracing::debug!(site = site.name(), error = %e, "no ARI: the CA is unreachable");
                return;
            }
        };
        use rustls_pki_types::pem::PemObject;
        let Some(der) =
            rustls_pki_types::CertificateDer::pem_slice_iter(certificate.chain_pem.as_bytes())
                .next()
                .and_then(Result::ok)
        else {
            return;
        };
        let Ok(id) = instant_acme::CertificateIdentifier::try_from(&der) else {
            return;
        };
        match account.renewal_info(&id).await {
            Ok((info, refresh)) => {
                let renew_at = schedule::in_window(
                    info.suggested_window.start.into(),
                    info.suggested_window.end.into(),
                    fastrand::f64(),
                );
                lock(&self.ari).insert(
                    site.name().to_owned(),
                    AriChoice {
                        serial: certificate.serial.clone(),
                        renew_at,
                        refresh_at: now + refresh.max(Duration::from_secs(60 * 60)),
                    },
                );
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                self.no_ari.store(true, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(site = site.name(), error = %e, "no ARI answer"),
        }
    }
}
