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

/// Finds spans in the parsed document, and turns byte offsets into line:column.
///
/// Everything a lookup needs is built once, in [`Locator::new`], so that locating N diagnostics
/// costs O(text + N) rather than O(text × N):
/// - the key path → span index is the spanned document itself ([`DeTable`], one parse); a
///   lookup walks it one segment at a time (a map lookup per key, an index per array item);
/// - [`LineIndex`] turns an offset into line:column with a binary search and a scan of at most
///   [`CHAR_STRIDE`] bytes, never a scan from the start of the text.
pub struct Locator<'a> {
    doc: Option<Spanned<DeTable<'a>>>,
    lines: LineIndex<'a>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Locator<'a> {
        work::index_built();
        Locator {
            doc: DeTable::parse(text).ok(),
            lines: LineIndex::new(text),
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

    /// The 1-based line and column (in characters) of a byte offset.
    pub fn line_col_of(&self, offset: usize) -> (u32, u32) {
        self.lines.line_col(offset)
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

/// Bytes between two checkpoints of [`LineIndex`]: the most a line:column lookup scans.
pub const CHAR_STRIDE: usize = 128;

/// Where lines start and how many characters precede every [`CHAR_STRIDE`]th byte, built in one
/// pass over the text. Offsets are stored as `u32`: a config is at most a few MiB (the file cap,
/// and the gRPC message cap for a Validate request), and this halves the index of a file made of
/// newlines.
struct LineIndex<'a> {
    /// The text's UTF-8 bytes (a lookup counts characters by their lead bytes).
    bytes: &'a [u8],
    /// Byte offset of the start of each line; the first is 0.
    line_starts: Vec<u32>,
    /// `chars_at[k]`: characters (UTF-8 lead bytes) in `bytes[..k * CHAR_STRIDE]`.
    chars_at: Vec<u32>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> LineIndex<'a> {
        let bytes = text.as_bytes();
        work::scanned(bytes.len());
        let mut line_starts = vec![0];
        let mut chars_at = Vec::with_capacity(bytes.len() / CHAR_STRIDE + 1);
        let mut chars = 0u32;
        for (i, b) in bytes.iter().enumerate() {
            if i.is_multiple_of(CHAR_STRIDE) {
                chars_at.push(chars);
            }
            if is_char_start(*b) {
                chars = chars.saturating_add(1);
            }
            if *b == b'\n' {
                line_starts.push(to_u32(i + 1));
            }
        }
        // The end of a text whose length is a multiple of the stride needs its own checkpoint.
        if bytes.len().is_multiple_of(CHAR_STRIDE) {
            chars_at.push(chars);
        }
        LineIndex {
            bytes,
            line_starts,
            chars_at,
        }
    }

    /// The 1-based line and column (in characters) of `offset`, clamped to the text.
    fn line_col(&self, offset: usize) -> (u32, u32) {
        let offset = to_u32(offset.min(self.bytes.len()));
        // The number of line starts at or before `offset` is the 1-based line number (≥ 1: the
        // first start is 0).
        let line = self.line_starts.partition_point(|start| *start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .chars_before(offset)
            .saturating_sub(self.chars_before(start))
            + 1;
        (to_u32(line), column)
    }

    /// Characters in `bytes[..offset]`: the checkpoint at or below `offset`, then a scan of
    /// fewer than [`CHAR_STRIDE`] bytes.
    fn chars_before(&self, offset: u32) -> u32 {
        let offset = offset as usize;
        let k = offset / CHAR_STRIDE;
        let from = k * CHAR_STRIDE;
        let tail = self.bytes.get(from..offset).unwrap_or(&[]);
        work::scanned(tail.len());
        let counted = tail.iter().filter(|b| is_char_start(**b)).count();
        self.chars_at
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_add(to_u32(counted))
    }
}

/// Any byte of UTF-8 but a continuation byte (`10xxxxxx`) starts a character.
fn is_char_start(b: u8) -> bool {
    b & 0xc0 != 0x80
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What locating costs, counted per thread so that a test can check that it grows with the
/// text plus the number of diagnostics, not with their product (timing inside tests is never
/// a measure). Counts nothing outside tests.
pub mod work {
    #[cfg(test)]
    thread_local! {
        static COUNTS: std::cell::Cell<Counts> = const { std::cell::Cell::new(Counts { indexes: 0, scanned: 0 }) };
    }

    /// Work done on this thread since it started.
    #[cfg(test)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Counts {
        /// Locators built (each parses the document and indexes its lines once).
        pub indexes: usize,
        /// Bytes of text read to turn offsets into line:column, index building included.
        pub scanned: usize,
    }

    #[cfg(test)]
    pub fn counts() -> Counts {
        COUNTS.with(std::cell::Cell::get)
    }

    #[cfg(test)]
    pub(super) fn index_built() {
        COUNTS.with(|c| {
            let mut n = c.get();
            n.indexes += 1;
            c.set(n);
        });
    }

    #[cfg(test)]
    pub(super) fn scanned(bytes: usize) {
        COUNTS.with(|c| {
            let mut n = c.get();
            n.scanned += bytes;
            c.set(n);
        });
    }

    #[cfg(not(test))]
    pub(super) fn index_built() {}

    #[cfg(not(test))]
    pub(super) fn scanned(_bytes: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Line and column the slow, obvious way: rescan the text before the offset.
    fn rescanned(text: &str, offset: usize) -> (u32, u32) {
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (to_u32(line), to_u32(column))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The index agrees with a rescan at every character of texts that mix one- to
        /// four-byte characters and newlines across several checkpoints.
        #[test]
        fn the_line_index_agrees_with_a_rescan(
            text in prop_oneof!["[a\n\r\té€😀]{0,700}", "(?s).{0,300}"]
        ) {
            let index = LineIndex::new(&text);
            for offset in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
                prop_assert_eq!(index.line_col(offset), rescanned(&text, offset), "offset {}", offset);
            }
            let end = rescanned(&text, text.len());
            prop_assert_eq!(index.line_col(text.len() + 10), end, "past the end: clamped");
        }
    }

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
