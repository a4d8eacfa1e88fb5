//! `meridian admin fsck`: checks a region's metadata page by page (the metaserver checks
//! directory entries, link counts, extents and reference counts), then every block an
//! extent references: how many chunkservers hold a copy, and whether each copy verifies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_client::{BlockClient, MetaClient};
use meridian_proto::channels::Timeouts;
use meridian_proto::ns::{CheckPage, CheckedBlock, LINKS_MAX, LinkCount, Query, QueryReply};
use meridian_proto::{BlockId, ClusterMap, NodeState};
use serde::Serialize;

/// Inodes asked about per page.
const PAGE: u32 = 2000;
/// Blocks asked about per `Has` call.
const HAS_BATCH: usize = 1024;

/// What fsck found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Inodes checked (live and tombstones).
    pub inodes: u64,
    /// Directory entries checked.
    pub dirents: u64,
    /// Extents checked.
    pub extents: u64,
    /// Distinct blocks referenced.
    pub blocks: u64,
    /// Copies read back and verified (0 with `--quick`).
    pub copies_verified: u64,
    /// Blocks short of copies whose plaintext the metadata holds staged (docs/adr/0018):
    /// a small write's, on its way to the chunkservers.
    pub staged: u64,
    /// Metadata that is inconsistent.
    pub namespace: Vec<String>,
    /// Referenced blocks with no copy on any reachable chunkserver: data is lost.
    pub missing: Vec<String>,
    /// Copies that failed verification (their node quarantines and replaces them).
    pub corrupt: Vec<String>,
    /// Blocks with fewer good copies than their volume wants (repair catches up).
    pub short: Vec<String>,
    /// Chunkservers that could not be asked.
    pub unreachable: Vec<String>,
    /// What could not be checked, and why (not a problem found).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn clean(&self) -> bool {
        self.namespace.is_empty()
            && self.missing.is_empty()
            && self.corrupt.is_empty()
            && self.short.is_empty()
            && self.unreachable.is_empty()
    }
}

