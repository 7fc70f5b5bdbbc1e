//! Property tests of the parser and validator: whatever the text, `parse` never panics and
//! answers with a config or with located diagnostics; an accepted config, written back as TOML,
//! parses to the same model; a planted mistake is reported at its key.
//!
//! 256 cases per property (proptest's default, written out so that it is a decision): about three
//! seconds for all of them in a debug build on two cores. `PROPTEST_CASES=10000 cargo test -p
//! controld proptests` searches harder. A failure's seed lands in
//! `controld/proptest-regressions/`, which is checked in: those cases run first, every time.

mod faults;
mod render;

use super::strategies;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;

const CASES: u32 = 256;

fn file() -> &'static Path {
    Path::new("proxy.toml")
}

/// The outcome of parsing `text`: an accepted config round-trips; refused, every diagnostic is
/// well-formed and located when it has a place in the file.
fn check_outcome(text: &str) -> Result<Option<Config>, TestCaseError> {
    match parse(text, file()) {
        Ok(config) => {
            round_trips(&config)?;
            Ok(Some(config))
        }
        Err(LoadError::Invalid(diagnostics)) => {
            check_located(text, &diagnostics)?;
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "parse may only refuse with diagnostics, not {other}"
        ))),
    }
}

/// Writes `config` back as TOML and parses it again: the same model.
fn round_trips(config: &Config) -> Result<(), TestCaseError> {
    let written = render::render(config);
    match parse(&written, file()) {
        Ok(again) => {
            prop_assert_eq!(&again, config, "written back as:\n{}", written);
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!(
            "an accepted config, written back, was refused:\n{e}\n--- written:\n{written}"
        ))),
    }
}

/// The lines of `text` as `parse` counts them (only '\n' ends a line).
fn line_lengths(text: &str) -> Vec<usize> {
    text.split('\n').map(|l| l.chars().count()).collect()
}

fn check_located(text: &str, diagnostics: &[Diagnostic]) -> Result<(), TestCaseError> {
    prop_assert!(!diagnostics.is_empty(), "refused without a diagnostic");
    prop_assert!(diagnostics.len() <= MAX_DIAGNOSTICS + 1);
    let lines = line_lengths(text);
    // Keys at the top of the file, read independently of the parser under test.
    let document: Option<toml::Table> = text.parse().ok();
    for d in diagnostics {
        prop_assert_eq!(&d.file, file());
        prop_assert!(!d.message.is_empty(), "{d}");
        prop_assert_eq!(d.line == 0, d.column == 0, "{}", d);
        if d.line > 0 {
            let length = lines.get(d.line as usize - 1).copied();
            prop_assert!(length.is_some(), "{d}: past the last line");
            prop_assert!(
                d.column as usize <= length.unwrap_or(0) + 1,
                "{d}: past the end of its line"
            );
        }
        // A key path whose top key is written in the file has a place there.
        let top = d.key_path.split(['.', '[']).next().unwrap_or("");
        let written = document.as_ref().is_some_and(|doc| doc.contains_key(top));
        if written {
            prop_assert!(d.line > 0, "{d}: not located, but `{top}` is in the file");
        }
        // Syntax and type errors are reported by span: the parser always has one.
        if d.key_path.is_empty() && !d.message.ends_with("are reported)") {
            prop_assert!(d.line > 0, "{d}: a syntax error without a place");
        }
    }
    Ok(())
}

/// Pieces of TOML and of this config's keys, to be put together in any order.
fn toml_soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "[",
        "]",
        "[[",
        "]]",
        "{",
        "}",
        "=",
        ",",
        ".",
        "\"",
        "'",
        "\"\"\"",
        "\n",
        " ",
        "#",
        "\\",
        "\\u00e9",
        "sites",
        "hostnames",
        "upstreams",
        "routes",
        "proxy",
        "listeners",
        "rate_limit",
        "burst",
        "tls",
        "acme",
        "path_prefix",
        "respond",
        "redirect",
        "status",
        "\"a.example\"",
        "\"http://127.0.0.1:1\"",
        "\"acme\"",
        "\"10m\"",
        "\"30s\"",
        "-1",
        "0",
        "4294967296",
        "1e400",
        "nan",
        "true",
        "1979-05-27T07:32:00Z",
        "é",
        "\u{0}",
        "\r",
        "\t",
        "[[proxy.listeners]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n",
        "[[sites]]\n",
        "hostnames = [\"x.example\"]\n",
        "upstreams = [\"http://[::1]:80\"]\n",
    ]);
    prop::collection::vec(token, 0..80).prop_map(|tokens| tokens.concat())
}

