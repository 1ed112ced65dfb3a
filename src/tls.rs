//! TLS configuration: certificates and keys loaded from PEM files into
//! rustls configurations (the `ring` provider), for the client listener
//! (`--tls-cert`/`--tls-key`, client certificates with `--tls-ca`) and for
//! `rediss://` upstreams (the system's trust store or `--upstream-ca`,
//! `--upstream-cert`/`--upstream-key`, or `--upstream-tls-insecure` for
//! tests).
//!
//! Everything is loaded and checked once, when the flags are validated, so a
//! bad path or a PEM file without a key is a start-up error, never a failure
//! on the first connection. Handshakes happen in `server` (clients)
//! and `pool::connection`; the encrypted byte stream is `net::Stream`.
//! Error messages name files, never their contents.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// TLS for the client listener.
#[derive(Clone)]
pub struct ListenerTls {
    /// Accepts handshakes with the loaded certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Longest time a client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// Clients must present a certificate signed by `--tls-ca`.
    pub client_certs_required: bool,
    /// Tells a rotated certificate or key from the same one read again.
    pub(crate) fingerprint: u64,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("client_certs_required", &self.client_certs_required)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads the listener's certificate chain and key, and the CA that client
    /// certificates must chain to when given.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        handshake_timeout: Duration,
    ) -> Result<ListenerTls, String> {
        let chain = load_certs(cert, "--tls-cert")?;
        let key = load_key(key, "--tls-key")?;
        let fingerprint =
            crate::reload::fingerprint(chain.iter().map(|c| c.as_ref()).chain([key.secret_der()]));
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
        let builder = match client_ca {
            Some(ca) => {
                let roots = load_roots(ca, "--tls-ca")?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| format!("invalid '--tls-ca' {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "'--tls-cert' {} and '--tls-key' do not make a usable certificate: {e}",
                cert.display()
            )
        })?;
        Ok(ListenerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshake_timeout,
            client_certs_required: client_ca.is_some(),
            fingerprint,
        })
    }
}

/// TLS for `rediss://` upstream connections.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Starts handshakes with the upstream.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the upstream's certificate must carry, also sent as SNI
    /// (the URL's host, or `--upstream-tls-server-name`).
    pub server_name: ServerName<'static>,
    /// Certificates are not verified (`--upstream-tls-insecure`).
    pub insecure: bool,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// Where the upstream's trust comes from.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamTrust<'a> {
    /// Certificates must chain to the CAs in this PEM file.
    Ca(&'a Path),
    /// Certificates must chain to a CA the operating system trusts (on
    /// Linux the distribution's bundle; `SSL_CERT_FILE` and `SSL_CERT_DIR`
    /// replace it, as they do for OpenSSL and redis-cli).
    System,
    /// No verification at all: for tests against self-signed servers only.
    Insecure,
}

/// The TLS server name of `host:port` (an IP address or a DNS name;
/// `[v6]:port` too).
pub(crate) fn server_name_of(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("'{host}' is not a valid TLS server name"))
}

impl UpstreamTls {
    /// Builds the client configuration for a server whose certificate must
    /// name `host` (a DNS name or an IP address, without brackets: the
    /// URL's host or `--upstream-tls-server-name`), with an optional client certificate for
    /// servers that require one (Redis's `tls-auth-clients yes`).
    pub fn load(
        host: &str,
        trust: UpstreamTrust<'_>,
        client_cert: Option<(&Path, &Path)>,
    ) -> Result<UpstreamTls, String> {
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("'{host}' is not a valid TLS server name"))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
        let builder = match trust {
            UpstreamTrust::Ca(ca) => {
                builder.with_root_certificates(load_roots(ca, "--upstream-ca")?)
            }
            UpstreamTrust::System => builder.with_root_certificates(system_roots()?),
            UpstreamTrust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider()))),
        };
        let config = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    load_certs(cert, "--upstream-cert")?,
                    load_key(key, "--upstream-key")?,
                )
                .map_err(|e| {
                    format!(
                        "'--upstream-cert' {} and '--upstream-key' do not make a usable certificate: {e}",
                        cert.display()
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            insecure: matches!(trust, UpstreamTrust::Insecure),
        })
    }
}

/// The one crypto provider respool uses: `ring`.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read '{flag}' {}: {e}", path.display()))
}

/// Every certificate in a PEM file (a chain: leaf first).
fn load_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, flag)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("'{flag}' {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate (BEGIN CERTIFICATE) found in '{flag}' {}",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1). The
/// parser's own error is not shown: it could quote the file.
fn load_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path, flag)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "no private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found in '{flag}' {}",
            path.display()
        ),
        _ => format!("'{flag}' {} is not a valid PEM private key", path.display()),
    })
}

/// The operating system's trust store. A store with no usable CA is an
/// error at start, not a handshake failure on every connection.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!(": {e}"),
            None => String::new(),
        };
        return Err(format!(
            "a rediss:// upstream without '--upstream-ca' is verified against the system's trust store, and none was found{why}; give '--upstream-ca' (the CA that signed the server's certificate), install the system's CA bundle (Debian: ca-certificates), or set SSL_CERT_FILE"
        ));
    }
    Ok(Arc::new(roots))
}

/// A trust store made of every certificate in a PEM file.
fn load_roots(path: &Path, flag: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, flag)? {
        roots
            .add(cert)
            .map_err(|e| format!("invalid CA certificate in '{flag}' {}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Accepts any server certificate (`--upstream-tls-insecure`). Handshake
/// signatures are still checked, so the connection is encrypted to whoever
/// holds the presented certificate's key, just not to a verified server.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_files_and_empty_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        let e = ListenerTls::load(&missing, &empty, None, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("cannot read '--tls-cert'"), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
        let e = ListenerTls::load(&empty, &empty, None, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = UpstreamTls::load("localhost", UpstreamTrust::Ca(&empty), None).unwrap_err();
        assert!(e.contains("'--upstream-ca'"), "{e}");
    }

    #[test]
    fn keys_are_generated_checked_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", &ck.cert.pem());
        let key = write(dir.path(), "key.pem", &ck.signing_key.serialize_pem());
        assert!(ListenerTls::load(&cert, &key, None, Duration::from_secs(1)).is_ok());
        assert!(ListenerTls::load(&cert, &key, Some(&cert), Duration::from_secs(1)).is_ok());

        // A certificate where the key should be: no key in it.
        let e = ListenerTls::load(&cert, &cert, None, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("no private key"), "{e}");

        // Another key: it does not match the certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        let other_key = write(dir.path(), "other.pem", &other.serialize_pem());
        let e = ListenerTls::load(&cert, &other_key, None, Duration::from_secs(1)).unwrap_err();
        assert!(!e.contains("PRIVATE KEY-----"), "{e}");

        let tls =
            UpstreamTls::load("127.0.0.1", UpstreamTrust::Ca(&cert), Some((&cert, &key))).unwrap();
        assert!(!tls.insecure);
        assert!(
            UpstreamTls::load("::1", UpstreamTrust::Insecure, None)
                .unwrap()
                .insecure
        );
        assert!(UpstreamTls::load("bad host!", UpstreamTrust::Insecure, None).is_err());
    }
}