/// Runs the check against the region whose metaservers are `meta`; `quick` counts copies
/// without reading them back.
pub async fn run(meta: &[String], quick: bool) -> Result<Report> {
    let client = MetaClient::new(meta.to_vec()).with_retry_for(Duration::from_secs(10));
    let map = client
        .cluster_map(0, Duration::ZERO)
        .await
        .context("cannot read the cluster map")?;
    let (_keep, view) = tokio::sync::watch::channel(Arc::new(map.clone()));
    let blocks = BlockClient::new(view, None, Timeouts::default());
    let mut report = Report::default();
    let mut links = LinkBalance::default();
    let mut from = 0;
    loop {
        let page = match client
            .query(&Query::Check { from, limit: PAGE }, false)
            .await
            .context("the namespace check failed")?
        {
            QueryReply::Check(p) => p,
            other => anyhow::bail!("unexpected answer to a check: {other:?}"),
        };
        let CheckPage {
            inodes,
            dirents,
            extents,
            blocks: referenced,
            problems,
            next,
            links: balances,
        } = page;
        links.add(balances);
        report.inodes += inodes;
        report.dirents += dirents;
        report.extents += extents;
        report.blocks += referenced.len() as u64;
        report.namespace.extend(problems);
        check_blocks(&map, &blocks, &referenced, quick, &mut report).await;
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    check_links(&client, &links, &mut report).await?;
    report.unreachable.sort();
    report.unreachable.dedup();
    Ok(report)
}

/// Per file, its link count less the names that lead to it, summed over the pages read so
/// far; the files that come to zero are dropped. A page reads one range of inodes, and a
/// file's names may be in the directories of any page.
#[derive(Debug, Default)]
struct LinkBalance {
    open: HashMap<u64, i64>,
    /// A page came from a server that does not count links: nothing can be told.
    uncounted: bool,
}

impl LinkBalance {
    fn add(&mut self, page: Option<Vec<(u64, i64)>>) {
        let Some(page) = page else {
            self.uncounted = true;
            return;
        };
        for (ino, d) in page {
            let sum = self.open.entry(ino).or_default();
            *sum += d;
            if *sum == 0 {
                self.open.remove(&ino);
            }
        }
    }

    /// The files that did not come to zero, in inode order.
    fn unbalanced(&self) -> Vec<u64> {
        if self.uncounted {
            return Vec::new();
        }
        let mut out: Vec<u64> = self.open.keys().copied().collect();
        out.sort_unstable();
        out
    }
}

/// Counts again, each in one read, the links and names of the files whose pages did not
/// balance: the pages were read at different times, and a link made or removed between
/// two of them is no problem.
async fn check_links(client: &MetaClient, links: &LinkBalance, report: &mut Report) -> Result<()> {
    if links.uncounted {
        report.notes.push(
            "link counts against names not checked: a page did not count them (a metaserver of \
             an earlier version, or a directory of millions of names)"
                .into(),
        );
    }
    for batch in links.unbalanced().chunks(LINKS_MAX) {
        let counts = match client
            .query(
                &Query::Links {
                    inodes: batch.to_vec(),
                },
                false,
            )
            .await
        {
            Ok(QueryReply::Links(c)) => c,
            Ok(other) => anyhow::bail!("unexpected answer to a count of links: {other:?}"),
            Err(e) => {
                // Not a finding about the data: the count was not made.
                report.notes.push(format!(
                    "{} files whose link counts did not match their names in the pages could not be counted again: {e}",
                    batch.len()
                ));
                continue;
            }
        };
        report.namespace.extend(link_problems(&counts));
    }
    Ok(())
}

/// The files whose link count is not the number of names that lead to them. A file
/// gone since has no link count, and is no problem.
fn link_problems(counts: &[LinkCount]) -> Vec<String> {
    counts
        .iter()
        .filter_map(|c| {
            let n = c.nlink?;
            (n != c.names).then(|| {
                format!(
                    "file {}: {n} links, but {} directory entries name it",
                    c.ino, c.names
                )
            })
        })
        .collect()
}

/// Counts and verifies the copies of `referenced` on every chunkserver not marked down.
async fn check_blocks(
    map: &ClusterMap,
    client: &BlockClient,
    referenced: &[CheckedBlock],
    quick: bool,
    report: &mut Report,
) {
    for batch in referenced.chunks(HAS_BATCH) {
        let ids: Vec<BlockId> = batch.iter().map(|b| b.block).collect();
        // holders[i] = the nodes holding a copy of block i.
        let mut holders: Vec<Vec<&meridian_proto::NodeInfo>> = vec![Vec::new(); batch.len()];
        for node in map.nodes.iter().filter(|n| n.state != NodeState::Down) {
            match client.has_copies(node, &ids).await {
                Ok(present) => {
                    for (i, p) in present.into_iter().enumerate() {
                        if p {
                            holders[i].push(node);
                        }
                    }
                }
                Err(e) => report
                    .unreachable
                    .push(format!("chunkserver {} ({}): {e}", node.id, node.address)),
            }
        }
        for (b, nodes) in batch.iter().zip(&holders) {
            let what = format!("block {} (of inode {})", b.block, b.inode);
            let mut good = 0u32;
            for node in nodes {
                if quick {
                    good += 1;
                    continue;
                }
                match client.get_verified(node, &b.block).await {
                    Ok(_) => {
                        good += 1;
                        report.copies_verified += 1;
                    }
                    Err(e) => report
                        .corrupt
                        .push(format!("{what}: the copy on chunkserver {}: {e}", node.id)),
                }
            }
            if b.staged && good < b.replicas {
                // Held by the metadata until its writer's put is done: not lost.
                report.staged += 1;
            } else if nodes.is_empty() {
                report
                    .missing
                    .push(format!("{what}: no chunkserver holds a copy"));
            } else if good == 0 {
                report.missing.push(format!("{what}: no copy verifies"));
            } else if good < b.replicas {
                report.short.push(format!(
                    "{what}: {good} good copies of {} wanted",
                    b.replicas
                ));
            }
        }
    }
}

/// Prints `report` as a summary and a list of problems, or as JSON.
pub fn print(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "checked {} inodes, {} directory entries, {} extents, {} blocks ({} copies verified, {} held staged by the metadata)",
        report.inodes,
        report.dirents,
        report.extents,
        report.blocks,
        report.copies_verified,
        report.staged
    );
    let sections: BTreeMap<&str, &Vec<String>> = [
        ("namespace", &report.namespace),
        ("missing", &report.missing),
        ("corrupt", &report.corrupt),
        ("short", &report.short),
        ("unreachable", &report.unreachable),
    ]
    .into_iter()
    .collect();
    for (name, lines) in sections {
        for l in lines {
            println!("{name}: {l}");
        }
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    if report.clean() {
        println!("clean");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_links_and_names_balance_across_pages() {
        let mut b = LinkBalance::default();
        // File 7 has two links: one name in the first page's directories, its record in
        // the second, its other name in the third. File 9's one name is never seen.
        b.add(Some(vec![(7, -1)]));
        b.add(Some(vec![(7, 2), (9, 1)]));
        assert_eq!(b.unbalanced(), vec![7, 9]);
        b.add(Some(vec![(7, -1)]));
        assert_eq!(b.unbalanced(), vec![9]);
        // A server that does not count them: nothing can be told.
        b.add(None);
        assert!(b.unbalanced().is_empty());
    }

    #[test]
    fn a_count_that_matches_or_a_file_gone_is_no_problem() {
        let counts = [
            LinkCount {
                ino: 7,
                nlink: Some(2),
                names: 2,
            },
            LinkCount {
                ino: 8,
                nlink: None,
                names: 0,
            },
            LinkCount {
                ino: 9,
                nlink: Some(1),
                names: 0,
            },
            LinkCount {
                ino: 10,
                nlink: Some(2),
                names: 3,
            },
        ];
        let found = link_problems(&counts);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("file 9: 1 links, but 0"), "{found:?}");
        assert!(found[1].starts_with("file 10: 2 links, but 3"), "{found:?}");
    }
}
