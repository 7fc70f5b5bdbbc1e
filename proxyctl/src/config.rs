//! `proxyctl config ...`: the serving version's config, as controld has it. `config show` prints
//! the text it was built from (`Admin.GetConfig`; secret-looking values come redacted), under a
//! comment that says which version it is, so that the output is itself a valid config file.
//!
//! Pure functions of the reply; `main` does the talking.

use proto::v1::GetConfigReply;

use crate::output::one_line;

/// How many hex digits of the content hash the header shows.
const SHORT_HASH: usize = 12;

/// `# version 4 (sha256 ab12cd34ef56) from /etc/proxyd/proxy.toml`, then the config text as
/// controld returned it (ending in a newline), or a comment saying that the text of that version
/// is no longer in controld's history.
pub fn render_show(reply: &GetConfigReply) -> String {
    let mut out = format!(
        "# version {} (sha256 {}) from {}\n",
        reply.version,
        short_hash(&reply.content_hash),
        one_line(&reply.config_path)
    );
    if reply.config_text.is_empty() {
        out.push_str(&format!(
            "# the config text of version {} is no longer in the history\n",
            reply.version
        ));
    } else {
        out.push_str(&reply.config_text);
        if !reply.config_text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The first 12 hex digits, enough to tell versions apart (`unknown` when controld sent none).
fn short_hash(hash: &str) -> String {
    if hash.is_empty() {
        return "unknown".to_owned();
    }
    one_line(hash).chars().take(SHORT_HASH).collect()
}

#[cfg(test)]
mod tests;
