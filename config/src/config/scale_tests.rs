//! Files with very many problems: locating them costs work linear in the text plus the number
//! of problems (counted, never timed), and the report stops at [`MAX_DIAGNOSTICS`].

use super::locate::{CHAR_STRIDE, work};
use super::*;

const BASE: &str = "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\n\
                    [[sites]]\nhostnames = [\"example.com\"]\nupstreams = [\"http://127.0.0.1:9000\"]\n";

/// `n` unknown keys: half at the top of the file (the root table), half in `sites[0]`.
fn full_of_unknown_keys(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n / 2 {
        text.push_str(&format!("unknown_{i} = {i}\n"));
    }
    text.push_str(BASE);
    for i in n / 2..n {
        text.push_str(&format!("typo_{i} = \"é{i}\"\n"));
    }
    text
}

/// Parses `text` and returns its diagnostics with the locating work it took.
fn diagnostics_and_work(text: &str) -> (Vec<Diagnostic>, work::Counts) {
    let before = work::counts();
    let diagnostics = match parse(text, Path::new("proxy.toml")) {
        Err(LoadError::Invalid(d)) => d,
        other => panic!("expected diagnostics, got {other:?}"),
    };
    let after = work::counts();
    let spent = work::Counts {
        indexes: after.indexes - before.indexes,
        scanned: after.scanned - before.scanned,
    };
    (diagnostics, spent)
}

#[test]
fn twenty_thousand_unknown_keys_are_located_in_linear_work() {
    let n = 20_000;
    let text = full_of_unknown_keys(n);
    let (_, spent) = diagnostics_and_work(&text);

    // One index per file, not one per diagnostic.
    assert_eq!(spent.indexes, 1);
    // Building the index reads the text once; each of the n diagnostics then reads at most two
    // stretches of CHAR_STRIDE bytes. Rescanning from the start of the text for each one (the
    // old way) would read about n × text / 2 bytes: some 20 000 times more.
    let per_diagnostic = 2 * CHAR_STRIDE;
    assert!(
        spent.scanned <= text.len() + n * per_diagnostic,
        "scanned {} bytes of a {}-byte text for {n} diagnostics",
        spent.scanned,
        text.len()
    );
}

#[test]
fn locating_work_grows_with_the_file_not_with_its_square() {
    let (_, small) = diagnostics_and_work(&full_of_unknown_keys(2_000));
    let (_, large) = diagnostics_and_work(&full_of_unknown_keys(20_000));
    // Ten times the keys (and about ten times the text): at most a little over ten times the
    // work. Quadratic work would be a hundred times.
    assert!(
        large.scanned <= 12 * small.scanned,
        "2 000 keys: {} bytes scanned; 20 000 keys: {}",
        small.scanned,
        large.scanned
    );
}

#[test]
fn the_report_is_capped_with_a_count_of_what_was_left_out() {
    let (d, _) = diagnostics_and_work(&full_of_unknown_keys(20_000));
    assert_eq!(d.len(), MAX_DIAGNOSTICS + 1);
    // The first ones in file order, each located.
    let shown = &d[..MAX_DIAGNOSTICS];
    assert!(shown.iter().all(|d| d.line > 0));
    assert!(shown.windows(2).all(|w| w[0].line < w[1].line));
    assert_eq!(
        shown[0].to_string(),
        "proxy.toml:1:1: unknown_0: unknown key `unknown_0`"
    );
    assert_eq!(
        d[MAX_DIAGNOSTICS].to_string(),
        "proxy.toml: 19900 more problems not shown (at most 100 are reported)"
    );
}

#[test]
fn up_to_the_cap_everything_is_reported() {
    let (d, _) = diagnostics_and_work(&full_of_unknown_keys(MAX_DIAGNOSTICS));
    assert_eq!(d.len(), MAX_DIAGNOSTICS);
    assert!(
        d.iter()
            .all(|d| d.line > 0 && !d.message.contains("not shown"))
    );

    let (d, _) = diagnostics_and_work(&full_of_unknown_keys(MAX_DIAGNOSTICS + 1));
    assert_eq!(d.len(), MAX_DIAGNOSTICS + 1);
    assert_eq!(
        d[MAX_DIAGNOSTICS].message,
        "1 more problem not shown (at most 100 are reported)"
    );
}

#[test]
fn columns_count_characters_after_multibyte_text() {
    // 300 three-byte characters before the second key cross several index checkpoints.
    let text = format!(
        "{BASE}upstream_limits = {{ note = \"{}\", max_conections = 1 }}\n",
        "€".repeat(300)
    );
    let (d, _) = diagnostics_and_work(&text);
    let rendered: Vec<String> = d.iter().map(ToString::to_string).collect();
    let second = "upstream_limits = { note = \"".len() + 300 + "\", ".len() + 1;
    assert_eq!(
        rendered,
        [
            "proxy.toml:8:21: sites[0].upstream_limits.note: unknown key `note`".to_owned(),
            format!(
                "proxy.toml:8:{second}: sites[0].upstream_limits.max_conections: unknown key \
                 `max_conections`; did you mean `max_connections`?"
            ),
        ]
    );
}
