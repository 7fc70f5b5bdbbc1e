//! A real systemd to test `deploy/` against: a container booted with systemd as PID 1
//! (`tests/systemd/box.sh`), with the build's binaries and the repository mounted read-only, and
//! the units installed by `deploy/install.sh` exactly as an operator runs it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::{binary, output_text};

/// The repository, mounted at `/opt/src` in the box.
pub const SOURCE: &str = "/opt/src";
/// The build's binaries, mounted at `/opt/bin` in the box.
pub const BINARIES: &str = "/opt/bin";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn script() -> PathBuf {
    repository().join("tests/systemd/box.sh")
}

/// A booted container; halted and forgotten when dropped.
pub struct SystemdBox {
    name: String,
}

impl SystemdBox {
    /// Boots box `name` and installs the units and binaries with `deploy/install.sh
    /// --binaries`. `None`, with the reason printed, where no real systemd can be had (not
    /// root): the suite then says it was skipped.
    pub async fn up(name: &str) -> Option<SystemdBox> {
        if !is_root() {
            eprintln!("skipped: the real-systemd suite needs root (systemd-nspawn)");
            return None;
        }
        let bin = binary("proxyd").parent().expect("a directory").to_owned();
        let out = tokio::process::Command::new("bash")
            .arg(script())
            .args(["up", name])
            .arg(format!("{}:{SOURCE}", repository().display()))
            .arg(format!("{}:{BINARIES}", bin.display()))
            .output()
            .await
            .expect("bash");
        assert!(
            out.status.success(),
            "booting box {name}: {}",
            output_text(&out)
        );
        let b = SystemdBox {
            name: name.to_owned(),
        };
        b.ok(&format!(
            "bash {SOURCE}/deploy/install.sh --binaries {BINARIES}"
        ))
        .await;
        Some(b)
    }

    /// Runs `script` with bash inside the box.
    pub async fn sh(&self, script: &str) -> Output {
        tokio::process::Command::new("bash")
            .arg(self::script())
            .args(["run", &self.name, "bash", "-c", script])
            .output()
            .await
            .expect("bash")
    }

    /// Runs `script` and returns its stdout; it must succeed.
    pub async fn ok(&self, script: &str) -> String {
        let out = self.sh(script).await;
        assert!(
            out.status.success(),
            "in box {}: {script}\n{}\n--- journal ---\n{}",
            self.name,
            output_text(&out),
            self.journal().await
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `script`, timed.
    pub async fn timed(&self, script: &str) -> (Output, Duration) {
        let start = Instant::now();
        let out = self.sh(script).await;
        (out, start.elapsed())
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    pub async fn property(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value {unit}"))
            .await
    }

    /// The last lines of the journal of both units.
    pub async fn journal(&self) -> String {
        let out = self
            .sh("journalctl --no-pager -n 60 -u controld -u proxyd -u proxyd.socket")
            .await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `check` (a shell test) every 100 ms until it succeeds, or fails the test with
    /// `what` after `within`.
    pub async fn wait_for(&self, what: &str, check: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.sh(check).await.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "box {}: timed out waiting for {what} ({check})\n{}",
                self.name,
                self.journal().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .args(["down", &self.name])
            .output();
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
