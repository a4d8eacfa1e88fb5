//! `meridian admin volume-*`, `volumes` and `snapshots`: making, copying, deleting and
//! listing volumes.

use anyhow::Result;
use meridian_client::MetaClient;
use meridian_proto::RegionId;
use meridian_proto::ns::{Op, Query, QueryReply, Reply, VolumePolicy};
use meridian_proto::pb::meta::RegionStatusRequest;

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
        println!(
            "{:<24} {:<24} {:>10} {:>8}  STATE",
            "NAME", "OF", "USED", "INODES"
        );
        for v in vols {
            let state = match &v.copying {
                Some(c) => format!("copying ({} of {} inodes)", c.copied, c.inodes),
                None => "ready".to_string(),
            };
            println!(
                "{:<24} {:<24} {:>10} {:>8}  {state}",
                v.name,
                v.origin.as_deref().unwrap_or("-"),
                human(v.used_bytes),
                v.used_inodes
            );
        }
    } else {
        println!(
            "{:<20} {:>4} {:>8} {:>10} {:>8}  {:<14} REGIONS",
            "NAME", "ID", "REPLICAS", "USED", "INODES", "CONSISTENCY"
        );
        for v in vols {
            let regions = if v.policy.regions.is_empty() {
                format!("{} only", v.id >> 16)
            } else {
                let ids: Vec<String> = v.policy.regions.iter().map(|r| r.0.to_string()).collect();
                ids.join(",")
            };
            let consistency = match v.policy.home {
                Some(h) => format!("home={}", h.0),
                None => "active-active".to_string(),
            };
            println!(
                "{:<20} {:>4} {:>8} {:>10} {:>8}  {:<14} {}",
                v.name,
                v.id,
                v.policy.replicas,
                human(v.used_bytes),
                v.used_inodes,
                consistency,
                regions
            );
        }
    }
    Ok(())
}

/// Adds `region` to the regions of volume `name` (`add`), or removes it. With `follow`
/// (the added region's metaservers), waits until the volume is there, showing progress.
pub async fn set_regions(
    meta: Vec<String>,
    name: String,
    region: u16,
    add: bool,
    follow: Vec<String>,
) -> Result<()> {
    let client = MetaClient::new(meta);
    let QueryReply::Volumes(vols) = client.query(&Query::Volumes, false).await? else {
        anyhow::bail!("unexpected reply");
    };
    let vol = vols
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| anyhow::anyhow!("no volume {name:?} in this region"))?;
    let mut regions = vol.policy.regions.clone();
    if regions.is_empty() {
        regions.push(RegionId((vol.id >> 16) as u16));
    }
    let r = RegionId(region);
    if add == regions.contains(&r) {
        println!(
            "volume {name} {} region {region} already",
            if add { "lives in" } else { "does not live in" }
        );
    } else {
        if add {
            regions.push(r);
        } else {
            regions.retain(|x| *x != r);
        }
        regions.sort();
        client
            .mutate(&Op::SetVolumeRegions {
                name: name.clone(),
                regions: regions.clone(),
            })
            .await?;
        let ids: Vec<String> = regions.iter().map(|r| r.0.to_string()).collect();
        println!("volume {name} now lives in regions {}", ids.join(","));
    }
    if !add || follow.is_empty() {
        if add {
            println!(
                "region {region} is brought in from this one: follow it with `meridian admin regions --meta <its metaservers>`"
            );
        }
        return Ok(());
    }
    follow_backfill(&follow, vol.id, region).await
}

/// Shows the backfill of volume `id` in the region whose metaservers are `meta` until it
/// is done.
async fn follow_backfill(meta: &[String], id: u32, region: u16) -> Result<()> {
    let mut last = String::new();
    loop {
        let mut row = None;
        for addr in meta {
            if let Ok(mut c) = super::meta_rpc(addr).await
                && let Ok(r) = c.region_status(RegionStatusRequest {}).await
            {
                row = Some(
                    r.into_inner()
                        .backfills
                        .into_iter()
                        .find(|b| b.volume == id),
                );
                break;
            }
        }
        let line = match &row {
            None => "the region does not answer".to_string(),
            Some(None) => "waiting for the region to learn of the change".to_string(),
            Some(Some(b)) => super::regions::backfill_progress(b),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if matches!(&row, Some(Some(b)) if b.state == "done") {
            println!("the volume and every block of it are in region {}", region);
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
