//! A `ConfigDiff` as text: one phrase for a headline, and a block per modified site with each
//! field that changed, the way `terraform plan` shows a resource. `reload`, `rollback`,
//! `check --remote` and `history` all print a diff through these two functions.

use proto::v1::ConfigDiff;

use crate::output::one_line;

/// Shown in place of a change summary when the new snapshot equals the old one (`--force`).
const NO_CHANGE: &str = "no content change";

/// One phrase for everything a diff holds, e.g.
/// `1 site added: a.example; rate_limit.burst 200 → 300; control.socket changed (restart needed)`.
pub fn summary(diff: Option<&ConfigDiff>) -> String {
    let Some(diff) = diff else {
        return NO_CHANGE.to_owned();
    };
    let mut parts = Vec::new();
    push_sites(&mut parts, &diff.sites_added, "added");
    push_sites(&mut parts, &diff.sites_removed, "removed");
    push_sites(&mut parts, &diff.sites_modified, "modified");
    for change in &diff.limits_changed {
        parts.push(format!(
            "{} {} → {}",
            change.field,
            value_or_unset(&change.old_value),
            value_or_unset(&change.new_value)
        ));
    }
    for change in &diff.static_changed {
        parts.push(format!("{} changed (restart needed)", change.field));
    }
    if parts.is_empty() {
        NO_CHANGE.to_owned()
    } else {
        parts.join("; ")
    }
}

fn push_sites(parts: &mut Vec<String>, names: &[String], verb: &str) {
    let noun = match names.len() {
        0 => return,
        1 => "site",
        _ => "sites",
    };
    parts.push(format!(
        "{} {noun} {verb}: {}",
        names.len(),
        names.join(", ")
    ));
}

fn value_or_unset(value: &str) -> &str {
    if value.is_empty() { "(unset)" } else { value }
}

/// What changed inside each modified site, every line starting with `indent`:
///
/// ```text
/// ~ site app.test
///     upstreams: + http://10.0.0.3:80  - http://10.0.0.1:80
///     rate_limit: 10/s burst 5 → 20/s burst 10
/// ```
///
/// Nothing when the diff has no details (nothing modified, or a controld too old to send them):
/// the summary already names the sites.
pub fn site_lines(diff: Option<&ConfigDiff>, indent: &str) -> Vec<String> {
    let Some(diff) = diff else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for site in &diff.site_changes {
        lines.push(format!("{indent}~ site {}", one_line(&site.site)));
        lines.extend(site.changes.iter().map(|change| {
            // The same words controld logs; one_line because the values came over the wire.
            let text = proxy_config::diff::FieldChange::from(change).describe();
            format!("{indent}    {}", one_line(&text))
        }));
    }
    lines
}

#[cfg(test)]
mod tests {
    use proto::v1::{ConfigDiff, SiteChange};

    use super::*;
    use crate::fixtures::{self, change};

    #[test]
    fn summary_names_every_kind_of_change() {
        let mut diff = fixtures::diff();
        diff.sites_removed = vec!["c.example".into(), "d.example".into()];
        diff.static_changed = vec![change("control.socket", "/a", "/b")];
        assert_eq!(
            summary(Some(&diff)),
            "1 site added: a.example; 2 sites removed: c.example, d.example; \
             1 site modified: b.example; rate_limit.burst 200 → 300; \
             control.socket changed (restart needed)"
        );
    }

    #[test]
    fn empty_or_missing_diff_says_no_content_change() {
        assert_eq!(summary(None), "no content change");
        assert_eq!(summary(Some(&ConfigDiff::default())), "no content change");
    }

    #[test]
    fn unset_values_are_named() {
        let diff = ConfigDiff {
            limits_changed: vec![change("log_level", "", "debug")],
            ..ConfigDiff::default()
        };
        assert_eq!(summary(Some(&diff)), "log_level (unset) → debug");
    }

    #[test]
    fn each_modified_site_is_a_block_of_its_changes() {
        assert_eq!(
            site_lines(Some(&fixtures::detailed_diff()), ""),
            [
                "~ site b.example",
                "    upstreams: + http://10.0.0.3:80  - http://10.0.0.1:80",
                "    routes[\"/api\"].upstreams: + http://b:80  - http://a:80",
                "    rate_limit: 10/s burst 5 → 20/s burst 10",
                "    tls.certificate: files sha256 3F:A1:0C:77…9A:01 expires 2027-01-01 → \
                 files sha256 77:00:12:AB…00:01 expires 2027-06-01",
            ]
        );
        assert_eq!(
            site_lines(Some(&fixtures::detailed_diff()), "  ")[0],
            "  ~ site b.example"
        );
    }

    #[test]
    fn no_details_no_lines() {
        assert!(site_lines(None, "").is_empty());
        assert!(site_lines(Some(&fixtures::diff()), "").is_empty());
    }

    #[test]
    fn values_from_the_wire_cannot_break_a_line() {
        let diff = ConfigDiff {
            site_changes: vec![SiteChange {
                site: "a\nb".into(),
                changes: vec![change("x", "1\n2", "3")],
            }],
            ..ConfigDiff::default()
        };
        assert_eq!(
            site_lines(Some(&diff), ""),
            ["~ site a; b", "    x: 1; 2 → 3"]
        );
    }
}
