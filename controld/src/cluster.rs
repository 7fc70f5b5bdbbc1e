//! Fleets: one config for many hosts, kept in etcd (DESIGN §14, issue 21, docs/fleets.md).
//!
//! Every host runs controld and proxyd as a single host does; its controld also belongs to a
//! fleet (`[cluster]`). A reload on any host splits the file into the fleet's part and the
//! host's tables ([`proxy_config::fleet`]), publishes the fleet's part as the fleet's next
//! version, applies it here, and waits until every live node has applied it or said why not.
//! Each controld follows the fleet's head ([`follow`]): every new version is joined to the
//! host's own tables and reloaded locally, and the outcome recorded under the node's lease.

mod acme;
mod applied;
mod apply;
mod canary;
pub mod etcd;
mod link;
mod publish;
mod report;
mod secret;
mod status;
pub mod store;
mod tls;
mod traffic;

pub use acme::{FleetAcmeLink, follow_acme};
pub use applied::{resume, start_from_kept};
pub use apply::follow;
pub use link::Link;
pub use publish::{RollbackError, reload, rollback};
pub use secret::FleetKey;
pub use status::{history, status};
