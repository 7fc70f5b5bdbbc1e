//! What deploy/ ships: the example configs are valid and the systemd units verify.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};

use proxy_tests::{binary, output_text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_shipped_configs_pass_controld_check() {
    for config in ["examples/quickstart.toml", "deploy/proxy.toml"] {
        let out = tokio::process::Command::new(binary("controld"))
            .args(["check", "--config"])
            .arg(repo().join(config))
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{config}: {}",
            output_text(&out)
        );
    }
}

#[tokio::test]
async fn the_systemd_units_verify() {
    let Ok(verify) = which("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed on this machine");
        return;
    };
    // The units name /usr/local/bin; point them at the binaries built for this test run.
    let dir = tempfile::tempdir().unwrap();
    let bin = binary("controld").parent().unwrap().to_owned();
    let mut units = Vec::new();
    for unit in ["controld.service", "proxyd.service", "proxyd.socket"] {
        let text = std::fs::read_to_string(repo().join("deploy").join(unit)).unwrap();
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin", bin.to_str().unwrap())).unwrap();
        units.push(path);
    }
    let out = tokio::process::Command::new(verify)
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        out.stderr.is_empty(),
        "systemd-analyze complained: {}",
        output_text(&out)
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
