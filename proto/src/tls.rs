//! This process's TLS identity: the deployment's CA certificate, and the process's own
//! certificate and key, read from one folder (`meridian admin certs issue` writes it; a
//! process takes it with `--tls DIR`). Once installed, every channel and server the
//! process builds through [`crate::channels`] speaks mutual TLS: servers ask for a client
//! certificate signed by the CA, clients check the server's against the same CA. The
//! folder is read again on SIGHUP or when its files change ([`watch`]): new connections
//! use the new identity, connections already made keep theirs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The deployment CA's certificate, in every issued folder.
pub const CA_FILE: &str = "ca.pem";
/// The process's own certificate.
pub const CERT_FILE: &str = "cert.pem";
/// The process's own private key.
pub const KEY_FILE: &str = "key.pem";
/// Certificates no longer accepted (optional): one fingerprint per line, as `meridian
/// admin certs fingerprint` prints it; `#` starts a comment.
pub const REVOKED_FILE: &str = "revoked";
/// The DNS name every server certificate carries and every client verifies: servers are
/// reached by address (often an IP, often behind a Service), so the name is fixed, and the
/// CA is what makes a server one of the deployment's.
pub const SERVER_NAME: &str = "meridian";

/// The PEM files of one TLS folder, checked and ready for both sides of a connection.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Where they were read from.
    pub dir: PathBuf,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The range port's sides ([`crate::port_conn`]): the same certificates, its ALPN.
    port_server: Arc<rustls::ServerConfig>,
    port_client: Arc<rustls::ClientConfig>,
    revoked: std::collections::HashSet<[u8; 32]>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("dir", &self.dir)
            .finish()
    }
}

