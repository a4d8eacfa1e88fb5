//! The TCP fault proxy between regions: forwards bytes intact, delays, cuts and heals on
//! command.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{MERIDIAN, Proxy, random_bytes};

fn start_proxy(dir: &std::path::Path, target: &str) -> Result<Proxy> {
    Proxy::start(dir, "proxy", "127.0.0.1:0", target)
}

/// An echo server on a thread; returns its address.
fn echo_server() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn link(control: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(MERIDIAN)
        .args(["admin", "link", "--json", "--proxy", control])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn round_trip(conn: &mut TcpStream, data: &[u8]) -> Result<Vec<u8>> {
    conn.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back)?;
    Ok(back)
}

#[test]
fn the_proxy_forwards_delays_cuts_and_heals() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let proxy = start_proxy(dir.path(), &echo_server()?)?;

    let mut conn = TcpStream::connect(&proxy.listen)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let data = random_bytes(1, 1 << 20);
    assert_eq!(round_trip(&mut conn, &data)?, data, "bytes pass intact");

    // A delay is a lower bound on each direction, so a round trip takes at least twice it.
    let s = link(&proxy.control, &["--delay-ms", "150"])?;
    assert_eq!(s["delay_ms"], 150);
    let t = Instant::now();
    assert_eq!(round_trip(&mut conn, b"ping")?, b"ping");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "round trip took {:?}",
        t.elapsed()
    );
    link(&proxy.control, &["--delay-ms", "0"])?;

    // Cut: the open connection ends, a new one is closed at once.
    let s = link(&proxy.control, &["--cut"])?;
    assert_eq!(s["cut"], true);
    let mut buf = [0u8; 16];
    let ended = match conn.write_all(b"lost?") {
        Err(_) => true,
        Ok(()) => matches!(conn.read(&mut buf), Ok(0) | Err(_)),
    };
    assert!(ended, "the open connection was dropped");
    let mut fresh = TcpStream::connect(&proxy.listen)?;
    fresh.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = fresh.write_all(b"anyone?");
    assert!(
        matches!(fresh.read(&mut buf), Ok(0) | Err(_)),
        "a cut link refuses new connections"
    );

    // Heal: traffic flows again.
    link(&proxy.control, &["--heal"])?;
    let mut healed = TcpStream::connect(&proxy.listen).context("connect after heal")?;
    healed.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(round_trip(&mut healed, b"back")?, b"back");
    let s = link(&proxy.control, &[])?;
    assert_eq!(s["cut"], false);
    assert!(s["connections_total"].as_u64().unwrap_or(0) >= 3);
    // A delay beyond a minute is refused, and the link stays as it was.
    let e = link(&proxy.control, &["--delay-ms", "4000000000"]).unwrap_err();
    assert!(e.to_string().contains("at most 60000 ms"), "{e}");
    assert_eq!(link(&proxy.control, &[])?["delay_ms"], 0);
    Ok(())
}
