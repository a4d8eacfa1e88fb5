//! `meridian admin link`: show or change a link through a fault proxy (tests and
//! benchmarks: delay, cut, heal).

use anyhow::{Context, Result};

use super::human;

pub async fn set(
    proxy: String,
    delay_ms: Option<u32>,
    cut: bool,
    heal: bool,
    json: bool,
) -> Result<()> {
    use meridian_proto::pb::proxy::SetLinkRequest;
    use meridian_proto::pb::proxy::proxy_control_client::ProxyControlClient;
    let mut c = ProxyControlClient::connect(format!("http://{proxy}"))
        .await
        .with_context(|| format!("cannot reach proxy {proxy}"))?;
    let cut = if cut {
        Some(true)
    } else if heal {
        Some(false)
    } else {
        None
    };
    let s = c.set(SetLinkRequest { delay_ms, cut }).await?.into_inner();
    let forwards: Vec<serde_json::Value> = s
        .forwards
        .iter()
        .map(|f| serde_json::json!({"listen": f.listen, "target": f.target}))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"name": s.name, "listen": s.listen, "target": s.target,
                "forwards": forwards, "delay_ms": s.delay_ms, "cut": s.cut,
                "connections_total": s.connections_total, "connections_open": s.connections_open, "bytes_forwarded": s.bytes_forwarded})
        );
    } else {
        println!(
            "link {}: {}, delay {} ms, {} open connections ({} total), {} forwarded",
            s.name,
            if s.cut { "CUT" } else { "up" },
            s.delay_ms,
            s.connections_open,
            s.connections_total,
            human(s.bytes_forwarded)
        );
        for f in &s.forwards {
            println!("  {} -> {}", f.listen, f.target);
        }
    }
    Ok(())
}
