//! controld, the control plane: owns the config file, validates it, versions snapshots and
//! streams them to data planes over gRPC on a Unix socket.
//!
//! `main.rs` loads the config, binds the socket and installs signal handlers; everything else
//! is here so that tests can run a whole controld in-process.

// The config model, its validation and the diff live in their own crate (shared with
// proxyctl's offline check); the paths stay `crate::config`, `crate::diff`, `crate::redact`.
pub use proxy_config::{config, diff, redact};

pub mod access;
pub mod acme;
pub mod challenges;
pub mod cluster;
pub mod dataplanes;
pub mod error;
pub mod history;
pub mod metrics;
mod notify;
pub mod reloader;
pub mod service;
pub mod snapshot;
pub mod socket;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::Error;
pub use reloader::{LogLevelHook, ReloadOptions, Reloader};
pub use socket::ControlSocket;

/// How long a reload waits for the data planes' answers by default.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How controld runs.
#[derive(Clone)]
pub struct Options {
    pub config_path: PathBuf,
    /// How long a reload waits for every data plane to ACK or NACK.
    pub ack_timeout: Duration,
    /// Applies `logging.level` after each reload (the binary's tracing subscriber).
    pub log_level_hook: Option<LogLevelHook>,
    /// How the ACME task runs (its clock, how often it looks, its back-off).
    pub acme: acme::AcmeOptions,
}

impl Options {
    pub fn new(config_path: impl Into<PathBuf>) -> Options {
        Options {
            config_path: config_path.into(),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            log_level_hook: None,
            acme: acme::AcmeOptions::default(),
        }
    }
}

/// A started control plane: config loaded and versioned, ready to serve.
pub struct Controld {
    reloader: Arc<Reloader>,
    planes: Arc<dataplanes::DataPlanes>,
    /// From the config at start: the allow-list is static.
    access: access::Access,
    started_at: SystemTime,
    acme: Arc<acme::Acme>,
    /// In a fleet: the fleet version it started from (see [`cluster::resume`]).
    resumed: Option<(u64, String)>,
}

impl Controld {
    /// Versions `config` (loaded from `options.config_path`) and opens the state directory.
    /// `config_text` is the file's text `config` was parsed from, for the version history.
    pub fn start(options: &Options, config: Config, config_text: &str) -> Result<Controld, Error> {
        // A host of a fleet starts from the fleet version it applied last.
        let (config, config_text, resumed) =
            cluster::resume(config, config_text, &options.config_path);
        let config_text = config_text.as_str();
        let planes = Arc::new(dataplanes::DataPlanes::default());
        let access = access::Access::new(&config.statics.control);
        // The certificates earlier runs stored go into the first version; the CA is only ever
        // talked to by the ACME task, so startup never waits for it.
        let (acme, overlay) = acme::Acme::open(&config, options.acme.clone())?;
        let reloader = Reloader::start(
            &options.config_path,
            config,
            config_text,
            planes.clone(),
            options.ack_timeout,
            options.log_level_hook.clone(),
            overlay,
        )?;
        Ok(Controld {
            reloader: Arc::new(reloader),
            planes,
            access,
            started_at: SystemTime::now(),
            acme: Arc::new(acme),
            resumed,
        })
    }

    /// The Reloader, for SIGHUP.
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// The control socket path of the config in force (a static setting).
    pub fn socket_path(&self) -> PathBuf {
        self.reloader
            .current()
            .config
            .statics
            .control
            .socket
            .clone()
    }

    /// Binds `control.metrics_address` and serves `/metrics` there until `shutdown`; from then
    /// on the Reloader moves it with every reload that changes it.
    fn serve_metrics(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let source = Arc::new(MetricsSource {
            metrics: self.reloader.shared_metrics(),
            current: self.reloader.subscribe(),
            planes: self.planes.clone(),
        });
        self.reloader.metrics_listener().start(source, shutdown)?;
        Ok(())
    }

