//! fleetsim: N simulated fleet nodes for the fleet benchmark. Each speaks to etcd as a
//! controld in a fleet does (controld/src/cluster.rs): its own connection, a lease kept alive,
//! a watch on the fleet's head, and on every new head its state recorded under the lease
//! (`nodes/<name>`), applied at once (no proxyd behind it). Prints `ready N` once every node
//! recorded its first state, then runs until stdin reaches EOF or SIGTERM/SIGINT.
//!
//! `fleetsim sizes` prints what one version costs in etcd: the bytes of the head, of the newest
//! version record, and of every node record.
#![forbid(unsafe_code)]

use std::time::Duration;

use bench_tools::args::{Args, ParseError};
use proto::etcd::etcdserverpb as pb;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "\
usage: fleetsim --etcd URL[,URL...] --fleet NAME --nodes N [--prefix sim-] [--lease-ttl 10]
                [--ignore-stdin]
       fleetsim sizes --etcd URL[,URL...] --fleet NAME

Simulates N nodes of fleet NAME (node i talks to etcd endpoint i mod the number given), prints
`ready N` once each recorded itself, and runs until stdin reaches EOF (unless --ignore-stdin)
or SIGTERM/SIGINT.
`sizes` prints the bytes one version costs in etcd.";

#[derive(serde::Serialize)]
struct NodeState<'a> {
    node: &'a str,
    build: &'a str,
    applied_version: u64,
    applied_hash: &'a str,
    tried_version: u64,
    error: &'a str,
    at_unix_ms: u64,
}

