//! A three-member group whose followers are slow to reach from the leader (early answers
//! are then certain: `tests/early_answers.rs`, `tests/calls_port.rs`).

use anyhow::Result;
use meridian_client::MetaClient;

use super::{MERIDIAN, Proxy, ServerProc, raft_args};

/// A group of three whose leader (member 1) reaches its followers through a proxy
/// delaying each way by `delay_ms`, while clients reach every member directly: a
/// follower's notice reaches a client long before its answer reaches the leader.
pub struct SlowFollowers {
    pub members: Vec<ServerProc>,
    _proxies: Vec<Proxy>,
    pub dir: tempfile::TempDir,
}

impl SlowFollowers {
    pub fn start(delay_ms: u32) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-early-")
            .tempdir()?;
        let mut args = raft_args(&[]);
        args.push("--init".into());
        let mut members = vec![ServerProc::start("meta", 1, dir.path(), args)?];
        let mut proxies = Vec::new();
        for id in 2..=3u64 {
            let m = ServerProc::start("meta", id, dir.path(), raft_args(&[]))?;
            let proxy = Proxy::start(dir.path(), &format!("to-{id}"), "127.0.0.1:0", &m.addr)?;
            proxy.set_delay(delay_ms)?;
            let out = std::process::Command::new(MERIDIAN)
                .args(["admin", "add-member", "--meta", &members[0].addr])
                .args(["--id", &id.to_string(), "--address", &proxy.forwards[0]])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "add-member {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            members.push(m);
            proxies.push(proxy);
        }
        Ok(SlowFollowers {
            members,
            _proxies: proxies,
            dir,
        })
    }

    /// A client of the group, taking early answers.
    pub fn client(&self) -> MetaClient {
        let client = MetaClient::new(self.members.iter().map(|m| m.addr.clone()).collect());
        client.set_early_answers(true);
        client
    }
}
