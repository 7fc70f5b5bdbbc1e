//! Exit codes (DESIGN §8): the one place that says what each outcome means to a calling script.

use std::process::ExitCode;

/// How proxyctl ends. Scripts and systemd's `ExecReload=` read these numbers, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the operation did what was asked.
    Ok,
    /// 1: the operation failed (reload or rollback rejected, a data plane refused or missed the
    /// new version, status degraded or controld down while the local proxyd answers, health: the
    /// local proxyd is not ready or draining, `shutdown --wait`: proxyd still running at the
    /// deadline), or a daemon refused the request (not allowed, unknown version, nothing to roll
    /// back to).
    Failed,
    /// 4: `reload --if-version` or `--if-hash` found another writer first (the serving version
    /// or the config file changed since the caller looked); nothing was published. A deploy
    /// script stops without rolling anything back: the other writer's work stands.
    Conflict,
    /// 3: the daemon is not running (its socket file is missing or nobody listens on it): for
    /// `status` neither controld nor the local proxyd answers; for `health` and `shutdown`, the
    /// local proxyd.
    NotRunning,
    /// 69 (EX_UNAVAILABLE): the daemon could not be reached, did not answer in time, or the
    /// connection broke.
    Unavailable,
}

impl Exit {
    /// The process exit status. 2 (usage) is left to clap, which exits by itself.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::NotRunning => 3,
            Exit::Conflict => 4,
            Exit::Unavailable => 69,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_design() {
        assert_eq!(Exit::Ok.code(), 0);
        assert_eq!(Exit::Failed.code(), 1);
        assert_eq!(Exit::NotRunning.code(), 3);
        assert_eq!(Exit::Conflict.code(), 4);
        assert_eq!(Exit::Unavailable.code(), 69);
    }
}
