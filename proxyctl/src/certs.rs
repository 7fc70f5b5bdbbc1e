//! `proxyctl certs`: every site's certificate as a short table (source, expiry, days left, next
//! renewal, last error), and the warnings `status` shows for certificates close to expiry.
//!
//! Pure functions of the `CertificatesReply`; `main` does the talking.

use proto::v1::{CertificateStatus, CertificatesReply};
use serde::Serialize;

use crate::output::{self, align, format_unix_ms, one_line};

const DAY: u64 = 86_400;

/// A certificate from files is flagged by `status` when fewer days than this are left (the
/// same as controld's reload warning).
pub const FILES_WARNING_DAYS: i64 = 30;
/// An ACME certificate is renewed well before this; fewer days left means renewal is failing.
pub const ACME_WARNING_DAYS: i64 = 14;

/// Renders the reply for a terminal, ending in a newline.
pub fn render(reply: &CertificatesReply) -> String {
    if reply.certificates.is_empty() {
        return output::lines(&["no site has TLS".to_owned()]);
    }
    let header = [
        "SITE",
        "SOURCE",
        "NOT AFTER",
        "DAYS LEFT",
        "NEXT RENEWAL",
        "LAST ERROR",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    rows.extend(reply.certificates.iter().map(|c| row(c, reply.now_unix)));
    let mut lines = align(&rows);
    for c in &reply.certificates {
        if !c.names.is_empty() && c.names != c.hostnames {
            lines.push(format!("{}: names {}", c.site, c.names.join(", ")));
        }
    }
    output::lines(&lines)
}

fn row(c: &CertificateStatus, now: u64) -> Vec<String> {
    let (not_after, days) = if c.not_after_unix == 0 {
        ("none yet".to_owned(), "-".to_owned())
    } else {
        (
            format_unix_ms(c.not_after_unix.saturating_mul(1000)),
            match days_left(c, now) {
                d if d < 0 => "expired".to_owned(),
                d => d.to_string(),
            },
        )
    };
    let next = match (c.source.as_str(), c.state.as_str()) {
        ("acme", "issuing") => "now (issuing)".to_owned(),
        ("acme", _) if c.next_renewal_unix != 0 => {
            format_unix_ms(c.next_renewal_unix.saturating_mul(1000))
        }
        _ => "-".to_owned(),
    };
    let error = if c.last_error.is_empty() {
        "-".to_owned()
    } else {
        format!("{} ({} failed)", one_line(&c.last_error), c.failures)
    };
    vec![
        c.site.clone(),
        c.source.clone(),
        not_after,
        days,
        next,
        error,
    ]
}

/// Whole days until notAfter, negative once expired.
fn days_left(c: &CertificateStatus, now: u64) -> i64 {
    let secs = i128::from(c.not_after_unix) - i128::from(now);
    i64::try_from(secs.div_euclid(i128::from(DAY))).unwrap_or(i64::MIN)
}

/// One line per certificate `status` should flag: expired, close to expiry, or an ACME site
/// still without one after a failure.
pub fn warnings(reply: &CertificatesReply) -> Vec<String> {
    reply
        .certificates
        .iter()
        .filter_map(|c| {
            let error = if c.last_error.is_empty() {
                String::new()
            } else {
                format!("; last renewal error: {}", one_line(&c.last_error))
            };
            if c.not_after_unix == 0 {
                return (!c.last_error.is_empty())
                    .then(|| format!("certificate of {} NOT issued yet{error}", c.site));
            }
            let days = days_left(c, reply.now_unix);
            let limit = if c.source == "acme" {
                ACME_WARNING_DAYS
            } else {
                FILES_WARNING_DAYS
            };
            if days < 0 {
                Some(format!("certificate of {} EXPIRED{error}", c.site))
            } else if days < limit {
                Some(format!(
                    "certificate of {} expires in {days} days ({}){error}",
                    c.site,
                    format_unix_ms(c.not_after_unix.saturating_mul(1000))
                ))
            } else {
                None
            }
        })
        .collect()
}

/// `proxyctl --json certs`.
#[derive(Debug, Serialize)]
pub struct Certs {
    pub certificates: Vec<Cert>,
    /// controld's clock when it answered, Unix milliseconds.
    pub now_unix_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Cert {
    pub site: String,
    pub hostnames: Vec<String>,
    /// `files` or `acme`.
    pub source: String,
    /// The serving certificate's names; `[]` when there is none yet.
    pub names: Vec<String>,
    pub serial: Option<String>,
    /// `null` when there is no certificate yet.
    pub not_after_unix_ms: Option<u64>,
    /// Whole days until notAfter (negative once expired); `null` when no certificate yet.
    pub days_left: Option<i64>,
    /// ACME: the next attempt (renewal time, or end of the back-off); `null` for files and
    /// while an attempt runs.
    pub next_renewal_unix_ms: Option<u64>,
    /// ACME: `issuing` or `waiting`; `null` for files.
    pub state: Option<String>,
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
    /// ACME: failed attempts in a row.
    pub failures: u32,
}

impl From<&CertificatesReply> for Certs {
    fn from(reply: &CertificatesReply) -> Certs {
        let ms = |secs: u64| (secs != 0).then(|| secs.saturating_mul(1000));
        Certs {
            now_unix_ms: reply.now_unix.saturating_mul(1000),
            certificates: reply
                .certificates
                .iter()
                .map(|c| Cert {
                    site: c.site.clone(),
                    hostnames: c.hostnames.clone(),
                    source: c.source.clone(),
                    names: c.names.clone(),
                    serial: (!c.serial.is_empty()).then(|| c.serial.clone()),
                    not_after_unix_ms: ms(c.not_after_unix),
                    days_left: (c.not_after_unix != 0).then(|| days_left(c, reply.now_unix)),
                    next_renewal_unix_ms: ms(c.next_renewal_unix),
                    state: (!c.state.is_empty()).then(|| c.state.clone()),
                    last_error: (!c.last_error.is_empty()).then(|| c.last_error.clone()),
                    last_error_unix_ms: ms(c.last_error_unix),
                    failures: c.failures,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_900_000_000;

    fn reply() -> CertificatesReply {
        CertificatesReply {
            now_unix: NOW,
            certificates: vec![
                CertificateStatus {
                    site: "a.example".into(),
                    hostnames: vec!["a.example".into()],
                    source: "files".into(),
                    names: vec!["a.example".into()],
                    not_after_unix: NOW + 200 * DAY,
                    ..Default::default()
                },
                CertificateStatus {
                    site: "b.example".into(),
                    hostnames: vec!["b.example".into()],
                    source: "acme".into(),
                    names: vec!["b.example".into()],
                    not_after_unix: NOW + 5 * DAY + 10,
                    next_renewal_unix: NOW + 60,
                    last_error: "connection refused".into(),
                    failures: 2,
                    state: "waiting".into(),
                    ..Default::default()
                },
                CertificateStatus {
                    site: "c.example".into(),
                    hostnames: vec!["c.example".into()],
                    source: "acme".into(),
                    state: "issuing".into(),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn the_table_shows_days_left_next_renewal_and_errors() {
        let text = render(&reply());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SITE"), "{text}");
        assert!(
            lines[1].contains("files") && lines[1].contains(" 200 "),
            "{text}"
        );
        assert!(lines[2].contains(" 5 ") && lines[2].contains("connection refused (2 failed)"));
        assert!(
            lines[3].contains("none yet") && lines[3].contains("now (issuing)"),
            "{text}"
        );
    }

    #[test]
    fn status_flags_certificates_close_to_expiry() {
        let warnings = warnings(&reply());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("certificate of b.example expires in 5 days"));
        assert!(warnings[0].ends_with("last renewal error: connection refused"));
    }

    #[test]
    fn json_uses_milliseconds_and_nulls() {
        let json = serde_json::to_value(Certs::from(&reply())).unwrap();
        let c = &json["certificates"][2];
        assert!(c["not_after_unix_ms"].is_null());
        assert!(c["days_left"].is_null());
        assert_eq!(json["certificates"][1]["days_left"], 5);
        assert_eq!(
            json["certificates"][1]["next_renewal_unix_ms"],
            (NOW + 60) * 1000
        );
    }
}
