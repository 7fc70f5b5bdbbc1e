//! A config file in a fleet has two parts: the host's own tables (`[control]`, `[proxy]` and
//! everything under it, `[cluster]`), which stay on the host, and the rest (sites, routes,
//! limits, ACME, logging), which is the fleet's and is published to every host. A host serves
//! the fleet's part joined to its own tables.
//!
//! The split is made on the text, so that what is published is what the operator wrote
//! (comments and all) and diagnostics on every host point into it: a section belongs to the
//! host when its table header names one of the host's tables. The host's tables must be
//! written as tables (`[proxy]`), not as dotted keys or inline tables at the top of the file,
//! so that the two parts can be joined again in either order.

use toml::de::DeTable;

/// The top-level tables that belong to the host.
pub const HOST_TABLES: [&str; 3] = ["control", "proxy", "cluster"];

/// A config text split into the fleet's part and the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Everything but the host's tables: what the fleet publishes.
    pub fleet: String,
    /// The host's tables, each with its header.
    pub host: String,
}

/// Why a text cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SplitError {
    pub line: usize,
    pub message: String,
}

/// Splits `text` into the fleet's part and the host's. The text need not be a valid config
/// (validation comes after), but it must parse as TOML.
pub fn split(text: &str) -> Result<Split, SplitError> {
    if let Err(e) = DeTable::parse(text) {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        return Err(SplitError {
            line,
            message: format!("not valid TOML: {}", e.message()),
        });
    }
    let mut fleet = String::with_capacity(text.len());
    let mut host = String::new();
    let mut in_host = false;
    // Before the first table header: keys there are the top table's.
    let mut at_top = true;
    let mut state = State::Normal;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let starts_normal = state == State::Normal;
        state = scan(line, state);
        if starts_normal {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                at_top = false;
                in_host = header_table(trimmed).is_some_and(|t| HOST_TABLES.contains(&t.as_str()));
            } else if at_top && root_key(trimmed).is_some_and(|k| HOST_TABLES.contains(&k.as_str()))
            {
                return Err(SplitError {
                    line: i + 1,
                    message: format!(
                        "write `{}` as a table of its own (`[{}]` and its keys below it): in a \
                         fleet, the host's tables are kept apart from the fleet's config",
                        root_key(trimmed).unwrap_or_default(),
                        root_key(trimmed).unwrap_or_default()
                    ),
                });
            }
        }
        if in_host {
            host.push_str(line);
        } else {
            fleet.push_str(line);
        }
    }
    if !host.is_empty() && !host.ends_with('\n') {
        host.push('\n');
    }
    check_parts(&fleet, &host)?;
    Ok(Split { fleet, host })
}

/// The parts checked as TOML, by their decoded table names: the fleet's must parse on its own
/// and hold no host table, the host's only host tables. A text the line scan above cannot
/// read right (escapes in a quoted header, strings that fool it) is refused here rather than
/// published with a host table in it.
fn check_parts(fleet: &str, host: &str) -> Result<(), SplitError> {
    let refuse = |why: &str| SplitError {
        line: 0,
        message: format!(
            "cannot tell this host's tables ([control], [proxy], [cluster]) from the fleet's \
             config: {why}; write each host table under a plain header such as `[proxy]`"
        ),
    };
    let fleet_doc = DeTable::parse(fleet).map_err(|e| refuse(e.message()))?;
    if let Some(key) = fleet_doc
        .get_ref()
        .keys()
        .find(|k| HOST_TABLES.contains(&k.get_ref().as_ref()))
    {
        return Err(refuse(&format!("`{}` would be published", key.get_ref())));
    }
    let host_doc = DeTable::parse(host).map_err(|e| refuse(e.message()))?;
    if let Some(key) = host_doc
        .get_ref()
        .keys()
        .find(|k| !HOST_TABLES.contains(&k.get_ref().as_ref()))
    {
        return Err(refuse(&format!(
            "`{}` would stay on this host",
            key.get_ref()
        )));
    }
    Ok(())
}

/// Joins a fleet's part and a host's tables into the text the host serves.
pub fn join(fleet: &str, host: &str) -> String {
    let mut text = String::with_capacity(fleet.len() + host.len() + 1);
    text.push_str(fleet);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(host);
    text
}

