//! Who may do what on the control socket, from the caller's peer credentials (SO_PEERCRED), and
//! the audit log of every changing call.
//!
//! The socket's file mode decides who can connect at all (0660: controld's user and group). On
//! top of that, changing calls (a reload that publishes, rollback and shutdown) are allowed only
//! to root, controld's own user, and the configured `control.allowed_uids` /
//! `control.allowed_gids`; subscriptions (they carry private keys) to those and to the users of
//! `control.data_plane_users`, which may make no other call: an internet-facing proxyd that
//! is taken over can read its own snapshots and nothing more. Read-only calls (status, dry
//! runs) are open to whoever else can connect.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

use crate::config::ControlConfig;

/// The peer of a call, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Caller {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        Caller {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

/// The allow-list for changing calls and subscriptions.
#[derive(Debug, Clone)]
pub struct Access {
    own_uid: Option<u32>,
    uids: Vec<u32>,
    gids: Vec<u32>,
    /// `control.data_plane_users`, resolved: Subscribe and nothing else.
    data_planes: Vec<u32>,
    denials: Arc<Denials>,
}

/// A local user hammering a changing call must not flood the audit log: the first denial of a
/// (uid, call) is logged at once, later ones at most once per [`DENIAL_LOG_INTERVAL`] with how
/// many were not logged in between; all are counted.
#[derive(Debug, Default)]
struct Denials {
    total: AtomicU64,
    /// (uid, call) → when last logged, and denials since.
    recent: Mutex<HashMap<DenialKey, (Instant, u64)>>,
}

/// A caller's uid and the call it was refused.
type DenialKey = (Option<u32>, String);

const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Callers tracked at once; past it the table starts over (each then logs once more).
const MAX_TRACKED_DENIALS: usize = 1024;

impl Denials {
    /// Counts a denial; `Some(suppressed)` when it should be logged now.
    fn record(&self, uid: Option<u32>, call: &str) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= MAX_TRACKED_DENIALS {
            recent.clear();
        }
        let now = Instant::now();
        match recent.get_mut(&(uid, call.to_owned())) {
            Some((logged, since)) if now.duration_since(*logged) < DENIAL_LOG_INTERVAL => {
                *since += 1;
                None
            }
            Some((logged, since)) => {
                let suppressed = *since;
                (*logged, *since) = (now, 0);
                Some(suppressed)
            }
            None => {
                recent.insert((uid, call.to_owned()), (now, 0));
                Some(0)
            }
        }
    }
}

impl Access {
    pub fn new(control: &ControlConfig) -> Access {
        // The owner of /proc/self is this process's effective uid: no unsafe geteuid() needed.
        let own_uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let data_planes = control
            .data_plane_users
            .iter()
            .filter_map(|user| {
                let uid = resolve_user(&passwd, user);
                if uid.is_none() {
                    tracing::info!(
                        user,
                        "control.data_plane_users: no such user in /etc/passwd; ignored"
                    );
                }
                uid
            })
            // Never narrows root's or controld's own rights.
            .filter(|uid| *uid != 0 && Some(*uid) != own_uid)
            .collect();
        Access {
            own_uid,
            uids: control.allowed_uids.clone(),
            gids: control.allowed_gids.clone(),
            data_planes,
            denials: Arc::default(),
        }
    }

