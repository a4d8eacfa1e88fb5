//! This process's TLS identity: the deployment's CA certificate, and the process's own
//! certificate and key, read from one folder (`meridian admin certs issue` writes it; a
//! process takes it with `--tls DIR`). Once installed, every channel and server the
//! process builds through [`crate::channels`] speaks mutual TLS: servers ask for a client
//! certificate signed by the CA, clients check the server's against the same CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The deployment CA's certificate, in every issued folder.
pub const CA_FILE: &str = "ca.pem";
/// The process's own certificate.
pub const CERT_FILE: &str = "cert.pem";
/// The process's own private key.
pub const KEY_FILE: &str = "key.pem";
/// The DNS name every server certificate carries and every client verifies: servers are
/// reached by address (often an IP, often behind a Service), so the name is fixed, and the
/// CA is what makes a server one of the deployment's.
pub const SERVER_NAME: &str = "meridian";

/// The PEM files of one TLS folder.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    /// Where they were read from.
    pub dir: PathBuf,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl TlsIdentity {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`, each checked to be PEM.
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
        Ok(TlsIdentity {
            dir: dir.to_path_buf(),
            ca: read(CA_FILE)?,
            cert: read(CERT_FILE)?,
            key: read(KEY_FILE)?,
        })
    }

    /// The client side: present our certificate, trust only the deployment CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(SERVER_NAME)
    }

    /// The server side: present our certificate, require a client certificate signed by
    /// the deployment CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }
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
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
        tonic::Status::unauthenticated(format!("unreadable client certificate: {e}"))
    })?;
    let names = |role: &str| {
        rustls_pki_types::ServerName::try_from(format!("role-{role}.{SERVER_NAME}"))
            .map(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
            .unwrap_or(false)
    };
    if roles.iter().any(|r| names(r)) {
        return Ok(());
    }
    let theirs = [META, CHUNK, CLIENT, ADMIN]
        .into_iter()
        .find(|r| names(r))
        .unwrap_or("none");
    Err(tonic::Status::permission_denied(format!(
        "this call is for {} certificates; the caller's names role {theirs}",
        roles.join(" or ")
    )))
}

static CURRENT: RwLock<Option<Arc<TlsIdentity>>> = RwLock::new(None);

/// Makes `identity` the one every channel and server built from now on uses.
pub fn install(identity: TlsIdentity) {
    *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(identity));
}

/// The installed identity; `None`: this process speaks plaintext.
pub fn current() -> Option<Arc<TlsIdentity>> {
    CURRENT.read().unwrap_or_else(|p| p.into_inner()).clone()
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
