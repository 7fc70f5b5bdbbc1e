use std::path::Path;
use std::time::Duration;

use super::*;

#[test]
fn rollback_takes_an_optional_positive_version() {
    let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
    assert!(matches!(
        parse(&["proxyctl", "rollback", "5"]),
        Ok(Command::Rollback { version: Some(5) })
    ));
    assert!(matches!(
        parse(&["proxyctl", "rollback"]),
        Ok(Command::Rollback { version: None })
    ));
    assert!(parse(&["proxyctl", "rollback", "0"]).is_err());
    assert!(parse(&["proxyctl", "rollback", "latest"]).is_err());
    assert!(matches!(
        parse(&["proxyctl", "history", "--json"]),
        Ok(Command::History)
    ));
}

#[test]
fn global_flags_work_after_the_subcommand() {
    let cli = Cli::try_parse_from([
        "proxyctl",
        "reload",
        "--json",
        "--socket",
        "/tmp/s",
        "--timeout",
        "2s",
        "--dry-run",
    ])
    .unwrap();
    assert!(cli.json);
    assert_eq!(cli.socket, Path::new("/tmp/s"));
    assert_eq!(cli.timeout, Duration::from_secs(2));
    assert!(matches!(
        cli.command,
        Command::Reload {
            dry_run: true,
            force: false,
            if_version: None,
            if_hash: None,
            ..
        }
    ));
}

#[test]
fn reload_takes_if_version() {
    let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
    assert!(matches!(
        parse(&["proxyctl", "reload", "--if-version", "12"]),
        Ok(Command::Reload {
            if_version: Some(12),
            dry_run: false,
            force: false,
            if_hash: None,
            ..
        })
    ));
    assert!(matches!(
        parse(&["proxyctl", "reload", "--if-version", "12", "--if-hash", "ab12"]),
        Ok(Command::Reload {
            if_version: Some(12),
            if_hash: Some(ref hash),
            ..
        }) if hash == "ab12"
    ));
    assert!(parse(&["proxyctl", "reload", "--if-version"]).is_err());
    assert!(parse(&["proxyctl", "reload", "--if-version", "twelve"]).is_err());
}

#[test]
fn check_takes_a_file_and_config_show_is_a_subcommand() {
    let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
    let Ok(Command::Check { file, remote }) = parse(&["proxyctl", "check", "new.toml"]) else {
        panic!("check FILE");
    };
    assert_eq!((file.as_path(), remote), (Path::new("new.toml"), false));
    assert!(matches!(
        parse(&["proxyctl", "check", "--remote", "new.toml", "--json"]),
        Ok(Command::Check { remote: true, .. })
    ));
    assert!(parse(&["proxyctl", "check"]).is_err(), "FILE is required");
    assert!(matches!(
        parse(&["proxyctl", "config", "show", "--json"]),
        Ok(Command::Config {
            command: ConfigCommand::Show
        })
    ));
    assert!(
        parse(&["proxyctl", "config"]).is_err(),
        "config needs a subcommand"
    );
}

#[test]
fn the_data_plane_socket_has_a_default_and_a_flag() {
    let cli = Cli::try_parse_from(["proxyctl", "health"]).unwrap();
    if std::env::var_os("PROXYCTL_DATA_PLANE_SOCKET").is_none() {
        assert_eq!(cli.data_plane_socket, Path::new("/run/proxyd/admin.sock"));
    }
    let cli = Cli::try_parse_from([
        "proxyctl",
        "shutdown",
        "--wait",
        "--data-plane-socket",
        "/tmp/dp.sock",
        "--timeout",
        "2m",
    ])
    .unwrap();
    assert_eq!(cli.data_plane_socket, Path::new("/tmp/dp.sock"));
    assert_eq!(cli.timeout, Duration::from_secs(120));
    assert!(matches!(cli.command, Command::Shutdown { wait: true }));
    assert!(matches!(
        Cli::try_parse_from(["proxyctl", "shutdown"]).map(|cli| cli.command),
        Ok(Command::Shutdown { wait: false })
    ));
}

#[test]
fn timeout_must_be_a_positive_duration() {
    assert_eq!(parse_timeout("1m 30s"), Ok(Duration::from_secs(90)));
    assert!(parse_timeout("0s").is_err());
    assert!(parse_timeout("soon").is_err());
    assert!(Cli::try_parse_from(["proxyctl", "--timeout", "x", "status"]).is_err());
}

#[test]
fn the_command_line_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}
