//! TLS to memcached (`memcached -Z`), with rustls, behind the `tls` feature. Each new connection
//! makes its handshake right after the TCP connect, before the login and the `stats` greeting;
//! its two halves then carry the pipelined requests and replies as a plain connection's do.
//!
//! The server's name is the host as configured, an IP address included, and its certificate is
//! checked against it and against the roots given: the system's (`CacheBuilder::tls`), a PEM
//! file's (`tls_ca_file`), or a `rustls::ClientConfig` of the caller's (`tls_config`).

#[cfg(feature = "tls")]
use std::io;

/// What a node's connections use for TLS: the client configuration, and the name the server's
/// certificate must carry. Without the `tls` feature there is none to make.
#[derive(Clone)]
pub(crate) struct NodeTls {
    #[cfg(feature = "tls")]
    connector: tokio_rustls::TlsConnector,
    #[cfg(feature = "tls")]
    name: rustls_pki_types::ServerName<'static>,
    #[cfg(not(feature = "tls"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

/// The TLS settings of a cache, shared by its nodes.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    #[cfg(feature = "tls")]
    pub(crate) config: std::sync::Arc<rustls::ClientConfig>,
    #[cfg(not(feature = "tls"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSettings")
    }
}

impl TlsSettings {
    /// The settings of one node, whose certificate must name `host`; an error if `host` can be
    /// no server name.
    pub(crate) fn for_host(&self, host: &str) -> Result<NodeTls, String> {
        #[cfg(feature = "tls")]
        {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|err| format!("{host:?} cannot be a TLS server name: {err}"))?;
            Ok(NodeTls {
                connector: tokio_rustls::TlsConnector::from(self.config.clone()),
                name,
            })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = host;
            match self.never {}
        }
    }
}

/// A connection's stream: TCP, or TLS over TCP.
#[cfg(feature = "tls")]
pub(crate) type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl NodeTls {
    /// Makes the TLS handshake on `stream`. A failure says what failed, in the words an operator
    /// needs: no TLS on the server's side, a certificate from an unknown authority, for another
    /// name, or expired.
    #[cfg(feature = "tls")]
    pub(crate) async fn connect(&self, stream: tokio::net::TcpStream) -> io::Result<TlsStream> {
        self.connector
            .connect(self.name.clone(), stream)
            .await
            .map_err(|err| match described(&err) {
                // Refused on a certificate or the protocol: the same at every connect.
                Some(what) => super::auth::refusal(format!("TLS: {what}")),
                // The network failed during the handshake: an I/O failure like any other.
                None => io::Error::new(err.kind(), format!("TLS handshake: {err}")),
            })
    }

    /// None can be made without the `tls` feature.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn unreachable<T>(&self) -> T {
        match self.never {}
    }
}

/// A TLS handshake's failure on a certificate or the protocol, said for an operator; `None` for
/// an I/O failure.
#[cfg(feature = "tls")]
fn described(err: &io::Error) -> Option<String> {
    use rustls::{CertificateError, Error as Tls};
    let inner = err.get_ref().and_then(|inner| inner.downcast_ref::<Tls>());
    Some(match inner? {
        Tls::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is signed by an unknown authority (see tls_ca_file)"
                .to_owned()
        }
        Tls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is not valid for the host as configured".to_owned(),
        Tls::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_owned(),
        Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => {
            "the server does not speak TLS (is it started with -Z?)".to_owned()
        }
        other => other.to_string(),
    })
}

/// Where a cache's TLS roots come from (`CacheBuilder::tls`, `tls_ca_file`, `tls_config`),
/// resolved into [`TlsSettings`] when the cache is built.
#[derive(Clone)]
pub(crate) enum TlsSource {
    #[cfg(feature = "tls")]
    System,
    #[cfg(feature = "tls")]
    CaFile(std::path::PathBuf),
    #[cfg(feature = "tls")]
    Config(std::sync::Arc<rustls::ClientConfig>),
    /// Without the `tls` feature: asked for by the environment (`DISTCACHE_TLS`), refused.
    #[cfg(not(feature = "tls"))]
    Unavailable,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "tls")]
            TlsSource::System => f.write_str("System"),
            #[cfg(feature = "tls")]
            TlsSource::CaFile(path) => f.debug_tuple("CaFile").field(path).finish(),
            #[cfg(feature = "tls")]
            TlsSource::Config(_) => f.write_str("Config"),
            #[cfg(not(feature = "tls"))]
            TlsSource::Unavailable => f.write_str("Unavailable"),
        }
    }
}

impl TlsSource {
    /// The settings, or why there are none.
    pub(crate) fn settings(&self) -> Result<TlsSettings, String> {
        match self {
            #[cfg(feature = "tls")]
            TlsSource::System => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!(
                        "no root certificate found on this system ({} errors); install \
                         ca-certificates or give tls_ca_file",
                        found.errors.len()
                    ));
                }
                client_config(roots)
            }
            #[cfg(feature = "tls")]
            TlsSource::CaFile(path) => {
                use rustls_pki_types::pem::PemObject;
                let shown = path.display();
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|err| format!("cannot read the CA file {shown}: {err}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("the CA file {shown} is not PEM: {err}"))?;
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("the CA file {shown} holds no certificate"));
                }
                client_config(roots)
            }
            #[cfg(feature = "tls")]
            TlsSource::Config(config) => Ok(TlsSettings {
                config: config.clone(),
            }),
            #[cfg(not(feature = "tls"))]
            TlsSource::Unavailable => {
                Err("this build of distcache has no TLS: enable its `tls` feature".to_owned())
            }
        }
    }
}

/// A client configuration with ring's provider, its safe default versions, and `roots`.
#[cfg(feature = "tls")]
fn client_config(roots: rustls::RootCertStore) -> Result<TlsSettings, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsSettings {
        config: std::sync::Arc::new(config),
    })
}
