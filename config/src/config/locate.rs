//! Key paths (`sites[2].upstreams[0]`) and where they stand in the file (line:column).

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path from the document root to a key or array element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath::default()
    }

    pub fn key(&self, key: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    pub fn index(&self, index: usize) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The keys of the path without array indexes (`sites[1].tls` → `["sites", "tls"]`).
    pub fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    /// The path without its last segment.
    pub fn parent(&self) -> KeyPath {
        let mut parent = self.clone();
        parent.0.pop();
        parent
    }

    /// Converts the path serde_ignored reports for an ignored key.
    pub fn from_ignored(path: &serde_ignored::Path<'_>) -> KeyPath {
        use serde_ignored::Path;
        match path {
            Path::Root => KeyPath::root(),
            Path::Seq { parent, index } => KeyPath::from_ignored(parent).index(*index),
            Path::Map { parent, key } => KeyPath::from_ignored(parent).key(key),
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => KeyPath::from_ignored(parent),
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Which part of a key/value pair a diagnostic points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Key,
    Value,
}

/// Finds spans in the parsed document.
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Locator<'a> {
        Locator {
            text,
            doc: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line and column of `path`; (0, 0) when the path is not in the file (a
    /// default value, say).
    pub fn line_col(&self, path: &KeyPath, target: Target) -> (u32, u32) {
        match self.span(path, target) {
            Some(span) => self.line_col_of(span.start),
            None => (0, 0),
        }
    }

    /// The 1-based line and column of a byte offset.
    pub fn line_col_of(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (to_u32(line), to_u32(column))
    }

    fn span(&self, path: &KeyPath, target: Target) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut table: &DeTable<'_> = doc.get_ref();
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        let mut span = None;
        for seg in path.segments() {
            match seg {
                Segment::Key(k) => {
                    if let Some(v) = value {
                        table = match v.get_ref() {
                            DeValue::Table(t) => t,
                            _ => return span,
                        };
                    }
                    let Some((key, v)) = table.get_key_value(k.as_str()) else {
                        return span;
                    };
                    span = Some(if target == Target::Key {
                        key.span()
                    } else {
                        v.span()
                    });
                    value = Some(v);
                }
                Segment::Index(n) => {
                    let DeValue::Array(items) = value?.get_ref() else {
                        return span;
                    };
                    let item = items.get(*n)?;
                    span = Some(item.span());
                    value = Some(item);
                }
            }
        }
        // An array of tables' item span can be empty; fall back to its first key.
        span
    }

    /// The deepest key path at `offset` (for errors serde reports by span). Spans of implicit
    /// tables (`[[sites]]` items) cover only their header, so each level picks the last entry
    /// that starts at or before `offset`.
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let mut path = KeyPath::root();
        let Some(doc) = self.doc.as_ref() else {
            return path;
        };
        let mut value: &DeValue<'_> = &DeValue::Boolean(false);
        let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
        loop {
            if let Some(t) = table.take() {
                let entry = t
                    .iter()
                    .map(|(k, v)| (k.span().start.min(v.span().start), k, v))
                    .filter(|(start, _, _)| *start <= offset)
                    .max_by_key(|(start, _, _)| *start);
                let Some((_, key, v)) = entry else {
                    return path;
                };
                path = path.key(key.get_ref());
                value = v.get_ref();
            }
            match value {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(items) => {
                    let item = items
                        .iter()
                        .enumerate()
                        .rfind(|(_, it)| it.span().start <= offset);
                    let Some((i, it)) = item else { return path };
                    path = path.index(i);
                    value = it.get_ref();
                }
                _ => return path,
            }
        }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "a = 1\n[[sites]]\nhostnames = [\"x\", \"y\"]\n[[sites]]\nhostnames = [\"z\"]\n";

    #[test]
    fn paths_display_like_the_docs() {
        let p = KeyPath::root()
            .key("sites")
            .index(2)
            .key("upstreams")
            .index(0);
        assert_eq!(p.to_string(), "sites[2].upstreams[0]");
        assert_eq!(p.keys(), vec!["sites", "upstreams"]);
    }

    #[test]
    fn locates_values_and_keys() {
        let loc = Locator::new(DOC);
        let p = KeyPath::root()
            .key("sites")
            .index(1)
            .key("hostnames")
            .index(0);
        assert_eq!(loc.line_col(&p, Target::Value), (5, 14));
        let k = KeyPath::root().key("sites").index(0).key("hostnames");
        assert_eq!(loc.line_col(&k, Target::Key), (3, 1));
        assert_eq!(
            loc.line_col(&KeyPath::root().key("nope"), Target::Key),
            (0, 0)
        );
    }

    #[test]
    fn finds_the_path_at_an_offset() {
        let loc = Locator::new(DOC);
        let offset = DOC.find("\"z\"").unwrap();
        assert_eq!(loc.path_at(offset).to_string(), "sites[1].hostnames[0]");
    }
}