#[derive(serde::Deserialize)]
struct Head {
    version: u64,
    hash: String,
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One simulated node, for as long as the process runs.
async fn node(
    channel: Channel,
    fleet: String,
    name: String,
    ttl: i64,
    ready: mpsc::Sender<()>,
) -> Result<(), Error> {
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    let mut leases = pb::lease_client::LeaseClient::new(channel.clone());
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
        .await?
        .into_inner()
        .id;
    // Kept alive every third of the TTL. The first request goes out with the call: etcd
    // answers (and sends the headers the call waits for) only then.
    let (keep_tx, keep_rx) = mpsc::channel(1);
    keep_tx
        .send(pb::LeaseKeepAliveRequest { id: lease })
        .await?;
    let mut keep = leases
        .lease_keep_alive(ReceiverStream::new(keep_rx))
        .await?
        .into_inner();
    tokio::spawn(async move {
        loop {
            if keep.message().await.ok().flatten().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_secs((ttl / 3).max(1) as u64)).await;
            if keep_tx
                .send(pb::LeaseKeepAliveRequest { id: lease })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let head_key = format!("/proxy/fleets/{fleet}/head").into_bytes();
    let node_key = format!("/proxy/fleets/{fleet}/nodes/{name}").into_bytes();
    let record = |version: u64, hash: &str| {
        serde_json::to_vec(&NodeState {
            node: &name,
            build: "fleetsim",
            applied_version: version,
            applied_hash: hash,
            tried_version: version,
            error: "",
            at_unix_ms: unix_ms(),
        })
        .unwrap_or_default()
    };
    let (watch_tx, watch_rx) = mpsc::channel(1);
    watch_tx
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: head_key.clone(),
                    range_end: Vec::new(),
                    // From now, as controld does: a watch from a past revision waits for
                    // etcd's catch-up loop.
                    start_revision: 0,
                    ..Default::default()
                },
            )),
        })
        .await?;
    let mut watch = pb::watch_client::WatchClient::new(channel)
        .watch(ReceiverStream::new(watch_rx))
        .await?
        .into_inner();
    let current = kv
        .range(pb::RangeRequest {
            key: head_key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let head = current
        .kvs
        .first()
        .and_then(|kv| serde_json::from_slice::<Head>(&kv.value).ok());
    let (version, hash) = head.map_or((0, String::new()), |h| (h.version, h.hash));
    kv.put(pb::PutRequest {
        key: node_key.clone(),
        value: record(version, &hash),
        lease,
        ..Default::default()
    })
    .await?;
    let _ = ready.send(()).await;
    while let Some(message) = watch.message().await? {
        for event in message.events {
            let Some(head) = event
                .kv
                .and_then(|kv| serde_json::from_slice::<Head>(&kv.value).ok())
            else {
                continue;
            };
            kv.put(pb::PutRequest {
                key: node_key.clone(),
                value: record(head.version, &head.hash),
                lease,
                ..Default::default()
            })
            .await?;
        }
    }
    drop(watch_tx);
    Ok(())
}

/// The bytes of the head, the newest version and every node record.
async fn sizes(channel: Channel, fleet: &str) -> Result<(), Error> {
    let kv = pb::kv_client::KvClient::new(channel);
    let range = |key: Vec<u8>, end: Vec<u8>| {
        let request = pb::RangeRequest {
            key,
            range_end: end,
            ..Default::default()
        };
        let mut kv = kv.clone();
        async move { kv.range(request).await.map(|r| r.into_inner()) }
    };
    let base = format!("/proxy/fleets/{fleet}/");
    let head = range(format!("{base}head").into_bytes(), Vec::new()).await?;
    let versions_key = format!("{base}versions/").into_bytes();
    let versions = range(versions_key.clone(), prefix_end(&versions_key)).await?;
    let nodes_key = format!("{base}nodes/").into_bytes();
    let nodes = range(nodes_key.clone(), prefix_end(&nodes_key)).await?;
    let bytes = |kvs: &[proto::etcd::mvccpb::KeyValue]| {
        kvs.iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum::<usize>()
    };
    let newest = versions
        .kvs
        .last()
        .map_or(0, |kv| kv.key.len() + kv.value.len());
    println!(
        "head {} version {} nodes {} node_count {} versions_kept {}",
        bytes(&head.kvs),
        newest,
        bytes(&nodes.kvs),
        nodes.kvs.len(),
        versions.kvs.len()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let sizes_mode = argv.first().is_some_and(|a| a == "sizes");
    if sizes_mode {
        argv.remove(0);
    }
    let args = match Args::parse(
        argv,
        &["etcd", "fleet", "nodes", "prefix", "lease-ttl"],
        &["ignore-stdin"],
    ) {
        Ok(a) => a,
        Err(ParseError::Help) => {
            println!("{USAGE}");
            return;
        }
        Err(ParseError::Bad(e)) => {
            eprintln!("fleetsim: {e}\n{USAGE}");
            std::process::exit(1);
        }
    };
    let (Some(etcd), Some(fleet)) = (args.str("etcd"), args.str("fleet")) else {
        eprintln!("fleetsim: --etcd and --fleet are required\n{USAGE}");
        std::process::exit(1);
    };
    let channels: Vec<Channel> = etcd
        .split(',')
        .map(|e| match Endpoint::from_shared(e.to_owned()) {
            Ok(e) => e.connect_lazy(),
            Err(err) => {
                eprintln!("fleetsim: bad endpoint {e}: {err}");
                std::process::exit(1);
            }
        })
        .collect();
    if sizes_mode {
        if let Err(e) = sizes(channels[0].clone(), fleet).await {
            eprintln!("fleetsim: {e}");
            std::process::exit(1);
        }
        return;
    }
    let count: usize = args.get("nodes").ok().flatten().unwrap_or(50);
    let ttl: i64 = args.get("lease-ttl").ok().flatten().unwrap_or(10);
    let prefix = args.str("prefix").unwrap_or("sim-").to_owned();
    let (ready_tx, mut ready_rx) = mpsc::channel(count.max(1));
    for i in 0..count {
        // A connection of its own, as a host's controld has.
        let channel = match Endpoint::from_shared(
            etcd.split(',')
                .nth(i % channels.len())
                .unwrap_or("")
                .to_owned(),
        ) {
            Ok(e) => e.connect_lazy(),
            Err(_) => channels[i % channels.len()].clone(),
        };
        let (fleet, name, ready) = (fleet.to_owned(), format!("{prefix}{i}"), ready_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = node(channel, fleet, name.clone(), ttl, ready).await {
                eprintln!("fleetsim: node {name}: {e}");
            }
        });
    }
    drop(ready_tx);
    let mut recorded = 0;
    while recorded < count && ready_rx.recv().await.is_some() {
        recorded += 1;
    }
    println!("ready {recorded}");
    let mut term = signal(SignalKind::terminate()).ok();
    let ignore_stdin = args.flag("ignore-stdin");
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = async {
            if ignore_stdin {
                std::future::pending::<()>().await;
            }
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        } => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