/// A valid file with some of its bytes cut, repeated or replaced.
fn mangled_config() -> impl Strategy<Value = String> {
    let insert: &'static str = "[\\[\\]{}=\".,\n a-z0-9]{0,6}";
    let edit = (
        any::<prop::sample::Index>(),
        0usize..40,
        0u8..3,
        insert.prop_map(String::from),
    );
    (
        strategies::valid_config(),
        prop::collection::vec(edit, 1..4),
    )
        .prop_map(|(config, edits)| {
            let mut text = toml::to_string(&config).expect("TOML");
            for (at, len, kind, insert) in edits {
                let start = at.index(text.len() + 1);
                let end = (start + len).min(text.len());
                if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
                    continue;
                }
                match kind {
                    0 => text.replace_range(start..end, ""),
                    1 => {
                        let piece = String::from(&text[start..end]);
                        text.insert_str(start, &piece);
                    }
                    _ => text.replace_range(start..end, &insert),
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_bytes_are_refused_or_accepted_without_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048)
    ) {
        check_outcome(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn any_text_is_refused_or_accepted_without_a_panic(text in "(?s).{0,400}") {
        check_outcome(&text)?;
    }

    #[test]
    fn toml_soup_is_refused_or_accepted_without_a_panic(text in toml_soup()) {
        check_outcome(&text)?;
    }

    #[test]
    fn mangled_configs_are_refused_or_accepted_without_a_panic(text in mangled_config()) {
        check_outcome(&text)?;
    }

    #[test]
    fn plausible_configs_are_accepted_and_round_trip(config in strategies::valid_config()) {
        let text = toml::to_string(&config).expect("TOML");
        if check_outcome(&text)?.is_none() {
            let refused = parse(&text, file()).err().map(|e| e.to_string());
            return Err(TestCaseError::fail(format!(
                "a valid config was refused:\n{}\n--- text:\n{text}",
                refused.unwrap_or_default()
            )));
        }
    }

    #[test]
    fn a_planted_mistake_is_reported_at_its_key(
        mut config in strategies::valid_config(),
        fault in faults::fault()
    ) {
        let key_path = faults::with_fault(&mut config, fault);
        let text = toml::to_string(&config).expect("TOML");
        prop_assert!(check_outcome(&text)?.is_none(), "{:?} was accepted:\n{}", fault, text);
        let Err(LoadError::Invalid(diagnostics)) = parse(&text, file()) else {
            unreachable!("refused above");
        };
        let hit = diagnostics.iter().find(|d| d.key_path == key_path);
        prop_assert!(
            hit.is_some_and(|d| d.line > 0),
            "{:?}: no located diagnostic at {}: {:#?}\n--- text:\n{}",
            fault, key_path, diagnostics, text
        );
    }
}

/// Certificate files (and a wildcard they cover): the one site form the generators leave out.
#[test]
fn certificate_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = super::tls_tests::cert_pair(
        dir.path(),
        "s",
        &["static.example.com", "*.static.example.com"],
        std::time::SystemTime::now() + std::time::Duration::from_secs(90 * 86_400),
    );
    let text = format!(
        "[[sites]]\nhostnames = [\"static.example.com\", \"*.Static.example.com\"]\n\
         upstreams = [\"http://127.0.0.1:8082\"]\n\
         tls = {{ cert_file = {:?}, key_file = {:?} }}\n\
         [[proxy.listeners]]\nname = \"https\"\naddress = \"0.0.0.0:443\"\ntls = true\n",
        cert.display().to_string(),
        key.display().to_string(),
    );
    let config = parse(&text, file()).unwrap();
    round_trips(&config).unwrap();
}
