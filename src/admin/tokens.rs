//! `meridian admin token`: the deployment's token key, and volume access tokens signed
//! with it (docs/adr/0016).
//!
//! `key` writes a new key file (0600; servers take it with `--token-key`, and whoever
//! issues tokens needs it too). `issue` prints a token naming volumes, each read-write or
//! read-only (`name:ro`), valid for a given time. `show` prints what a token says,
//! without checking it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use meridian_proto::token::{Grant, TokenKeys};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Write a new token key file (it must not exist).
    Key {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The key's id (1-32 of [A-Za-z0-9-_]), written into every token it signs.
        #[arg(long, default_value = "k1")]
        kid: String,
    },
    /// Print a token granting volumes, signed with the key file's first key.
    Issue {
        /// The key file (`token key`).
        #[arg(long)]
        key: PathBuf,
        /// Whom it is for (for logs and audits), e.g. a namespace/service account.
        #[arg(long)]
        subject: String,
        /// A volume it grants, as NAME (read-write) or NAME:ro (read-only); repeat for more.
        #[arg(long = "volume", required = true)]
        volumes: Vec<String>,
        /// How long it is valid: seconds, or with a unit (30m, 12h, 90d).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Print what a token says (without checking its signature).
    Show {
        /// The token.
        token: String,
    },
}

/// Seconds in `text`: a number with an optional unit s, m, h or d.
fn seconds(text: &str) -> Result<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--ttl {text:?}: a number with s, m, h or d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl {text:?}: the unit is s, m, h or d"),
    };
    let s = n.saturating_mul(per);
    anyhow::ensure!(s > 0, "--ttl must be more than zero");
    Ok(s)
}

fn grant(text: &str) -> Result<Grant> {
    let (name, write) = match text.strip_suffix(":ro") {
        Some(name) => (name, false),
        None => (text.strip_suffix(":rw").unwrap_or(text), true),
    };
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    anyhow::ensure!(
        valid,
        "--volume {text:?}: a volume name is 1-63 of [a-z0-9-_], optionally followed by :ro"
    );
    Ok(Grant {
        volume: name.to_string(),
        write,
    })
}

pub fn run(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Key { out, kid } => {
            let keys = TokenKeys::generate(&kid)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            super::certs::write(&out, keys.to_file().as_bytes(), 0o600)?;
            println!("wrote token key {kid:?} to {}", out.display());
        }
        TokenCommand::Issue {
            key,
            subject,
            volumes,
            ttl,
        } => {
            let keys = TokenKeys::load(&key)?;
            let grants = volumes
                .iter()
                .map(|v| grant(v))
                .collect::<Result<Vec<_>>>()?;
            let token = keys.issue(
                &subject,
                grants,
                meridian_proto::token::unix_now(),
                seconds(&ttl)?,
            )?;
            println!("{token}");
        }
        TokenCommand::Show { token } => {
            let claims = meridian_proto::token::decode(token.trim())?;
            println!("{}", serde_json::to_string_pretty(&claims)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_grants_parse() {
        assert_eq!(seconds("90").unwrap(), 90);
        assert_eq!(seconds("30m").unwrap(), 1800);
        assert_eq!(seconds("2d").unwrap(), 172_800);
        assert!(seconds("0").is_err() && seconds("5y").is_err() && seconds("h").is_err());
        assert!(grant("data").unwrap().write);
        assert!(!grant("data:ro").unwrap().write);
        assert!(grant("data:rw").unwrap().write);
        assert!(grant("Bad").is_err() && grant("").is_err() && grant(":ro").is_err());
    }
}
