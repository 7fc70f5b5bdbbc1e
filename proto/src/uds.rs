//! gRPC channels over a Unix socket: how proxyd and proxyctl reach controld.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Opens a gRPC channel to the Unix socket at `path`.
///
/// The URI is a placeholder: tonic needs one, but every connection goes to `path`.
pub async fn connect(
    path: &Path,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    Endpoint::from_static("http://controld.invalid")
        .connect_timeout(connect_timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}
