//! The clients: reach controld's Admin socket or proxyd's own DataPlane socket, and name the step
//! that failed.
//!
//! Every way a call can fail becomes one [`Error`], naming the daemon it was for, so `main` can
//! pick the exit code and print one clear line. Three kinds matter to a script: the daemon is not
//! running at all ([`Error::is_not_running`]: exit 3 for `status`, `health` and `shutdown`), it
//! could not be reached or did not answer ([`Error::Connect`], [`Error::Timeout`],
//! [`Error::Rpc`]: exit 69, try again later), or it answered and refused the operation
//! ([`Error::Refused`]: exit 1, trying again will not help).

mod error;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::admin_client::AdminClient;
use proto::v1::data_plane_client::DataPlaneClient;
use proto::v1::{
    DataPlaneStatusReply, DataPlaneStatusRequest, DrainReply, DrainRequest, GetConfigReply,
    GetConfigRequest, HistoryReply, HistoryRequest, ReloadReply, ReloadRequest, RollbackRequest,
    StatusReply, StatusRequest, ValidateReply, ValidateRequest,
};
use tonic::transport::Channel;
use tonic::{Response, Status};

pub use error::{Daemon, Error, describe_io};
use error::{describe_connect_failure, rpc_error};

/// Connecting never waits longer than this, even with a long `--timeout`: a local socket either
/// answers at once or is not going to.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket a client talks to, and the deadline every call on it gets.
struct Target {
    daemon: Daemon,
    socket: PathBuf,
    timeout: Duration,
}

impl Target {
    /// Connects to `socket`; `timeout` is the deadline of each later call and, capped at 5 s,
    /// of the connection itself.
    async fn connect(
        daemon: Daemon,
        socket: &Path,
        timeout: Duration,
    ) -> Result<(Target, Channel), Error> {
        let connect_timeout = timeout.min(MAX_CONNECT_TIMEOUT);
        let failed = |reason: String, not_running: bool| Error::Connect {
            daemon,
            socket: socket.to_owned(),
            reason,
            not_running,
        };
        // The outer timer is a backstop: tonic's connect timeout covers the socket connect, this
        // also covers the HTTP/2 handshake with a peer that accepted but never speaks.
        match tokio::time::timeout(
            connect_timeout,
            proto::uds::connect(socket, connect_timeout),
        )
        .await
        {
            Ok(Ok(channel)) => Ok((
                Target {
                    daemon,
                    socket: socket.to_owned(),
                    timeout,
                },
                channel,
            )),
            Ok(Err(err)) => {
                let (reason, not_running) = describe_connect_failure(&err);
                Err(failed(reason, not_running))
            }
            Err(_) => Err(failed(
                format!(
                    "no connection within {}",
                    humantime::format_duration(connect_timeout)
                ),
                false,
            )),
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Tells the daemon the deadline too, so it can give up on its side.
        request.set_timeout(self.timeout);
        request
    }

    /// Waits for a call with the whole deadline and names what went wrong.
    async fn finish<T>(
        &self,
        call: &'static str,
        answer: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(rpc_error(
                self.daemon,
                &self.socket,
                call,
                self.timeout,
                &status,
            )),
            Err(_) => Err(Error::Timeout {
                daemon: self.daemon,
                socket: self.socket.clone(),
                call,
                timeout: self.timeout,
            }),
        }
    }
}

/// A connected Admin client (controld) with the deadline every call gets.
pub struct Admin {
    client: AdminClient<Channel>,
    target: Target,
}

impl Admin {
    /// Connects to controld's `socket`; `timeout` is the deadline of each later call and, capped
    /// at 5 s, of the connection itself.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Admin, Error> {
        let (target, channel) = Target::connect(Daemon::Controld, socket, timeout).await?;
        Ok(Admin {
            // GetConfig carries a whole snapshot.
            client: AdminClient::new(channel)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_REQUEST_BYTES),
            target,
        })
    }

    /// `Admin.Reload`.
    pub async fn reload(&mut self, request: ReloadRequest) -> Result<ReloadReply, Error> {
        let request = self.target.request(request);
        let answer = self.client.reload(request);
        self.target.finish("reload", answer).await
    }

    /// `Admin.Status`.
    pub async fn status(&mut self) -> Result<StatusReply, Error> {
        let request = self.target.request(StatusRequest {});
        let answer = self.client.status(request);
        self.target.finish("status", answer).await
    }

    /// `Admin.History`.
    pub async fn history(&mut self) -> Result<HistoryReply, Error> {
        let request = self.target.request(HistoryRequest {});
        let answer = self.client.history(request);
        self.target.finish("history", answer).await
    }

    /// `Admin.Rollback`: its reply is a reload's.
    pub async fn rollback(&mut self, request: RollbackRequest) -> Result<ReloadReply, Error> {
        let request = self.target.request(request);
        let answer = self.client.rollback(request);
        self.target.finish("rollback", answer).await
    }

    /// `Admin.Validate`, for `check --remote`: nothing is applied.
    pub async fn validate(&mut self, request: ValidateRequest) -> Result<ValidateReply, Error> {
        let request = self.target.request(request);
        let answer = self.client.validate(request);
        self.target.finish("check", answer).await
    }

    /// `Admin.Certificates`, for `certs` (and `status`).
    pub async fn certificates(&mut self) -> Result<proto::v1::CertificatesReply, Error> {
        let request = self.target.request(proto::v1::CertificatesRequest {});
        let answer = self.client.certificates(request);
        self.target.finish("certs", answer).await
    }

    /// `Admin.GetConfig`, for `config show`.
    pub async fn get_config(&mut self) -> Result<GetConfigReply, Error> {
        let request = self.target.request(GetConfigRequest {});
        let answer = self.client.get_config(request);
        self.target.finish("config show", answer).await
    }
}

/// A connected DataPlane client (the local proxyd) with the deadline every call gets.
pub struct DataPlane {
    client: DataPlaneClient<Channel>,
    target: Target,
}

impl DataPlane {
    /// Connects to proxyd's own `socket`; `timeout` as for [`Admin::connect`].
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<DataPlane, Error> {
        let (target, channel) = Target::connect(Daemon::Proxyd, socket, timeout).await?;
        Ok(DataPlane {
            client: DataPlaneClient::new(channel),
            target,
        })
    }

    /// `DataPlane.Status`.
    pub async fn status(&mut self) -> Result<DataPlaneStatusReply, Error> {
        let request = self.target.request(DataPlaneStatusRequest {});
        let answer = self.client.status(request);
        self.target.finish("status", answer).await
    }

    /// `DataPlane.Drain`: answers once the drain has started.
    pub async fn drain(&mut self) -> Result<DrainReply, Error> {
        let request = self.target.request(DrainRequest {});
        let answer = self.client.drain(request);
        self.target.finish("shutdown", answer).await
    }
}

/// Whether something still accepts connections on `socket` (not whether it speaks gRPC): how
/// `shutdown --wait` sees that proxyd has exited. `false` once the file is gone or nobody
/// listens on it; other failures (no permission, ...) count as still there.
pub async fn accepts_connections(socket: &Path) -> bool {
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => true,
        Err(err) => !matches!(
            err.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ),
    }
}

#[cfg(test)]
mod tests;
