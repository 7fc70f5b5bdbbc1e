//! `proxyctl upgrade [--binary PATH]`: replaces this host's proxyd with a new process (a new
//! binary, or the same one started afresh) without refusing a connection.
//!
//! proxyctl starts the successor with the running proxyd's own command line plus `--takeover`;
//! the successor takes the listening sockets and the snapshot over the admin socket, serves them,
//! and only then does the old process stop accepting and drain. proxyctl waits until the admin
//! socket answers from the new pid, ready; if the successor exits first, or is not ready within
//! `--timeout`, it is stopped and the old process serves on, untouched.
//!
//! A proxyd run as a master (`proxyd --master`, as the systemd unit runs it) does this itself:
//! proxyctl asks it on `master.sock` beside the admin socket, and the master, the process
//! systemd supervises, starts the new worker and keeps its own PID. A proxyd that runs under
//! systemd without a master is not upgraded: its successor would escape systemd.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::DataPlaneStatusReply;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::DataPlane;

/// How often the admin socket is asked who serves.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What an upgrade did.
#[derive(Debug, Serialize)]
pub struct Upgraded {
    pub node_id: String,
    pub old_pid: u32,
    pub old_build: String,
    pub new_pid: u32,
    pub new_build: String,
    /// The config version the new process serves.
    pub version: u64,
    pub binary: String,
}

/// Why an upgrade did not happen (the old process serves on in every case).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("reading the running proxyd's command line and environment (pid {pid}): {source}")]
    CommandLine { pid: u32, source: std::io::Error },
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("the new proxyd (pid {pid}) exited with {status} before serving; pid {old} serves on")]
    Exited {
        pid: u32,
        status: std::process::ExitStatus,
        old: u32,
    },
    #[error(
        "the new proxyd (pid {pid}) did not serve within {timeout:?}; stopped it; pid {old} serves on"
    )]
    Timeout {
        pid: u32,
        timeout: Duration,
        old: u32,
    },
    #[error(
        "proxyd (pid {pid}) runs under systemd without --master (a unit from before proxyd \
         --master): a new process would not be systemd's to supervise. Restart it once \
         (`systemctl restart proxyd`; with proxyd.socket no connection is refused), then upgrade"
    )]
    UnderSystemd { pid: u32 },
    #[error("the proxyd master ({socket}) refused the upgrade: {reason}")]
    Master { socket: String, reason: String },
    #[error("the proxyd master ({socket}) did not answer: {reason}")]
    MasterSilent { socket: String, reason: String },
}

/// How much longer than the upgrade's own deadline proxyctl waits for the master's answer.
const MASTER_GRACE: Duration = Duration::from_secs(5);

/// Upgrades through the master beside `socket`, if one runs: `Ok(None)` when none answers.
pub async fn through_master(
    socket: &Path,
    timeout: Duration,
    binary: Option<&Path>,
    old: &DataPlaneStatusReply,
) -> Result<Option<Upgraded>, UpgradeError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let master = socket.with_file_name("master.sock");
    let shown = master.display().to_string();
    let silent = |reason: String| UpgradeError::MasterSilent {
        socket: shown.clone(),
        reason,
    };
    // No master runs here only when there is no socket: any other failure (a master too busy
    // to accept, a stale socket) must not lead to an upgrade behind its back.
    let mut stream = match tokio::net::UnixStream::connect(&master).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(silent(e.to_string())),
    };
    // The master's working directory is not ours.
    let binary = binary
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| silent(e.to_string()))?;
    let mut request = format!("upgrade {}", timeout.as_millis());
    if let Some(binary) = &binary {
        if binary.to_string_lossy().contains('\n') {
            return Err(silent("the binary's path has a newline".into()));
        }
        request.push(' ');
        request.push_str(&binary.to_string_lossy());
    }
    request.push('\n');
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| silent(e.to_string()))?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        timeout.saturating_add(MASTER_GRACE),
        BufReader::new(stream).read_line(&mut line),
    )
    .await;
    match read {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => return Err(silent("it closed the connection".into())),
        Ok(Err(e)) => return Err(silent(e.to_string())),
        Err(_) => {
            return Err(silent(format!(
                "no answer within {:?}",
                timeout.saturating_add(MASTER_GRACE)
            )));
        }
    }
    let line = line.trim_end();
    if let Some(reason) = line.strip_prefix("error ") {
        return Err(UpgradeError::Master {
            socket: shown,
            reason: reason.to_owned(),
        });
    }
    let mut pids = line
        .strip_prefix("ok ")
        .unwrap_or_default()
        .split(' ')
        .filter_map(|p| p.parse::<u32>().ok());
    let (Some(_), Some(new_pid)) = (pids.next(), pids.next()) else {
        return Err(silent(format!("unexpected answer {line:?}")));
    };
    // The new worker serves; its admin socket says what.
    let now = DataPlane::connect(socket, POLL_INTERVAL * 20).await.ok();
    let now = match now {
        Some(mut dp) => dp.status().await.ok(),
        None => None,
    };
    Ok(Some(Upgraded {
        node_id: now
            .as_ref()
            .map_or_else(|| old.node_id.clone(), |n| n.node_id.clone()),
        old_pid: old.pid,
        old_build: old.build_version.clone(),
        new_pid,
        new_build: now
            .as_ref()
            .map(|n| n.build_version.clone())
            .unwrap_or_default(),
        version: now
            .as_ref()
            .map_or(old.applied_version, |n| n.applied_version),
        binary: binary.map_or_else(
            || {
                command_line(new_pid)
                    .map(|(exe, _)| exe.display().to_string())
                    .unwrap_or_default()
            },
            |b| b.display().to_string(),
        ),
    }))
}

