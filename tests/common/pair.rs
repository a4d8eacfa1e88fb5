//! Two regions as real processes (three metaservers and three chunkservers each), with a
//! fault proxy on every link between them (metadata and blocks).

use std::time::Duration;

use anyhow::Result;

use super::{MetaCluster, Mount, Proxy, ServerProc, free_addr, start_chunkservers_at, wait_for};

/// One region: its metaservers, chunkservers, and the proxies its peer reaches it through.
pub struct Side {
    pub meta: MetaCluster,
    pub chunks: Vec<ServerProc>,
}

impl Side {
    pub fn addrs(&self) -> String {
        self.meta.addrs().join(",")
    }

    pub fn mount(&self, volume: &str, name: &str) -> Result<Mount> {
        Mount::start(&self.addrs(), volume, &self.meta.dir.path().join(name))
    }

    /// [`Side::mount`], with more `meridian mount` flags.
    pub fn mount_with(&self, volume: &str, name: &str, flags: &[&str]) -> Result<Mount> {
        Mount::start_with(
            &self.addrs(),
            volume,
            &self.meta.dir.path().join(name),
            flags,
        )
    }

    pub fn admin(&self, args: &[&str]) -> Result<String> {
        super::admin_at(&self.addrs(), args)
    }

    pub fn kill(&mut self) {
        for c in &mut self.chunks {
            c.kill();
        }
        for m in &mut self.meta.nodes {
            m.kill();
        }
    }
}

/// Regions 1 and 2, each reaching the other's metaservers through one fault proxy per
/// direction, and its chunkservers through another.
pub struct Pair {
    pub a: Side,
    pub b: Side,
    /// The proxy region 2 reaches region 1's metaservers through, and the one region 1
    /// reaches 2's through.
    pub to_a: Proxy,
    pub to_b: Proxy,
    /// The same for chunkservers.
    pub to_a_chunks: Proxy,
    pub to_b_chunks: Proxy,
}

impl Pair {
    pub fn start() -> Result<Pair> {
        Self::start_with(&[])
    }

    /// As `start`, with more flags for every chunkserver.
    pub fn start_with(chunk_flags: &[&str]) -> Result<Pair> {
        Self::start_full(&[], &[], chunk_flags)
    }

    /// As `start`, with more flags for region 1's and region 2's metaservers and for every
    /// chunkserver. Ports region 2 is reached through are picked before anything binds
    /// them; if one was taken meanwhile (a parallel test's server), the whole pair starts
    /// again on fresh ports, once.
    pub fn start_full(meta_a: &[&str], meta_b: &[&str], chunk_flags: &[&str]) -> Result<Pair> {
        match Self::try_start(meta_a, meta_b, chunk_flags) {
            Ok(pair) => Ok(pair),
            Err(first) => {
                eprintln!("starting the pair failed ({first:#}); once more on fresh ports");
                Self::try_start(meta_a, meta_b, chunk_flags)
            }
        }
    }