    /// Serves Control and Admin on `socket` until `shutdown` is cancelled, then ends every
    /// Subscribe stream (data planes keep serving) and removes the socket file.
    pub async fn serve(
        &self,
        mut socket: ControlSocket,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let Some(listener) = socket.take_listener() else {
            return Ok(());
        };
        // A host of a fleet follows it from now on, and its reloads publish to it.
        let fleet = match self.reloader.current().config.statics.cluster.clone() {
            None => None,
            Some(cluster) => {
                let link = Arc::new(
                    cluster::Link::new(
                        &cluster,
                        &self.reloader.current().config.statics.control.state_dir,
                        self.resumed.clone(),
                    )
                    .map_err(Error::Fleet)?,
                );
                self.reloader.join_fleet(link.clone());
                tracing::info!(fleet = %cluster.name, node = %cluster.node, etcd = %cluster.etcd.join(","), "following the fleet");
                tokio::spawn(cluster::follow(
                    self.reloader.clone(),
                    link.clone(),
                    shutdown.clone(),
                ));
                // ACME once per fleet: one issuer, the fleet's certificates served here.
                let key = match &cluster.key_file {
                    Some(path) => Some(Arc::new(
                        cluster::FleetKey::read(path).map_err(Error::Fleet)?,
                    )),
                    None => None,
                };
                self.acme.join_fleet(Arc::new(cluster::FleetAcmeLink::new(
                    link.clone(),
                    key.clone(),
                    self.reloader.ack_timeout(),
                )));
                tokio::spawn(cluster::follow_acme(
                    self.reloader.clone(),
                    link.clone(),
                    self.acme.clone(),
                    key,
                    shutdown.clone(),
                ));
                Some(link)
            }
        };
        let control = service::ControlService {
            reloader: self.reloader.clone(),
            planes: self.planes.clone(),
            access: self.access.clone(),
            shutdown: shutdown.clone(),
        };
        let admin = service::AdminService {
            reloader: self.reloader.clone(),
            fleet,
            planes: self.planes.clone(),
            access: self.access.clone(),
            started_at: self.started_at,
            shutdown: shutdown.clone(),
            acme: self.acme.clone(),
        };
        self.serve_metrics(&shutdown)?;
        tokio::spawn(
            self.acme
                .clone()
                .run(self.reloader.clone(), shutdown.clone()),
        );
        notify::ready(self.reloader.current().version);
        // Discoverable with standard tools: `grpcurl -unix <socket> list`, and health probes
        // through grpc.health.v1 with no custom client. Reflection is served as v1 and as
        // v1alpha: grpcio-reflection (Python) and older grpcurl releases speak only
        // v1alpha. Each lists both, so a client sees the same services whichever it asks.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| Error::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| Error::Reflection(e.to_string()))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<proto::v1::admin_server::AdminServer<service::AdminService>>()
            .await;
        health
            .set_serving::<proto::v1::control_server::ControlServer<service::ControlService>>()
            .await;
        // Explicit limits on both ends (docs/protocol.md): snapshots up to MAX_MESSAGE_BYTES out,
        // requests up to MAX_REQUEST_BYTES in; per caller, `proto::uds::server`'s bounds.
        let serve = proto::uds::server()
            .add_service(
                proto::v1::control_server::ControlServer::new(control)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_decoding_message_size(proto::MAX_REQUEST_BYTES),
            )
            .add_service(service::SharedReads::new(
                proto::v1::admin_server::AdminServer::new(admin)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_decoding_message_size(proto::MAX_REQUEST_BYTES),
                self.reloader.clone(),
                self.access.clone(),
            ))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                proto::uds::Incoming::new(listener, proto::uds::HANDSHAKE_TIMEOUT),
                async {
                    shutdown.cancelled().await;
                    // Before the server winds down, so it cannot be lost to the process exiting.
                    notify::stopping();
                },
            );
        // A caller that stops reading must not hold up the exit: past the grace, whatever is
        // still open is dropped.
        tokio::select! {
            served = serve => served?,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open on the control socket at shutdown; closed"),
        }
        tracing::info!(socket = %socket.path().display(), "control socket closed");
        drop(socket);
        Ok(())
    }
}

/// What `/metrics` reads: the serving version and certificates, and the data planes. It holds
/// no reference to the Reloader, which keeps the metrics listener and with it this source.
struct MetricsSource {
    metrics: Arc<metrics::Metrics>,
    current: tokio::sync::watch::Receiver<Arc<reloader::Current>>,
    planes: Arc<dataplanes::DataPlanes>,
}

impl metrics::Source for MetricsSource {
    fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    fn view(&self) -> metrics::View {
        let current = self.current.borrow().clone();
        let planes = self.planes.list();
        metrics::View {
            version: current.version,
            certificates: current
                .content
                .snapshot
                .certificates
                .iter()
                .map(|c| (c.site.clone(), c.not_after_unix))
                .collect(),
            data_planes: planes.len(),
            data_planes_in_sync: planes
                .iter()
                .filter(|p| p.serves(current.version, &current.content.hash))
                .count(),
        }
    }
}

/// How long open calls on the control socket get to finish once controld stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Loads the config, binds its control socket and serves until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let (config, text) = match snapshot::load_checked(&options.config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            let (config, text, version) =
                cluster::start_from_kept(&options.config_path).ok_or(e)?;
            tracing::warn!(version, file = %options.config_path.display(),
                "the config file does not check; starting from the fleet version this host \
                 applied last, with the file's host tables");
            (config, text)
        }
    };
    let controld = Controld::start(&options, config, &text)?;
    let socket = socket::bind(&controld.socket_path())?;
    controld.serve(socket, shutdown).await
}
