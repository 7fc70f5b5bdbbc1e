use super::*;
use crate::fixtures;

#[test]
fn show_prints_a_header_then_the_text() {
    assert_eq!(
        render_show(&fixtures::config()),
        "# version 4 (sha256 ab12cd34ef56) from /etc/proxyd/proxy.toml\n\
         [[sites]]\n\
         hostnames = [\"a.example\"]\n\
         upstreams = [\"http://10.0.0.5:8080\"]\n"
    );
}

#[test]
fn show_ends_with_a_newline_even_when_the_text_does_not() {
    let mut reply = fixtures::config();
    reply.config_text = "log_level = \"info\"".into();
    assert!(render_show(&reply).ends_with("\nlog_level = \"info\"\n"));
}

#[test]
fn show_says_when_the_text_is_gone() {
    let mut reply = fixtures::config();
    reply.config_text = String::new();
    assert_eq!(
        render_show(&reply),
        "# version 4 (sha256 ab12cd34ef56) from /etc/proxyd/proxy.toml\n\
         # the config text of version 4 is no longer in the history\n"
    );
}

#[test]
fn short_or_missing_hashes_and_odd_paths_keep_the_header_one_line() {
    let mut reply = fixtures::config();
    reply.content_hash = "ab12".into();
    reply.config_path = "/etc/a\nb.toml".into();
    reply.config_text = String::new();
    let text = render_show(&reply);
    assert!(
        text.starts_with("# version 4 (sha256 ab12) from /etc/a; b.toml\n"),
        "{text}"
    );
    reply.content_hash = String::new();
    assert!(render_show(&reply).starts_with("# version 4 (sha256 unknown) from "));
}
