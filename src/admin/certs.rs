//! `meridian admin certs`: a deployment's CA and the certificates of its processes.
//!
//! `init` makes the CA (`ca.pem`, `ca.key`: keep the key off the servers). `issue` writes a
//! folder a process takes with `--tls DIR`: the CA's certificate, and a new key and
//! certificate naming the process (node name, role, region) as DNS names:
//! `meridian` (what every client verifies a server by), `role-<role>.meridian`,
//! `region-<n>.meridian` and `node-<name>.meridian`. Client and admin certificates can only
//! authenticate clients; metaserver and chunkserver certificates serve and call.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use meridian_proto::tls::{CA_FILE, CERT_FILE, KEY_FILE, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The CA's private key, beside its certificate in the CA folder.
const CA_KEY_FILE: &str = "ca.key";

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a deployment CA in a new folder (ca.pem, and ca.key: keep it safe).
    Init {
        /// The folder to create.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the CA into a folder for `--tls`.
    Issue {
        /// The CA folder (`certs init`).
        #[arg(long)]
        ca: std::path::PathBuf,
        /// The folder to write (ca.pem, cert.pem, key.pem).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The process's name (letters, digits and '-'), e.g. meta-1 or mount-web-3.
        #[arg(long)]
        name: String,
        /// What the process is.
        #[arg(long, value_enum)]
        role: Role,
        /// The region it belongs to.
        #[arg(long, default_value_t = 1)]
        region: u16,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Print the fingerprint of certificates (cert.pem files), as a `revoked` file in a
    /// TLS folder lists them: servers refuse a revoked certificate's connections and
    /// requests once they reload the folder.
    Fingerprint {
        /// Certificate files (PEM; the first certificate of each).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

/// The role a certificate names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// A metaserver (Raft member, region-to-region replication).
    Meta,
    /// A chunkserver.
    Chunk,
    /// A mount or CSI driver.
    Client,
    /// An operator's `meridian admin`.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Chunk => "chunk",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }
}

pub fn run(cmd: CertsCommand) -> Result<()> {
    match cmd {
        CertsCommand::Fingerprint { files } => {
            for f in files {
                let pem = fs::read(&f).with_context(|| format!("{}", f.display()))?;
                let fp = meridian_proto::tls::fingerprint_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                println!("{}  # {}", blake3::Hash::from(fp).to_hex(), f.display());
            }
        }
        CertsCommand::Init { dir, days } => {
            new_folder(&dir)?;
            let key = KeyPair::generate()?;
            let cert = ca_params(days)?.self_signed(&key)?;
            write(&dir.join(CA_FILE), cert.pem().as_bytes(), 0o644)?;
            write(
                &dir.join(CA_KEY_FILE),
                key.serialize_pem().as_bytes(),
                0o600,
            )?;
            println!(
                "CA created in {}: {CA_FILE} goes to every process, {CA_KEY_FILE} stays here",
                dir.display()
            );
        }
        CertsCommand::Issue {
            ca,
            out,
            name,
            role,
            region,
            days,
        } => {
            check_name(&name)?;
            let ca_pem = fs::read_to_string(ca.join(CA_FILE))
                .with_context(|| format!("CA folder {}", ca.display()))?;
            let ca_key = fs::read_to_string(ca.join(CA_KEY_FILE))
                .with_context(|| format!("CA folder {}", ca.display()))?;
            let issuer = Issuer::new(ca_params(days)?, KeyPair::from_pem(&ca_key)?);
            let mut params = CertificateParams::new(vec![
                SERVER_NAME.to_string(),
                format!("role-{}.{SERVER_NAME}", role.name()),
                format!("region-{region}.{SERVER_NAME}"),
                format!("node-{name}.{SERVER_NAME}"),
            ])?;
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, name.as_str());
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, role.name());
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = match role {
                Role::Meta | Role::Chunk => vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
                Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
            };
            params.use_authority_key_identifier_extension = true;
            validity(&mut params, days)?;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            new_folder(&out)?;
            write(&out.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
            write(&out.join(CERT_FILE), cert.pem().as_bytes(), 0o644)?;
            write(&out.join(KEY_FILE), key.serialize_pem().as_bytes(), 0o600)?;
            println!(
                "{} certificate for {name} (region {region}) in {}: run the process with --tls {}",
                role.name(),
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// The CA's parameters: the same on every call, so that `issue` signs as the CA `init` made.
fn ca_params(days: u32) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "Meridian deployment CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, days)?;
    Ok(p)
}

/// From a day ago (clocks differ) to `days` from now.
fn validity(p: &mut CertificateParams, days: u32) -> Result<()> {
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        || name.starts_with('-')
    {
        bail!("--name {name:?}: 1 to 63 letters, digits and '-', not starting with '-'");
    }
    Ok(())
}

/// Creates `dir`, which must not exist yet (nothing is overwritten).
fn new_folder(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))?;
    fs::create_dir(dir).with_context(|| format!("{}: must be a new folder", dir.display()))
}

pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
