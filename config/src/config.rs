//! The config file: read it (once, size-capped), deserialize all of it, validate all of it, and
//! report every problem at once with its key path and file:line:column.

mod certs;
mod file;
mod locate;
pub mod model;
mod validate;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use certs::{EXPIRY_WARNING, check_pem, covers};
pub use locate::KeyPath;
pub use model::*;
pub use validate::{DEFAULT_BODY_LIMIT_BYTES, parse_size};

use file::{FileConfig, TableKind, known_keys};
use locate::{Locator, Target};

/// A config file larger than this is refused before it is parsed.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// At most this many diagnostics are reported for one file (the first ones in file order), then
/// one more line that says how many were left out. A file full of typos, or a candidate that is
/// not a config at all, then costs the operator one screen and the reply a few kilobytes.
pub const MAX_DIAGNOSTICS: usize = 100;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// `sites[2].upstreams[0]`; empty for syntax errors.
    pub key_path: String,
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the file (a missing section, say).
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&diagnostic_text(
            &self.file.display().to_string(),
            self.line,
            self.column,
            &self.key_path,
            &self.message,
        ))
    }
}

/// A diagnostic as compilers print them, the one formatter of controld and proxyctl alike:
/// `file:line:column: key_path: message`. The line is left out when unknown (0), the column
/// likewise, the key path when empty (syntax errors); the message is verbatim.
pub fn diagnostic_text(
    file: &str,
    line: u32,
    column: u32,
    key_path: &str,
    message: &str,
) -> String {
    let mut text = file.to_owned();
    if line > 0 {
        text.push_str(&format!(":{line}"));
        if column > 0 {
            text.push_str(&format!(":{column}"));
        }
    }
    if !text.is_empty() {
        text.push_str(": ");
    }
    if !key_path.is_empty() {
        text.push_str(key_path);
        text.push_str(": ");
    }
    text.push_str(message);
    text
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path} is not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl LoadError {
    /// Every diagnostic, one per problem; an I/O failure becomes a single diagnostic.
    pub fn diagnostics(&self, path: &Path) -> Vec<Diagnostic> {
        match self {
            LoadError::Invalid(d) => d.clone(),
            other => vec![Diagnostic {
                key_path: String::new(),
                file: path.to_owned(),
                line: 0,
                column: 0,
                message: other.to_string(),
            }],
        }
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Reads `path` with one open and one bounded read, then parses it.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    load_with_text(path).map(|(config, _)| config)
}

/// Like [`load`], also returning the text that was read (for the version history).
pub fn load_with_text(path: &Path) -> Result<(Config, String), LoadError> {
    let text = read(path)?;
    let config = parse(&text, path)?;
    Ok((config, text))
}

/// Reads the file once, refusing one over [`MAX_CONFIG_BYTES`].
pub fn read(path: &Path) -> Result<String, LoadError> {
    let io = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = read_regular(path, MAX_CONFIG_BYTES).map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8 {
        path: path.to_owned(),
    })
}

/// Reads at most `max + 1` bytes of `path`, which must be a regular file: a FIFO, a device or a
/// socket named in a config would block the reader or never end (checked before opening, since
/// opening a FIFO itself blocks).
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses and validates config text; `file` names it in diagnostics.
pub fn parse(text: &str, file: &Path) -> Result<Config, LoadError> {
    // Built once: locating every problem below costs O(text + problems).
    let locator = Locator::new(text);

    // Syntax: every error the parser can recover from, at once.
    let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let found = syntax
            .iter()
            .map(|e| Found {
                at: e.span().map_or((0, 0), |s| locator.line_col_of(s.start)),
                key_path: KeyPath::root(),
                message: Message::Text(e.message().trim().to_owned()),
            })
            .collect();
        return Err(LoadError::Invalid(reported(found, file)));
    }

    // Shape: types and unknown keys. serde stops at the first type error, but every unknown key
    // seen up to there is reported.
    let mut unknown = Vec::new();
    let parsed = toml::Deserializer::parse(text).and_then(|de| {
        serde_ignored::deserialize(de, |path| unknown.push(KeyPath::from_ignored(&path)))
    });
    let mut found: Vec<Found> = unknown
        .into_iter()
        .map(|path| Found {
            at: locator.line_col(&path, Target::Key),
            key_path: path,
            message: Message::UnknownKey,
        })
        .collect();
    let file_config: FileConfig = match parsed {
        Ok(c) => c,
        Err(e) => {
            let offset = e.span().map(|s| s.start);
            found.push(Found {
                at: offset.map_or((0, 0), |o| locator.line_col_of(o)),
                key_path: offset.map_or_else(KeyPath::root, |o| locator.path_at(o)),
                message: Message::Text(e.message().trim().to_owned()),
            });
            return Err(LoadError::Invalid(reported(found, file)));
        }
    };

    // Meaning: every rule, every problem. The certificate files are read first (the only
    // I/O); validation itself is pure.
    let files = certs::read_files(&file_config);
    let inputs = validate::Inputs {
        now: std::time::SystemTime::now(),
        files: &files,
    };
    let config = validate::validate(file_config, &inputs);
    if let Err(problems) = &config {
        found.extend(problems.iter().map(|p| Found {
            at: locator.line_col(&p.path, Target::Value),
            key_path: p.path.clone(),
            message: Message::Text(p.message.clone()),
        }));
    }
    match config {
        Ok(config) if found.is_empty() => Ok(config),
        _ => Err(LoadError::Invalid(reported(found, file))),
    }
}