/// The first key of a table header line (`[proxy.limits]` → `proxy`, `[[sites]]` → `sites`).
fn header_table(line: &str) -> Option<String> {
    let inner = line.trim_start_matches('[').trim_start();
    first_key(inner)
}

/// The first key of a `key = value` line at the top (`proxy.x = 1` → `proxy`).
fn root_key(line: &str) -> Option<String> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    first_key(line)
}

/// The first segment of a dotted key, unquoted.
fn first_key(text: &str) -> Option<String> {
    let text = text.trim_start();
    let mut chars = text.chars();
    match chars.next()? {
        quote @ ('"' | '\'') => {
            let rest = &text[1..];
            let end = rest.find(quote)?;
            Some(rest[..end].to_owned())
        }
        _ => {
            let end = text
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(text.len());
            (end > 0).then(|| text[..end].to_owned())
        }
    }
}

/// Where a scan of TOML text stands at a line's end: outside strings, or inside a multi-line
/// string that goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    MultiBasic,
    MultiLiteral,
}

/// Scans one line from `state`; the state at its end.
fn scan(line: &str, mut state: State) -> State {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match state {
            State::MultiBasic => {
                if bytes[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if bytes[i..].starts_with(b"\"\"\"") {
                    state = State::Normal;
                    i += 3;
                    continue;
                }
                i += 1;
            }
            State::MultiLiteral => {
                if bytes[i..].starts_with(b"'''") {
                    state = State::Normal;
                    i += 3;
                    continue;
                }
                i += 1;
            }
            State::Normal => match bytes[i] {
                b'#' => return State::Normal,
                b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                    state = State::MultiBasic;
                    i += 3;
                }
                b'\'' if bytes[i..].starts_with(b"'''") => {
                    state = State::MultiLiteral;
                    i += 3;
                }
                b'"' => {
                    // A basic string ends on this line.
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                b'\'' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                _ => i += 1,
            },
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_tables_stay_and_the_rest_is_the_fleet_s() {
        let text = "\
# the shop
body_limit_bytes = \"1m\"

[control]
socket = \"/run/controld/control.sock\"

[[proxy.listeners]]
name = \"http\"
address = \"0.0.0.0:80\"

[[sites]]
hostnames = [\"a.example\"]
upstreams = [\"http://10.0.0.5:8080\"]
respond_note = \"\"\"
[proxy]
not a header: inside a string
\"\"\"

[proxy.limits]
max_connections = 100

[cluster]
etcd = [\"http://10.0.0.1:2379\"]

[acme]
directory_url = \"https://acme.example/dir\"
";
        let split = split(text).unwrap();
        assert_eq!(
            split.fleet,
            "# the shop\nbody_limit_bytes = \"1m\"\n\n[[sites]]\nhostnames = [\"a.example\"]\n\
             upstreams = [\"http://10.0.0.5:8080\"]\nrespond_note = \"\"\"\n[proxy]\n\
             not a header: inside a string\n\"\"\"\n\n[acme]\ndirectory_url = \
             \"https://acme.example/dir\"\n"
        );
        assert_eq!(
            split.host,
            "[control]\nsocket = \"/run/controld/control.sock\"\n\n[[proxy.listeners]]\n\
             name = \"http\"\naddress = \"0.0.0.0:80\"\n\n[proxy.limits]\nmax_connections = 100\n\n\
             [cluster]\netcd = [\"http://10.0.0.1:2379\"]\n\n"
        );
        // Joined again, it is the same config (as TOML).
        let joined = join(&split.fleet, &split.host);
        assert_eq!(
            DeTable::parse(&joined).unwrap().into_inner().len(),
            DeTable::parse(text).unwrap().into_inner().len()
        );
    }

    #[test]
    fn host_tables_written_at_the_top_are_refused_with_their_line() {
        let e = split("log = 1\nproxy.shutdown_timeout = \"5s\"\n[[sites]]\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("`proxy` as a table"), "{e}");
        let e = split("control = { socket = \"/s\" }\n").unwrap_err();
        assert_eq!(e.line, 1);
        // Quoted header names count too.
        let split = split("[\"proxy\"]\nshutdown_timeout = \"5s\"\n").unwrap();
        assert!(split.fleet.is_empty());
        assert!(split.host.starts_with("[\"proxy\"]"));
    }

    #[test]
    fn text_that_is_not_toml_is_refused() {
        assert!(split("[sites\n").is_err());
    }
}
