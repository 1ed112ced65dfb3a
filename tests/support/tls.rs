//! TLS for tests: a throwaway PKI made with rcgen (a CA, server and client
//! certificates as PEM files), rustls client configurations trusting it,
//! and a minimal RESP client over TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{encode_command, parse_reply, Reply};

/// A CA, a server certificate (for 127.0.0.1 and localhost) and a client
/// certificate signed by it, plus an unrelated CA; all as PEM files.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("respool-tls-")
            .tempdir()
            .expect("temp dir");
        let ca = new_ca("respool test CA");
        let other = new_ca("some other CA");

        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        server.distinguished_name.push(DnType::CommonName, "redis");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server.signed_by(&server_key, &ca.1).expect("server cert");

        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client.distinguished_name.push(DnType::CommonName, "client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client.signed_by(&client_key, &ca.1).expect("client cert");

        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("writing a PEM file")
        };
        write("ca.pem", ca.0);
        write("other-ca.pem", other.0);
        write("server.pem", server_cert.pem());
        write("server.key", server_key.serialize_pem());
        write("client.pem", client_cert.pem());
        write("client.key", client_key.serialize_pem());
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A self-signed CA: its PEM and the issuer that signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA cert");
    (cert.pem(), Issuer::new(params, key))
}

/// A rustls client configuration trusting the CA in `ca`, presenting the
/// certificate and key in `cert` if given.
pub fn client_config(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("adding the CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert file")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A minimal RESP client over TLS.
pub struct TlsClient {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: BytesMut,
}

impl TlsClient {
    pub async fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: Option<(&Path, &Path)>,
    ) -> std::io::Result<TlsClient> {
        let config = client_config(ca, cert);
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let stream = connector.connect(name, tcp).await?;
        Ok(TlsClient {
            stream,
            buf: BytesMut::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn read_reply(&mut self) -> Result<Reply, String> {
        let read = async {
            loop {
                if let Some((reply, used)) = parse_reply(&self.buf)? {
                    self.buf.advance(used);
                    return Ok(reply);
                }
                self.buf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return Err("connection closed".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| "no reply within 10s".to_string())?
    }

    /// Ends the TLS session (close_notify) and the sending side.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }

    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, String> {
        self.send_raw(&encode_command(args))
            .await
            .map_err(|e| e.to_string())?;
        self.read_reply().await
    }
}
