//! Choosing loopback ports ahead of time, for `meridian dev` and the tests, which must
//! tell every server its peers' addresses before the peers are listening.
//!
//! A port is chosen by binding it and letting it go, so it is free only until someone
//! else takes it. Ports in the kernel's ephemeral range are the risky ones: every outgoing
//! connection on the machine (including the servers we have already started dialling
//! each other) takes one from there without asking. So the choice comes from below that
//! range, starting at a random point so that concurrent callers spread out, and never
//! twice in one process: a port handed out but not bound yet would look free again. Nor
//! twice on the host within [`CLAIM_FOR`]: each port handed out is claimed by a file in
//! the temp folder, so that `meridian dev` and the tests' harnesses running at once (each
//! a process of its own, each picking ports seconds before its servers bind them) do not
//! pick the same one.

use std::collections::BTreeSet;
use std::io;
use std::net::TcpListener;
use std::sync::Mutex;

/// Lowest port handed out: above the well-known and most registered service ports.
const LOWEST: u16 = 20000;

/// Every port this process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How long a port handed out by any process on this host stays claimed: long enough for
/// its server to be started and bind it.
const CLAIM_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Claims `port` for this process across the host, unless another process claimed it
/// within [`CLAIM_FOR`]. Where the claims cannot be kept (no temp folder to write), every
/// port counts as claimed: the choice is then as good as binding alone.
fn claim(port: u16) -> bool {
    let dir = std::env::temp_dir().join("meridian-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let path = dir.join(port.to_string());
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
    };
    match create() {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let stale = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > CLAIM_FOR);
            // A stale claim is taken over by the one process that removes it first.
            stale && std::fs::remove_file(&path).is_ok() && create().is_ok()
        }
        Err(_) => true,
    }
}

/// The kernel's ephemeral port range (Linux default 32768–60999 when unreadable).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback address (`127.0.0.1:PORT`) that was free a moment ago and lies outside the
/// ephemeral range, so no outgoing connection can take it before its server binds it.
pub fn spare_loopback_addr() -> io::Result<String> {
    let (low, high) = ephemeral_range();
    // Below the range when there is room, else above it.
    let (from, to) = if low > LOWEST + 1000 {
        (LOWEST, low)
    } else {
        (high.saturating_add(1), u16::MAX)
    };
    let span = u64::from(to.saturating_sub(from)).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) ^ d.as_secs())
        .unwrap_or_default()
        ^ (u64::from(std::process::id()) << 20);
    // 7919 is prime, so the walk visits every port unless the span is a multiple of it.
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = from + ((seed.wrapping_add(i * 7919)) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port))
            && claim(port)
        {
            handed_out.insert(port);
            return Ok(l.local_addr()?.to_string());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free loopback port between {from} and {to}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_ports_are_bindable_and_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range();
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let addr = spare_loopback_addr().unwrap();
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            assert!(!(low..=high).contains(&port), "{port} in {low}-{high}");
            assert!(seen.insert(port), "{port} handed out twice");
            TcpListener::bind(&addr).unwrap();
        }
    }

    /// A port claimed by another process lately is not handed out here; one claimed long
    /// ago is.
    #[test]
    fn a_port_claimed_on_the_host_lately_is_not_claimed_again_and_a_stale_claim_is() {
        let port = 1; // never handed out: below the range
        let path = std::env::temp_dir().join("meridian-ports").join("1");
        let _ = std::fs::remove_file(&path);
        assert!(claim(port), "a first claim");
        assert!(!claim(port), "claimed a moment ago");
        let old = std::time::SystemTime::now() - CLAIM_FOR - std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(claim(port), "a stale claim is taken over");
        assert!(!claim(port));
        std::fs::remove_file(&path).unwrap();
    }
}
