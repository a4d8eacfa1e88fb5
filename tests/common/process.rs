//! One `meridian` server process of a test: started with its own folder and a free port,
//! killed on drop.

use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// The placeholder of a `--listen` address the harness picks the port of ([`listen_port`]).
pub const ANY_LISTEN: &str = "127.0.0.1:0";

/// A loopback address with a port that is free now and that the kernel never hands out on
/// its own: below the ephemeral range, which both `bind` to port 0 and every outgoing
/// connection's local port are taken from. A server that is killed and started again on
/// its address (as many tests do) then finds it free, rather than held by another test's
/// connection for as long as that lives. Another test could pick the same port in the
/// moment between this check and the server's bind: [`ServerProc::wait_first_listening`]
/// picks again when a first start finds it taken.
pub fn listen_port() -> Result<String> {
    static PICKS: AtomicU64 = AtomicU64::new(0);
    let ephemeral_from = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Below the ports `spare_loopback_addr` hands out (20,000 up: `meridian dev`'s, the
    // proxies'), so the two never pick one port at once; a port picked here that another
    // test took meanwhile is picked again (`picked_port`).
    let (lo, hi) = (10_000u16, ephemeral_from.clamp(10_001, 20_000));
    // Seeded per process (the hasher's random keys), so parallel tests draw differently.
    let seed = std::collections::hash_map::RandomState::new();
    for _ in 0..1000 {
        let mut h = seed.build_hasher();
        h.write_u64(PICKS.fetch_add(1, Ordering::Relaxed));
        let port = lo + (h.finish() % u64::from(hi - lo)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    bail!("no free port in {lo}..{hi}")
}

/// One server process (`meridian chunk` or `meridian meta`).
pub struct ServerProc {
    pub role: &'static str,
    pub id: u64,
    pub zone: String,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) child: Option<Child>,
    /// Whether the harness picked the port it listens on (and may pick another).
    pub(super) picked_port: bool,
}

impl ServerProc {
    pub(super) fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(MERIDIAN)
            .args(&self.args)
            .env("MERIDIAN_LOG", "info")
            // Plaintext unless the test gives the server --tls.
            .env("MERIDIAN_PLAINTEXT", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn meridian {}", self.role))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the process has printed its listening address, and returns it; fails
    /// as soon as the process exits without it.
    pub(super) fn wait_listening(&mut self, after: usize) -> Result<String> {
        let log = self.log.clone();
        let (id, role) = (self.id, self.role);
        let prefix = format!("meridian {role} {id} listening on ");
        let mut child = self.child.as_mut();
        let found = wait_for(START_DEADLINE, "server to listen", || {
            let text = fs::read_to_string(&log).ok()?;
            if let Some(addr) = text.lines().filter(|l| l.starts_with(&prefix)).nth(after) {
                return Some(Ok(addr.rsplit(' ').next().unwrap_or_default().to_string()));
            }
            match child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(status)),
                _ => None,
            }
        });
        match found {
            Ok(Ok(addr)) => Ok(addr),
            Ok(Err(status)) => bail!("{role} {id} exited ({status}):\n{}", log_tail(&log, 30)),
            Err(e) => Err(e).with_context(|| format!("{role} {id}:\n{}", log_tail(&log, 30))),
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process where it is (SIGSTOP), or lets it go on (SIGCONT).
    pub fn pause(&self, stopped: bool) {
        if let Some(c) = self.child.as_ref() {
            let sig = if stopped {
                libc::SIGSTOP
            } else {
                libc::SIGCONT
            };
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().context("process not running")?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                bail!(
                    "chunkserver {} ignored SIGTERM:\n{}",
                    self.id,
                    log_tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds `args` to those the process starts with next time.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Takes `flag`, a flag without a value, out of the arguments the process starts with
    /// next time.
    pub fn remove_flag(&mut self, flag: &str) {
        self.args.retain(|a| a != flag);
    }

    /// Takes `flag` and the value after it out of the arguments the process starts with
    /// next time.
    pub fn remove_arg(&mut self, flag: &str) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
    }

    /// Starts the process again with the same arguments, listening on `addr`. The port
    /// was free while the process was down; the harness picks ports the kernel never
    /// hands out ([`listen_port`]), but another test may have picked it meanwhile: a
    /// start that finds it taken is tried again until [`START_DEADLINE`].
    pub fn restart_on(&mut self, addr: &str) -> Result<()> {
        let listen = self
            .args
            .iter()
            .position(|a| a == "--listen")
            .expect("listen arg")
            + 1;
        self.args[listen] = addr.to_string();
        let prefix = format!("meridian {} {} listening on ", self.role, self.id);
        let before = fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count();
        let start = std::time::Instant::now();
        let again = loop {
            self.spawn()?;
            match self.wait_listening(before) {
                Ok(again) => break again,
                Err(e)
                    if format!("{e:#}").contains("Address already in use")
                        && start.elapsed() < START_DEADLINE =>
                {
                    // Not a wait for the server: the port's other holder is not ours.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        anyhow::ensure!(again == addr, "restarted on {again}, expected {addr}");
        Ok(())
    }

    /// Starts a new server process; returns once it has printed its address.
    pub fn start(role: &'static str, id: u64, dir: &Path, mut args: Vec<String>) -> Result<Self> {
        let data = dir.join(format!("{role}-{id}"));
        let mut full = vec![
            role.to_string(),
            "--id".into(),
            id.to_string(),
            "--data".into(),
            data.display().to_string(),
        ];
        if !args.iter().any(|a| a == "--listen") {
            full.extend(["--listen".to_string(), ANY_LISTEN.to_string()]);
        }
        full.append(&mut args);
        let mut p = ServerProc {
            role,
            id,
            zone: String::new(),
            addr: String::new(),
            data,
            log: dir.join(format!("{role}-{id}.log")),
            args: full,
            child: None,
            picked_port: false,
        };
        p.spawn_first()?;
        p.addr = p.wait_first_listening()?;
        Ok(p)
    }

    /// Spawns the process for the first time; a `--listen` of [`ANY_LISTEN`] gets a port
    /// from [`listen_port`].
    pub(super) fn spawn_first(&mut self) -> Result<()> {
        if let Some(i) = self.args.iter().position(|a| a == "--listen")
            && self.args[i + 1] == ANY_LISTEN
        {
            self.args[i + 1] = listen_port()?;
            self.picked_port = true;
        }
        self.spawn()
    }

    /// Waits until a process [`spawn_first`](Self::spawn_first) started listens; its
    /// address. A port the harness picked that another test took before the process
    /// could is picked again.
    pub(super) fn wait_first_listening(&mut self) -> Result<String> {
        let mut tries = 0;
        loop {
            match self.wait_listening(0) {
                Err(e)
                    if self.picked_port
                        && tries < 5
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    tries += 1;
                    let i = self
                        .args
                        .iter()
                        .position(|a| a == "--listen")
                        .expect("listen");
                    self.args[i + 1] = listen_port()?;
                    self.spawn()?;
                }
                other => return other,
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}