/// A problem, located, before the cap: its text is made only if it is reported (the "did you
/// mean" hint of an unknown key is the costly part of a file full of them).
#[derive(PartialEq, Eq)]
struct Found {
    /// Line and column; (0, 0) without a place.
    at: (u32, u32),
    /// Root for syntax errors.
    key_path: KeyPath,
    message: Message,
}

#[derive(PartialEq, Eq)]
enum Message {
    Text(String),
    /// Made from the key path by [`unknown_key_message`].
    UnknownKey,
}

/// Sorts by place in the file (problems with no place last), drops exact repeats (which the
/// parser's error recovery can produce), and keeps the first [`MAX_DIAGNOSTICS`], followed by a
/// line without a place that counts the rest.
fn reported(mut found: Vec<Found>, file: &Path) -> Vec<Diagnostic> {
    found.sort_by_key(|f| (f.at.0 == 0, f.at));
    found.dedup();
    let left_out = found.len().saturating_sub(MAX_DIAGNOSTICS);
    found.truncate(MAX_DIAGNOSTICS);
    let diagnostic = |key_path: String, (line, column), message| Diagnostic {
        key_path,
        file: file.to_owned(),
        line,
        column,
        message,
    };
    let mut diagnostics: Vec<Diagnostic> = found
        .into_iter()
        .map(|f| {
            let message = match f.message {
                Message::Text(text) => text,
                Message::UnknownKey => unknown_key_message(&f.key_path),
            };
            diagnostic(f.key_path.to_string(), f.at, message)
        })
        .collect();
    if left_out > 0 {
        let plural = if left_out == 1 { "" } else { "s" };
        diagnostics.push(diagnostic(
            String::new(),
            (0, 0),
            format!(
                "{left_out} more problem{plural} not shown (at most {MAX_DIAGNOSTICS} are reported)"
            ),
        ));
    }
    diagnostics
}

fn unknown_key_message(path: &KeyPath) -> String {
    let Some(locate::Segment::Key(key)) = path.segments().last() else {
        return "unknown key".to_owned();
    };
    let parent = path.parent();
    let hint = TableKind::of(&parent.keys())
        .map(known_keys)
        .and_then(|known| closest(key, known))
        .map(|k| format!("; did you mean `{k}`?"))
        .unwrap_or_default();
    format!("unknown key `{key}`{hint}")
}

/// The known key closest to `key`, when it is close enough to be a typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let chars = key.chars().count();
    known
        .iter()
        // The distance is at least the difference in length: a key far longer than any known
        // one (a megabyte of garbage, say) is never compared letter by letter.
        .filter(|k| chars.abs_diff(k.chars().count()) <= 2.max(k.len() / 4))
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod proptests;

#[cfg(test)]
mod scale_tests;
/// Proptest strategies of valid config files (`strategies` feature): controld's differential
/// test feeds them through validation, the snapshot and proxyd's conversion.
#[cfg(any(test, feature = "strategies"))]
#[doc(hidden)]
#[path = "config/proptests/strategies.rs"]
pub mod strategies;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
#[cfg(test)]
mod upstream_tests;