    /// Lets a subscription through (the allow-list and the data planes), or refuses it.
    pub fn authorize_subscribe<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = Caller::of(request);
        if caller
            .uid
            .is_some_and(|uid| self.data_planes.contains(&uid))
        {
            return Ok(caller);
        }
        self.authorize(request, "Subscribe")
    }

    /// Lets a read-only `call` through for anyone who can connect but a data plane.
    pub fn authorize_read<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        let caller = Caller::of(request);
        match caller.uid {
            Some(uid) if self.data_planes.contains(&uid) => {
                if let Some(suppressed) = self.denials.record(caller.uid, call) {
                    tracing::info!(target: "audit", call, uid = caller.uid, gid = caller.gid,
                        pid = caller.pid, outcome = "denied", suppressed,
                        denied_total = self.denied_total());
                }
                Err(Status::permission_denied(format!(
                    "{call} is not allowed for uid {uid}: it is a data plane's \
                     (control.data_plane_users), which may only subscribe"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Changing calls refused since start.
    pub fn denied_total(&self) -> u64 {
        self.denials.total.load(Ordering::Relaxed)
    }

    fn allows(&self, caller: &Caller) -> bool {
        match (caller.uid, caller.gid) {
            // A data plane may subscribe, through its own check, and nothing else, whatever
            // the allow-lists say (its primary group may be in allowed_gids).
            (Some(uid), _) if self.data_planes.contains(&uid) => false,
            (Some(uid), gid) => {
                uid == 0
                    || Some(uid) == self.own_uid
                    || self.uids.contains(&uid)
                    || gid.is_some_and(|g| self.gids.contains(&g))
            }
            // No credentials (not a Unix socket): nothing to trust.
            (None, _) => false,
        }
    }

    /// Lets a changing `call` through, or refuses it with PERMISSION_DENIED; both are audited.
    pub fn authorize<T>(&self, request: &Request<T>, call: &str) -> Result<Caller, Status> {
        let caller = Caller::of(request);
        if self.allows(&caller) {
            return Ok(caller);
        }
        if let Some(suppressed) = self.denials.record(caller.uid, call) {
            tracing::info!(
                target: "audit",
                call,
                uid = caller.uid,
                gid = caller.gid,
                pid = caller.pid,
                outcome = "denied",
                suppressed,
                denied_total = self.denied_total(),
            );
        }
        Err(Status::permission_denied(format!(
            "{call} is not allowed for uid {}: only root, controld's own user and \
             control.allowed_uids / allowed_gids may make changes",
            caller
                .uid
                .map_or_else(|| "unknown".to_owned(), |u| u.to_string())
        )))
    }
}

/// The uid of `user` (a name in `passwd`, the text of /etc/passwd, or a uid as digits).
fn resolve_user(passwd: &str, user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(user))
            .then(|| fields.nth(1).and_then(|uid| uid.parse().ok()))
            .flatten()
    })
}

/// One audit line per changing call, tracing target `audit`.
pub fn audit(call: &str, caller: &Caller, outcome: &str) {
    tracing::info!(
        target: "audit",
        call,
        uid = caller.uid,
        gid = caller.gid,
        pid = caller.pid,
        outcome,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(uids: &[u32], gids: &[u32]) -> Access {
        Access {
            own_uid: Some(1000),
            uids: uids.to_vec(),
            gids: gids.to_vec(),
            data_planes: vec![4000],
            denials: Arc::default(),
        }
    }

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid: Some(uid),
            gid: Some(gid),
            pid: Some(1),
        }
    }

    #[test]
    fn root_self_and_the_allow_list_pass_everyone_else_does_not() {
        let a = access(&[2000], &[3000]);
        assert!(a.allows(&caller(0, 0)));
        assert!(a.allows(&caller(1000, 1000)), "controld's own user");
        assert!(a.allows(&caller(2000, 9)));
        assert!(a.allows(&caller(9, 3000)));
        assert!(!a.allows(&caller(65534, 65534)));
        assert!(!a.allows(&Caller {
            uid: None,
            gid: None,
            pid: None
        }));
    }

    #[test]
    fn a_data_plane_user_is_not_on_the_allow_list() {
        let a = access(&[4000], &[4000]);
        assert!(
            !a.allows(&caller(4000, 4000)),
            "Subscribe only, through its own check, even when the allow-lists name it"
        );
        assert!(
            a.allows(&caller(4001, 4000)),
            "others of its group stay allowed"
        );
    }

    #[test]
    fn users_resolve_by_name_or_as_digits() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nproxyd:x:998:997::/var/lib/proxyd:/usr/sbin/nologin\n";
        assert_eq!(resolve_user(passwd, "proxyd"), Some(998));
        assert_eq!(resolve_user(passwd, "1234"), Some(1234));
        assert_eq!(resolve_user(passwd, "nobody-here"), None);
        assert_eq!(resolve_user(passwd, "x"), None);
    }

    #[test]
    fn repeated_denials_are_counted_and_logged_at_most_once_per_interval() {
        let d = Denials::default();
        assert_eq!(d.record(Some(7), "Reload"), Some(0), "the first is logged");
        for _ in 0..1000 {
            assert_eq!(d.record(Some(7), "Reload"), None);
        }
        assert_eq!(
            d.record(Some(7), "Rollback"),
            Some(0),
            "another call is its own"
        );
        assert_eq!(d.record(Some(8), "Reload"), Some(0), "another user too");
        assert_eq!(d.total.load(Ordering::Relaxed), 1003);
        for uid in 0..(MAX_TRACKED_DENIALS as u32 + 10) {
            d.record(Some(10_000 + uid), "Reload");
        }
        assert!(d.recent.lock().unwrap().len() <= MAX_TRACKED_DENIALS);
    }
}
