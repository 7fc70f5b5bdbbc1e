//! Client TLS to etcd (`[cluster] tls`, `https://` endpoints): rustls, trusting the CA of
//! `ca_file` only, presenting this host's certificate when etcd asks for one (etcd's
//! `--client-cert-auth`), ALPN `h2`.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::ClusterTls;

/// The client TLS settings for etcd, read from the files `[cluster] tls` names.
pub fn client_config(tls: &ClusterTls) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |path: &std::path::Path, key: &str| {
        std::fs::read(path).map_err(|e| format!("cluster.tls.{key} {}: {e}", path.display()))
    };
    let ca = read(&tls.ca_file, "ca_file")?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca) {
        let der = der.map_err(|e| format!("cluster.tls.ca_file {}: {e}", tls.ca_file.display()))?;
        roots
            .add(der)
            .map_err(|e| format!("cluster.tls.ca_file {}: {e}", tls.ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "cluster.tls.ca_file {}: no certificate in it",
            tls.ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert_file, "cert_file")?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cluster.tls.cert_file {}: {e}", cert_file.display()))?;
            // The key's error never quotes the key.
            let key =
                PrivateKeyDer::from_pem_slice(&read(key_file, "key_file")?).map_err(|_| {
                    format!(
                        "cluster.tls.key_file {}: no private key in it",
                        key_file.display()
                    )
                })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("cluster.tls: the certificate and key do not go together: {e}")
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A connector for tonic: TCP to the endpoint's host and port, then TLS with `config`, the
/// server name being the endpoint's host.
pub fn connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let config = config.clone();
        async move {
            let invalid =
                |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned());
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let name = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| invalid("not a host name or address"))?;
            let tcp = tokio::net::TcpStream::connect((name.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}
