//! Several regions as real processes (one metaserver and three chunkservers each), each
//! reaching each of its peers' metaservers through a fault proxy of its own, so a test
//! can cut one region off from the others while they go on talking.

use std::time::Duration;

use anyhow::Result;

use super::{MetaCluster, Mount, Proxy, ServerProc, free_addr, start_chunkservers_at, wait_for};

/// One region of a [`Mesh`].
pub struct Region {
    pub meta: MetaCluster,
    pub chunks: Vec<ServerProc>,
}

impl Region {
    pub fn addrs(&self) -> String {
        self.meta.addrs().join(",")
    }

    pub fn admin(&self, args: &[&str]) -> Result<String> {
        super::admin_at(&self.addrs(), args)
    }

    pub fn mount(&self, volume: &str, name: &str) -> Result<Mount> {
        Mount::start(&self.addrs(), volume, &self.meta.dir.path().join(name))
    }
}

/// Regions 1..=n and the proxies of the links between them.
pub struct Mesh {
    pub regions: Vec<Region>,
    /// (from, to): the proxy region `from` reaches region `to`'s metaserver through.
    links: Vec<((u16, u16), Proxy)>,
}

impl Mesh {
    /// Regions 1..=n, each a peer of every other.
    pub fn full(n: u16) -> Result<Mesh> {
        Self::full_with(n, |_| Vec::new())
    }

    /// Regions 1..=n, each a peer of every other, region `r`'s metaserver started with
    /// `flags(r)` too.
    pub fn full_with(n: u16, flags: impl Fn(u16) -> Vec<&'static str>) -> Result<Mesh> {
        let all: Vec<(u16, u16)> = (1..=n)
            .flat_map(|a| (a + 1..=n).map(move |b| (a, b)))
            .collect();
        Self::linked_with(n, &all, flags)
    }

    /// Regions 1..=n, peers of each other where `links` says.
    pub fn linked(n: u16, links: &[(u16, u16)]) -> Result<Mesh> {
        Self::linked_with(n, links, |_| Vec::new())
    }

    fn linked_with(
        n: u16,
        links: &[(u16, u16)],
        meta_flags: impl Fn(u16) -> Vec<&'static str>,
    ) -> Result<Mesh> {
        let directed: Vec<(u16, u16)> = links.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
        // Every link's address is known before any region starts.
        let listen: Vec<String> = directed
            .iter()
            .map(|_| free_addr())
            .collect::<Result<_>>()?;
        let mut regions = Vec::new();
        for r in 1..=n {
            let mut flags = vec!["--region".to_string(), r.to_string()];
            for (i, &(from, to)) in directed.iter().enumerate() {
                if from == r {
                    flags.extend(["--peer".to_string(), format!("{to}={}", listen[i])]);
                }
            }
            let mut refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            refs.extend(meta_flags(r));
            let meta = MetaCluster::start(1, &refs)?;
            let chunks = start_chunkservers_at(&meta, 300, 8 << 30, &flags, &[])?;
            let addrs = meta.addrs().join(",");
            wait_for(Duration::from_secs(30), "chunkservers in the map", || {
                let map = super::cluster_map(&addrs)?;
                (map.nodes.len() >= 3).then_some(())
            })?;
            regions.push(Region { meta, chunks });
        }
        let mut proxies = Vec::new();
        for (i, &(from, to)) in directed.iter().enumerate() {
            let target = regions[to as usize - 1].meta.addrs()[0].clone();
            let proxy = Proxy::start_forwards(
                regions[from as usize - 1].meta.dir.path(),
                &format!("{from}-to-{to}"),
                &[(listen[i].clone(), target)],
            )?;
            proxies.push(((from, to), proxy));
        }
        Ok(Mesh {
            regions,
            links: proxies,
        })
    }

    /// Region `r` (1-based).
    pub fn region(&self, r: u16) -> &Region {
        &self.regions[r as usize - 1]
    }

    /// Cuts (or heals) every metadata link to and from region `r`; the others go on.
    pub fn isolate(&self, r: u16, cut: bool) -> Result<()> {
        for ((from, to), proxy) in &self.links {
            if *from == r || *to == r {
                proxy.set_cut(cut)?;
            }
        }
        Ok(())
    }
}
