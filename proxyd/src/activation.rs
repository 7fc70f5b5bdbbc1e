//! systemd socket activation (`sd_listen_fds(3)`): listening sockets a `.socket` unit passed to
//! proxyd, used instead of binding (issue 13 §1).
//!
//! systemd binds the unit's sockets and keeps them open across restarts of the service, so that
//! connections queue in their backlog while no proxyd runs. Each snapshot's listeners take the
//! passed socket that matches them, as a duplicate (systemd's stays open):
//!
//! - one named like the listener (`FileDescriptorName=` in the unit, as `LISTEN_FDNAMES`
//!   reports it), whatever its address (a warning says when it differs from the configured
//!   one);
//! - otherwise one bound to exactly the listener's configured address, among those whose name
//!   is not another listener's (so that one socket never has two accept loops).
//!
//! The admin listener matches the name `admin` or its address the same way. A listener that
//! matches none is bound as usual. The passed sockets stay with proxyd for its whole life, so a
//! listener added by a later reload finds its socket too.

use std::net::SocketAddr;
use std::sync::Arc;

/// One socket systemd passed.
struct Passed {
    /// Its `FileDescriptorName=`; systemd names unnamed ones after the socket unit.
    name: String,
    local: SocketAddr,
    socket: std::net::TcpListener,
}

/// The sockets systemd passed to this process; empty when it passed none.
#[derive(Default, Clone)]
pub struct Activation {
    passed: Arc<Vec<Passed>>,
}

impl Activation {
    /// Takes the TCP listening sockets of `LISTEN_FDS` (when `LISTEN_PID` is this process), with
    /// their names from `LISTEN_FDNAMES`. Sockets that are not TCP are skipped with a warning.
    ///
    /// Call it before any thread starts: it removes `LISTEN_FDS` and `LISTEN_PID` from the
    /// environment, as `sd_listen_fds(1)` does.
    pub fn from_env() -> Activation {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|names| names.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut passed = Vec::new();
        for index in 0..fds.len() {
            let name = names.get(index).cloned().unwrap_or_default();
            match fds.take_tcp_listener(index) {
                Ok(Some(socket)) => match socket.local_addr() {
                    Ok(local) => passed.push(Passed {
                        name,
                        local,
                        socket,
                    }),
                    Err(e) => {
                        tracing::warn!(index, %name, error = %e, "skipping a socket systemd passed")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(index, %name, error = %e, "skipping a socket systemd passed: proxyd takes TCP listening sockets only")
                }
            }
        }
        for p in &passed {
            tracing::info!(name = %p.name, address = %p.local, "socket passed by systemd");
        }
        Activation {
            passed: Arc::new(passed),
        }
    }

    /// A duplicate of the passed socket for listener `name` on `address` (see the module's
    /// rules), `names` being every listener name of the snapshot (the admin listener's
    /// included); `None` when none matches.
    pub fn socket_for(
        &self,
        name: &str,
        address: SocketAddr,
        names: &[&str],
    ) -> Option<std::io::Result<std::net::TcpListener>> {
        let passed = match self.passed.iter().find(|p| p.name == name) {
            Some(named) => {
                if named.local != address {
                    tracing::warn!(listener = %name, configured = %address, address = %named.local, "serving the socket systemd passed under this name, not the configured address");
                }
                named
            }
            None => self
                .passed
                .iter()
                .find(|p| p.local == address && !names.contains(&p.name.as_str()))?,
        };
        tracing::info!(listener = %name, address = %passed.local, "serving a socket systemd passed");
        Some(passed.socket.try_clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(name: &str) -> Passed {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Passed {
            name: name.to_owned(),
            local: socket.local_addr().unwrap(),
            socket,
        }
    }

    #[test]
    fn a_listener_takes_the_socket_named_like_it_else_the_one_on_its_address() {
        let (http, other) = (passed("http"), passed("proxyd.socket"));
        let (http_at, other_at) = (http.local, other.local);
        let activation = Activation {
            passed: Arc::new(vec![http, other]),
        };
        let names = ["http", "https", "admin"];
        let by_name = activation
            .socket_for("http", "0.0.0.0:80".parse().unwrap(), &names)
            .unwrap()
            .unwrap();
        assert_eq!(by_name.local_addr().unwrap(), http_at);
        let by_address = activation
            .socket_for("https", other_at, &names)
            .unwrap()
            .unwrap();
        assert_eq!(by_address.local_addr().unwrap(), other_at);
        assert!(
            activation
                .socket_for("admin", "127.0.0.1:1".parse().unwrap(), &names)
                .is_none()
        );
        // `http`'s socket is its own: another listener on its address does not get it too.
        assert!(activation.socket_for("web", http_at, &names).is_none());
        // Unless no listener of the snapshot is named `http`.
        assert!(activation.socket_for("web", http_at, &["web"]).is_some());
        // A duplicate each time: the passed socket stays for later snapshots.
        assert!(activation.socket_for("http", http_at, &names).is_some());
    }
}