/// sd_listen_fds(3)'s variables.
const SOCKET_ACTIVATION: [&[u8]; 4] = [
    b"LISTEN_FDS",
    b"LISTEN_PID",
    b"LISTEN_FDNAMES",
    b"LISTEN_FDS_FIRST_FD",
];

/// The running proxyd's environment, from /proc: the successor runs with the same one (under
/// systemd that carries `NOTIFY_SOCKET`, so the successor can tell systemd it took over), less
/// socket activation's variables: the successor takes the sockets by hand-over.
fn environment(pid: u32) -> std::io::Result<Vec<(OsString, OsString)>> {
    use std::os::unix::ffi::OsStrExt;
    let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=')?;
            let name = &entry[..eq];
            if SOCKET_ACTIVATION.contains(&name) {
                return None;
            }
            Some((
                std::ffi::OsStr::from_bytes(name).to_owned(),
                std::ffi::OsStr::from_bytes(&entry[eq + 1..]).to_owned(),
            ))
        })
        .collect())
}

/// The running proxyd's binary and arguments, from /proc: the arguments it was started with,
/// without `--takeover`, and its binary (the file now at its path, when it was replaced).
pub fn command_line(pid: u32) -> std::io::Result<(PathBuf, Vec<OsString>)> {
    use std::os::unix::ffi::OsStrExt;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let mut parts = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| OsString::from(std::ffi::OsStr::from_bytes(p)));
    let argv0 = parts.next().unwrap_or_default();
    let args = parts.filter(|a| a != "--takeover").collect();
    let exe =
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_else(|_| PathBuf::from(&argv0));
    // A binary replaced on disk (the usual upgrade) shows as "<path> (deleted)".
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    };
    Ok((exe, args))
}

/// Starts the successor and waits until it serves on `socket`.
pub async fn upgrade(
    socket: &Path,
    timeout: Duration,
    binary: Option<&Path>,
    old: &DataPlaneStatusReply,
) -> Result<Upgraded, UpgradeError> {
    let (exe, mut args) = command_line(old.pid).map_err(|source| UpgradeError::CommandLine {
        pid: old.pid,
        source,
    })?;
    let exe = binary.map_or(exe, Path::to_path_buf);
    let environment = environment(old.pid).map_err(|source| UpgradeError::CommandLine {
        pid: old.pid,
        source,
    })?;
    // The successor would be nobody's child that systemd knows: it loses track of the unit
    // (issue 18). Under systemd, only a master upgrades.
    // `INVOCATION_ID`: any systemd service, `Type=simple` ones (no NOTIFY_SOCKET) included.
    if environment
        .iter()
        .any(|(name, _)| name == "NOTIFY_SOCKET" || name == "INVOCATION_ID")
    {
        return Err(UpgradeError::UnderSystemd { pid: old.pid });
    }
    args.push("--takeover".into());
    let mut command = std::process::Command::new(&exe);
    command.env_clear().envs(environment);
    // Not proxyctl's output: a script reading it would wait for the new proxyd to exit. The new
    // proxyd logs where the old one does (its stderr is handed over with the sockets).
    command
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own process group: a Ctrl-C meant for proxyctl must not reach the new proxyd.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|source| UpgradeError::Spawn {
        binary: exe.display().to_string(),
        source,
    })?;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::Exited {
                pid,
                status,
                old: old.pid,
            });
        }
        if let Ok(Ok(now)) = tokio::time::timeout(POLL_INTERVAL * 4, async {
            DataPlane::connect(socket, POLL_INTERVAL * 4)
                .await?
                .status()
                .await
        })
        .await
            && now.pid == pid
            && now.ready
        {
            return Ok(Upgraded {
                node_id: now.node_id,
                old_pid: old.pid,
                old_build: old.build_version.clone(),
                new_pid: pid,
                new_build: now.build_version,
                version: now.applied_version,
                binary: exe.display().to_string(),
            });
        }
        if Instant::now() >= deadline {
            // Not handed the sockets' "serving" yet, so the old process never stopped.
            let _ = child.kill();
            let _ = child.wait();
            return Err(UpgradeError::Timeout {
                pid,
                timeout,
                old: old.pid,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `upgraded: proxyd edge-1 pid 100 (0.1.0) -> pid 200 (0.1.1), serving version 12`.
pub fn line(u: &Upgraded) -> String {
    format!(
        "upgraded: proxyd {} pid {} ({}) -> pid {} ({}), serving version {}; pid {} drains",
        crate::output::one_line(&u.node_id),
        u.old_pid,
        u.old_build,
        u.new_pid,
        u.new_build,
        u.version,
        u.old_pid
    )
}
