//! `meridian admin volume-*`, `volumes` and `snapshots`: making, copying, deleting and
//! listing volumes.

use anyhow::Result;
use meridian_client::MetaClient;
use meridian_proto::ns::{Op, Query, QueryReply, Reply, VolumePolicy};

use super::human;

pub async fn create(meta: Vec<String>, name: String, policy: VolumePolicy) -> Result<()> {
    let reply = MetaClient::new(meta)
        .mutate(&Op::CreateVolume { name, policy })
        .await?;
    if let Reply::Volume(v) = reply {
        println!("created volume {} (id {}, root {})", v.name, v.id, v.root);
    }
    Ok(())
}

pub async fn delete(meta: Vec<String>, name: String) -> Result<()> {
    MetaClient::new(meta)
        .mutate(&Op::DeleteVolume { name: name.clone() })
        .await?;
    println!("deleted volume {name}");
    Ok(())
}

/// A snapshot (`read_only`) or a writable copy of `source`.
pub async fn copy(meta: Vec<String>, source: String, name: String, read_only: bool) -> Result<()> {
    let reply = MetaClient::new(meta)
        .mutate(&Op::CloneVolume {
            source: source.clone(),
            name,
            read_only,
        })
        .await?;
    if let Reply::Volume(v) = reply {
        println!(
            "{} {} of {source} (id {}, {} inodes, {})",
            if read_only { "snapshot" } else { "volume" },
            v.name,
            v.id,
            v.used_inodes,
            human(v.used_bytes)
        );
    }
    Ok(())
}

/// The snapshots (`snapshots`), or the volumes that are not snapshots.
pub async fn list(meta: Vec<String>, json: bool, snapshots: bool) -> Result<()> {
    let QueryReply::Volumes(vols) = MetaClient::new(meta).query(&Query::Volumes, false).await?
    else {
        anyhow::bail!("unexpected reply");
    };
    let vols: Vec<_> = vols
        .into_iter()
        .filter(|v| v.read_only == snapshots)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&vols)?);
    } else if snapshots {
        println!("{:<24} {:<24} {:>10} {:>8}", "NAME", "OF", "USED", "INODES");
        for v in vols {
            println!(
                "{:<24} {:<24} {:>10} {:>8}",
                v.name,
                v.origin.as_deref().unwrap_or("-"),
                human(v.used_bytes),
                v.used_inodes
            );
        }
    } else {
        println!(
            "{:<20} {:>4} {:>8} {:>10} {:>8}",
            "NAME", "ID", "REPLICAS", "USED", "INODES"
        );
        for v in vols {
            println!(
                "{:<20} {:>4} {:>8} {:>10} {:>8}",
                v.name,
                v.id,
                v.policy.replicas,
                human(v.used_bytes),
                v.used_inodes
            );
        }
    }
    Ok(())
}