    fn try_start(meta_a: &[&str], meta_b: &[&str], chunk_flags: &[&str]) -> Result<Pair> {
        // Region 2 is not running yet: reserve its chunkservers' ports and the proxy ports
        // region 1 reaches it through, and start that proxy once region 2 is up.
        let ports = |n: usize| (0..n).map(|_| free_addr()).collect::<Result<Vec<_>>>();
        let (b_chunks, via_b_meta, via_b_chunk) = (ports(3)?, ports(3)?, ports(3)?);
        let routes_to_b: Vec<(String, String)> = b_chunks
            .iter()
            .cloned()
            .zip(via_b_chunk.iter().cloned())
            .collect();
        let a = start_side(
            1,
            &via_b_meta.join(","),
            &routes_to_b,
            &[],
            meta_a,
            chunk_flags,
        )?;
        let any_port = |targets: &[String]| -> Vec<(String, String)> {
            targets
                .iter()
                .map(|t| ("127.0.0.1:0".to_string(), t.clone()))
                .collect()
        };
        let a_chunks: Vec<String> = a.chunks.iter().map(|c| c.addr.clone()).collect();
        let dir = a.meta.dir.path();
        let to_a = Proxy::start_forwards(dir, "to-a", &any_port(&a.meta.addrs()))?;
        let to_a_chunks = Proxy::start_forwards(dir, "to-a-chunks", &any_port(&a_chunks))?;
        let routes_to_a: Vec<(String, String)> = a_chunks
            .into_iter()
            .zip(to_a_chunks.forwards.iter().cloned())
            .collect();
        let b = start_side(
            2,
            &to_a.forwards.join(","),
            &routes_to_a,
            &b_chunks,
            meta_b,
            chunk_flags,
        )?;
        let pairs = |via: Vec<String>, to: Vec<String>| -> Vec<(String, String)> {
            via.into_iter().zip(to).collect()
        };
        let dir = b.meta.dir.path();
        let to_b = Proxy::start_forwards(dir, "to-b", &pairs(via_b_meta, b.meta.addrs()))?;
        let to_b_chunks = Proxy::start_forwards(dir, "to-b-chunks", &pairs(via_b_chunk, b_chunks))?;
        Ok(Pair {
            a,
            b,
            to_a,
            to_b,
            to_a_chunks,
            to_b_chunks,
        })
    }

    /// Creates volume `name` living in both regions, and waits until region 2 has it.
    pub fn shared_volume(&self, name: &str) -> Result<()> {
        self.a.admin(&["volume-create", name, "--regions", "1,2"])?;
        wait_for(Duration::from_secs(30), "the volume in region 2", || {
            self.b
                .admin(&["volumes"])
                .ok()?
                .contains(name)
                .then_some(())
        })
    }

    pub fn cut(&self, cut: bool) -> Result<()> {
        self.cut_metadata(cut)?;
        self.to_a_chunks.set_cut(cut)?;
        self.to_b_chunks.set_cut(cut)
    }

    /// Delays every link between the regions by `ms` each way.
    pub fn delay(&self, ms: u32) -> Result<()> {
        for p in [&self.to_a, &self.to_b, &self.to_a_chunks, &self.to_b_chunks] {
            p.set_delay(ms)?;
        }
        Ok(())
    }

    /// Cuts or heals only the links between the regions' metaservers: blocks still ship.
    pub fn cut_metadata(&self, cut: bool) -> Result<()> {
        self.to_a.set_cut(cut)?;
        self.to_b.set_cut(cut)
    }
}

/// One region, reaching the other's metaservers at `peer` and its chunkservers through
/// `routes`; its chunkservers listen on `listen` when given.
fn start_side(
    region: u16,
    peer: &str,
    routes: &[(String, String)],
    listen: &[String],
    meta_flags: &[&str],
    chunk_flags: &[&str],
) -> Result<Side> {
    let peer_flag = format!("{}={peer}", if region == 1 { 2 } else { 1 });
    let region_s = region.to_string();
    let mut flags = vec!["--region", &region_s, "--peer", &peer_flag];
    flags.extend(meta_flags);
    let meta = MetaCluster::start(3, &flags)?;
    let mut extra: Vec<String> = ["--region", &region_s, "--peer", &peer_flag]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (addr, via) in routes {
        extra.extend(["--route".to_string(), format!("{addr}={via}")]);
    }
    extra.extend(chunk_flags.iter().map(|s| s.to_string()));
    let chunks = start_chunkservers_at(&meta, 300, 8 << 30, &extra, listen)?;
    let side = Side { meta, chunks };
    let addrs = side.addrs();
    wait_for(Duration::from_secs(30), "chunkservers in the map", || {
        let map = super::cluster_map(&addrs)?;
        (map.nodes.len() >= 3).then_some(())
    })?;
    Ok(side)
}
