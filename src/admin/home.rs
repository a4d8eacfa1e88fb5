//! `meridian admin volume-consistency` and `volume-promote`: a volume's home region, moved
//! as planned or taken over when the old home is gone (issue 17, ADR 0011).

use std::io::{BufRead, Write};

use anyhow::{Result, bail};
use meridian_client::MetaClient;
use meridian_proto::RegionId;
use meridian_proto::ns::{Op, Query, QueryReply, Reply, Volume};
use meridian_proto::pb::meta::RegionStatusRequest;

async fn volume(client: &MetaClient, name: &str) -> Result<Volume> {
    let QueryReply::Volumes(vols) = client.query(&Query::Volumes, false).await? else {
        bail!("unexpected reply");
    };
    vols.into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| anyhow::anyhow!("no volume {name:?} in this region"))
}

fn consistency(home: Option<RegionId>) -> String {
    match home {
        Some(h) => format!("home={}", h.0),
        None => "active-active".into(),
    }
}

/// A planned change of volume `name`'s home (none: active-active), made by its current
/// home (the change is forwarded there from any region).
pub async fn set_home(meta: Vec<String>, name: String, home: Option<u16>) -> Result<()> {
    let client = MetaClient::new(meta);
    let before = volume(&client, &name).await?;
    let home = home.map(RegionId);
    if before.policy.home == home {
        println!("volume {name} is {} already", consistency(home));
        return Ok(());
    }
    let reply = client
        .mutate(&Op::SetVolumeHome {
            name: name.clone(),
            home,
            force: false,
        })
        .await?;
    if let Reply::Volume(v) = reply {
        println!(
            "volume {name}: {} -> {} (epoch {})",
            consistency(before.policy.home),
            consistency(v.policy.home),
            v.policy.epoch
        );
    }
    Ok(())
}

/// Makes region `to` volume `name`'s home. Planned, the current home makes the change;
/// forced (`force`), region `to` (whose metaservers `meta` must be) takes over without
/// it, after showing what it may lack and asking (unless `yes`).
pub async fn promote(
    meta: Vec<String>,
    name: String,
    to: u16,
    force: bool,
    yes: bool,
) -> Result<()> {
    if !force {
        return set_home(meta, name, Some(to)).await;
    }
    let client = MetaClient::new(meta.clone());
    let vol = volume(&client, &name).await?;
    let Some(old) = vol.policy.home else {
        bail!("volume {name:?} is active-active: there is no home to take over from");
    };
    if old.0 == to {
        println!("region {to} is volume {name}'s home already");
        return Ok(());
    }
    let mut status = None;
    for addr in &meta {
        if let Ok(mut c) = super::meta_rpc(addr).await
            && let Ok(s) = c.region_status(RegionStatusRequest {}).await
        {
            status = Some(s.into_inner());
            break;
        }
    }
    let Some(status) = status else {
        bail!("cannot reach the metaservers {meta:?}");
    };
    if status.region != u32::from(to) {
        bail!(
            "a forced promote is made by the region it promotes: these metaservers are region {}'s, not region {to}'s",
            status.region
        );
    }
    println!(
        "Volume {name}'s home is region {} (epoch {}). Region {to} takes over WITHOUT it:",
        old.0, vol.policy.epoch
    );
    match status.peers.iter().find(|p| p.region == u32::from(old.0)) {
        Some(p) => {
            let missing = p.peer_head_seq.saturating_sub(p.applied_seq);
            println!(
                "  region {to} has applied region {}'s change log up to {}; when last heard from ({}), it had {} ({} changes, of every volume, not here yet);",
                old.0,
                p.applied_seq,
                if p.last_contact_ms == 0 {
                    "never".to_string()
                } else {
                    format!("{:.1} s ago", p.last_contact_ms as f64 / 1000.0)
                },
                p.peer_head_seq,
                missing
            );
            println!(
                "  whatever region {} accepted since then is not known here.",
                old.0
            );
        }
        None => println!("  region {to} has no news of region {} at all.", old.0),
    }
    println!(
        "Changes region {} accepted and region {to} lacks are kept apart, not applied, when they arrive: listed by `admin conflicts` (kind fenced), with the bytes of writes kept in fenced-* files in the volume's root.",
        old.0
    );
    if !yes {
        print!("Type the volume's name to go on: ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != name {
            bail!("not confirmed: nothing changed");
        }
    }
    let reply = client
        .mutate(&Op::SetVolumeHome {
            name: name.clone(),
            home: Some(RegionId(to)),
            force: true,
        })
        .await?;
    if let Reply::Volume(v) = reply {
        println!(
            "volume {name}: home is region {to} now (epoch {})",
            v.policy.epoch
        );
    }
    Ok(())
}