impl TlsIdentity {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`: PEM, a certificate chain and
    /// a private key that rustls takes, and a CA it can verify clients against.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("TLS folder {}: {name}: {e}", dir.display()))?;
            if !bytes.starts_with(b"-----BEGIN ") {
                return Err(format!("{}: not a PEM file", path.display()));
            }
            Ok(bytes)
        };
        let (ca, cert, key) = (read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?);
        let bad =
            |name: &str, e: &dyn std::fmt::Display| format!("{}: {e}", dir.join(name).display());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(c.map_err(|e| bad(CA_FILE, &e))?)
                .map_err(|e| bad(CA_FILE, &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone().into(),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(CA_FILE, &e))?;
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(CERT_FILE, &e))?;
        let private = PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad(KEY_FILE, &e))?;
        let mut port_client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), private.clone_key())
            .map_err(|e| bad(CERT_FILE, &e))?;
        port_client.alpn_protocols = vec![crate::port_conn::ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private)
            .map_err(|e| bad(CERT_FILE, &e))?;
        let mut port_server = server.clone();
        port_server.alpn_protocols = vec![crate::port_conn::ALPN.to_vec()];
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsIdentity {
            dir: dir.to_path_buf(),
            ca,
            cert,
            key,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            port_server: Arc::new(port_server),
            port_client: Arc::new(port_client),
            revoked: revoked_in(dir)?,
        })
    }

    /// Whether the certificate of fingerprint `fp` is listed as revoked.
    pub fn revokes(&self, fp: &[u8; 32]) -> bool {
        self.revoked.contains(fp)
    }

    /// The client side: present our certificate, trust only the deployment CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(SERVER_NAME)
    }

    /// The server side: present our certificate, require a client certificate signed by
    /// the deployment CA (see [`crate::tls_incoming`]).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// The range port's server side: as [`acceptor`](Self::acceptor)'s, under the port's
    /// ALPN.
    pub fn port_server(&self) -> Arc<rustls::ServerConfig> {
        self.port_server.clone()
    }

    /// The range port's client side: our certificate presented, the server's checked
    /// against the deployment CA for [`SERVER_NAME`], under the port's ALPN.
    pub fn port_client(&self) -> Arc<rustls::ClientConfig> {
        self.port_client.clone()
    }
}

/// A certificate's fingerprint: the BLAKE3 hash of its DER encoding.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    *blake3::hash(cert).as_bytes()
}

/// The fingerprint of the first certificate of a PEM file's bytes.
pub fn fingerprint_pem(pem: &[u8]) -> Result<[u8; 32], String> {
    let cert = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no certificate in it")?
        .map_err(|e| e.to_string())?;
    Ok(fingerprint(&cert))
}

/// The fingerprints listed in `dir`'s revoked file (none if it has none).
fn revoked_in(dir: &Path) -> Result<std::collections::HashSet<[u8; 32]>, String> {
    let path = dir.join(REVOKED_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut out = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fp = [0u8; 32];
        hex::decode_to_slice(line, &mut fp).map_err(|_| {
            format!(
                "{} line {}: not a fingerprint (64 hex digits, from `meridian admin certs fingerprint`)",
                path.display(),
                n + 1
            )
        })?;
        out.insert(fp);
    }
    Ok(out)
}

/// Whether this process's identity lists the certificate of fingerprint `fp` as revoked.
pub fn is_revoked(fp: &[u8; 32]) -> bool {
    current().is_some_and(|id| id.revokes(fp))
}

/// The role of a metaserver: Raft member, replicator between regions.
pub const META: &str = "meta";
/// The role of a chunkserver.
pub const CHUNK: &str = "chunk";
/// The role of a mount or the CSI driver.
pub const CLIENT: &str = "client";
/// The role of an operator's admin CLI.
pub const ADMIN: &str = "admin";

/// Refuses `request` unless the caller's certificate names one of `roles` (as the DNS name
/// `role-<role>.meridian`, which only the deployment's CA can have signed: the TLS
/// handshake already checked the chain). A process without TLS checks nothing: a
/// plaintext deployment has no identities to check.
pub fn require_role<T>(request: &tonic::Request<T>, roles: &[&str]) -> Result<(), tonic::Status> {
    if current().is_none() {
        return Ok(());
    }
    let certs = request
        .extensions()
        .get::<crate::tls_incoming::ConnInfo>()
        .and_then(|c| c.peer_certs.clone())
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let roles_of = self::roles(leaf).map_err(|e| {
        tonic::Status::unauthenticated(format!("unreadable client certificate: {e}"))
    })?;
    if roles.iter().any(|r| roles_of.contains(r)) {
        return Ok(());
    }
    Err(tonic::Status::permission_denied(format!(
        "this call is for {} certificates; the caller's names role {}",
        roles.join(" or "),
        roles_of.first().copied().unwrap_or("none")
    )))
}

/// Whether `roles` name one of the deployment's servers (a metaserver or a chunkserver):
/// not counted against clients' fair shares, and the only ones that store replicas.
pub fn names_server(roles: &[&str]) -> bool {
    roles.iter().any(|r| [META, CHUNK].contains(r))
}

/// Whether `roles` may act without a volume access token where tokens are checked: a
/// server's or an operator's.
pub fn names_tokenless(roles: &[&str]) -> bool {
    roles.iter().any(|r| [META, CHUNK, ADMIN].contains(r))
}

/// The roles (of [`META`], [`CHUNK`], [`CLIENT`], [`ADMIN`]) a certificate names.
pub fn roles(cert: &CertificateDer<'_>) -> Result<Vec<&'static str>, String> {
    let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    Ok([META, CHUNK, CLIENT, ADMIN]
        .into_iter()
        .filter(|role| {
            rustls_pki_types::ServerName::try_from(format!("role-{role}.{SERVER_NAME}"))
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .collect())
}

static CURRENT: RwLock<Option<Arc<TlsIdentity>>> = RwLock::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Makes `identity` the one every channel and server built from now on uses.
pub fn install(identity: TlsIdentity) {
    *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(identity));
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The installed identity; `None`: this process speaks plaintext.
pub fn current() -> Option<Arc<TlsIdentity>> {
    CURRENT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// How many identities have been installed: channels made under an older one are
/// replaced when next used.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Reads the installed identity's folder again on SIGHUP, and when its files change
/// (checked every `every`): a rotated certificate is taken without a restart. A folder
/// that does not load (a rotation half done) is reported and the identity kept.
pub fn watch(every: Duration) {
    let Some(dir) = current().map(|t| t.dir.clone()) else {
        return;
    };
    let files = [CA_FILE, CERT_FILE, KEY_FILE, REVOKED_FILE]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    crate::reload::watch(files, every, "TLS: certificates", move || {
        TlsIdentity::load(&dir).map(install)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_pem_files_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = TlsIdentity::load(dir.path()).unwrap_err();
        assert!(e.contains("ca.pem"), "{e}");
        for f in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::write(dir.path().join(f), b"-----BEGIN X-----\n").unwrap();
        }
        std::fs::write(dir.path().join(KEY_FILE), b"not pem").unwrap();
        let e = TlsIdentity::load(dir.path()).unwrap_err();
        assert!(e.contains("key.pem: not a PEM file"), "{e}");
    }
}
