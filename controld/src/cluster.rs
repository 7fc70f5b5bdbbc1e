//! Fleets: one config for many hosts, kept in etcd (DESIGN §14, issue 21).

pub mod etcd;
pub mod store;
