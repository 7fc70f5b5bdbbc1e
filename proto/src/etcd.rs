//! etcd's v3 API, generated from the trimmed copy of its .proto files in `proto/etcd` (ADR 0007):
//! the KV, Watch, Lease and Maintenance clients controld's fleets use.

#![allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
