//! TLS of the HTTP and gRPC listeners (rustls), with the certificate and key read again when
//! their files change, so that a renewed certificate is served without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A listener's TLS: the acceptor its connections go through, and the certificate it reloads.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert.cert_file)
            .finish()
    }
}

impl ServerTls {
    /// TLS with the PEM certificate chain of `cert_file` and the private key of `key_file`.
    /// Errors name the file and what is wrong with it (never the key's contents).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(&provider, cert_file, key_file)?;
        let cert = Arc::new(ReloadingCert {
            provider: provider.clone(),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(key)),
            stamp: RwLock::new(stamp(cert_file, key_file)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        // gRPC needs HTTP/2, which clients pick by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the certificate and key again if either file changed since they were last
    /// read. A pair that does not load is logged and the one being served kept.
    pub fn reload_if_changed(&self) -> bool {
        self.cert.reload_if_changed()
    }

    /// Looks for changed files every `every` until the runtime stops.
    pub fn watch(&self, every: Duration) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                tls.reload_if_changed();
            }
        });
    }
}

/// The modification times of the pair, to notice a renewal.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert_file), modified(key_file))
}

fn certified_key(
    provider: &CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("TLS certificate {}: {e}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS certificate {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {}: no PEM certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "TLS key {}: no PEM private key could be read: {e}",
            key_file.display()
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("TLS key {}: {e}", key_file.display()))?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match().map_err(|e| {
        format!(
            "TLS key {} does not belong to certificate {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(key)
}

struct ReloadingCert {
    provider: Arc<CryptoProvider>,
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Stamp>,
}

impl ReloadingCert {
    fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert_file, &self.key_file);
        if *self.stamp.read().unwrap_or_else(|e| e.into_inner()) == now {
            return false;
        }
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = now;
        match certified_key(&self.provider, &self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // A renewal may write the two files one after the other: the next look
                // finds the pair complete.
                tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
                *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = (None, None);
                false
            }
        }
    }
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}
