//! The mount supervisor (docs/adr/0008): a small process that owns the FUSE connection
//! and keeps it alive while the process serving it comes and goes. It mounts the device
//! itself, keeps the kernel's INIT request, and starts a serving process (`meridian mount
//! --serve-fd`) that it hands the device to. When that process dies, another is started
//! and the kernel is asked to send again what the dead one had read and not answered;
//! `meridian mount --takeover DIR` replaces it with a newer binary the same way. The
//! mount never sees ENOTCONN: requests wait in the kernel meanwhile.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use super::fuse_dev;

/// How long a serving process may take to be ready, and a stopping one to go.
const PATIENCE: Duration = Duration::from_secs(60);

/// The control socket of the supervisor of the mount at `mountpoint` (canonical): under
/// /run/meridian for root's mounts, under the user's runtime directory (or /tmp) for a
/// user's.
pub fn control_path(mountpoint: &Path) -> PathBuf {
    let h = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    let dir = if fuse_dev::is_root() {
        PathBuf::from("/run/meridian/mounts")
    } else {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("meridian-mounts"),
            _ => PathBuf::from(format!("/tmp/meridian-{uid}-mounts")),
        }
    };
    dir.join(format!("{}.sock", &h[..20]))
}

/// A serving process, and the supervisor's end of its control socket.
struct Server {
    child: Child,
    ctl: OwnedFd,
    generation: u64,
}

impl Server {
    fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) of our own child with a valid signal.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Lets it read the device.
    fn go(&self) -> io::Result<()> {
        fuse_dev::send(self.ctl.as_fd(), b"go")
    }
}

/// Starts a serving process of generation `generation` from `exe`, hands it the device
/// and the INIT request, and waits until it is ready to read (it does not read until
/// [`Server::go`]).
async fn spawn(
    exe: &Path,
    argv: &[OsString],
    dev: &OwnedFd,
    init: &[u8],
    generation: u64,
    first: bool,
    after_crash: bool,
) -> Result<Server> {
    let (ours, theirs) = fuse_dev::seqpacket_pair()?;
    let mut cmd = Command::new(exe);
    cmd.args(argv)
        .args(["--serve-fd", "3", "--control-fd", "4", "--generation"])
        .arg(generation.to_string());
    if first {
        cmd.arg("--first");
    }
    if after_crash {
        cmd.arg("--after-crash");
    }
    let (dev_fd, ctl_fd) = (dev.as_raw_fd(), theirs.as_raw_fd());
    // SAFETY: only async-signal-safe calls (fcntl, dup2, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, so neither dup2 clobbers the other's source.
            let d = libc::fcntl(dev_fd, libc::F_DUPFD, 10);
            let c = libc::fcntl(ctl_fd, libc::F_DUPFD, 10);
            if d < 0 || c < 0 || libc::dup2(d, 3) < 0 || libc::dup2(c, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(d);
            libc::close(c);
            // The serving process goes with the supervisor: a killed supervisor is a
            // dead mount, as an unsupervised one would be.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    drop(theirs);
    let mut server = Server {
        child,
        ctl: ours,
        generation,
    };
    fuse_dev::send(server.ctl.as_fd(), init)?;
    let ctl = server.ctl.try_clone()?;
    let ready = tokio::task::spawn_blocking(move || fuse_dev::recv(ctl.as_fd()));
    tokio::select! {
        r = ready => {
            let msg = r.map_err(io::Error::other)??;
            if msg != b"ready" {
                let status = server.child.wait().await?;
                bail!("the serving process did not start ({status})");
            }
        }
        status = server.child.wait() => bail!("the serving process exited at start ({})", status?),
        _ = tokio::time::sleep(PATIENCE) => {
            let _ = server.child.kill().await;
            bail!("the serving process was not ready in {} s", PATIENCE.as_secs());
        }
    }
    Ok(server)
}

/// Waits for a process to exit, killing it after `PATIENCE`.
async fn reap(server: &mut Server) {
    if tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            generation = server.generation,
            "serving process did not stop: killing it"
        );
        let _ = server.child.kill().await;
    }
}

pub struct Supervised<'a> {
    /// The canonical mountpoint.
    pub mountpoint: &'a Path,
    pub volume: &'a str,
    pub allow_other: bool,
    /// `meridian` arguments for a serving process (the canonical mountpoint among them).
    pub argv: Vec<OsString>,
}

/// Mounts, serves through child processes until unmounted or signalled, and unmounts.
pub fn run(s: Supervised<'_>, rt: &tokio::runtime::Runtime) -> Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    let dev = if fuse_dev::is_root() {
        let dev = fuse_dev::open_dev().context("open /dev/fuse")?;
        fuse_dev::mount(&dev, s.mountpoint, s.volume, s.allow_other)
            .with_context(|| format!("cannot mount at {}", s.mountpoint.display()))?;
        dev
    } else {
        fuse_dev::mount_unprivileged(s.mountpoint, s.volume, s.allow_other)
            .with_context(|| format!("cannot mount at {}", s.mountpoint.display()))?
    };
    let init = match fuse_dev::read_init(&dev) {
        Ok(i) => i,
        Err(e) => {
            fuse_dev::detach(s.mountpoint);
            return Err(e).context("the kernel's INIT request");
        }
    };
    // Spawned from this thread, which lives as long as the supervisor: a serving
    // process's death signal follows the thread that forked it.
    let result = rt.block_on(supervise(&s, &exe, &dev, &init));
    if result.is_err() && fuse_dev::is_mounted(s.mountpoint) {
        fuse_dev::detach(s.mountpoint);
    }
    result
}

async fn supervise(s: &Supervised<'_>, exe: &Path, dev: &OwnedFd, init: &[u8]) -> Result<()> {
    let mnt = s.mountpoint;
    let mut server = spawn(exe, &s.argv, dev, init, 1, true, false).await?;
    // The binary a dead serving process is replaced with: the latest taken over to.
    let mut exe = exe.to_path_buf();
    server.go()?;
    let control = control_path(mnt);
    let listener = bind_control(&control)?;
    println!(
        "meridian mount: volume {} mounted at {} (supervised; serving process {})",
        s.volume,
        mnt.display(),
        server.pid().unwrap_or(0)
    );
    tracing::info!(volume = %s.volume, mountpoint = %mnt.display(), "mounted (supervised)");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let outcome = loop {
        tokio::select! {
            status = server.child.wait() => {
                let status = status?;
                if !fuse_dev::is_mounted(mnt) {
                    // Unmounted (umount, or the server's own clean stop): done.
                    break if status.success() { Ok(()) } else {
                        Err(anyhow::anyhow!("serving process exited ({status}) and the mount is gone"))
                    };
                }
                tracing::warn!(generation = server.generation, %status, "serving process died: starting another");
                match restart(s, &exe, dev, init, server.generation + 1, &mut term, &mut int).await {
                    Restarted::Serving(next) => server = *next,
                    Restarted::Gone => break Err(anyhow::anyhow!("the mount went away while restarting its server")),
                    Restarted::Stopped => {
                        // No process serves it: nothing can be sent first.
                        fuse_dev::detach(mnt);
                        break Ok(());
                    }
                }
            }
            _ = term.recv() => break stop(&mut server, mnt).await,
            _ = int.recv() => break stop(&mut server, mnt).await,
            conn = listener.accept() => {
                let Ok((conn, _)) = conn else { continue };
                if let Some((next, new_exe)) = takeover(s, dev, init, &mut server, conn).await {
                    server = next;
                    exe = new_exe;
                }
            }
        }
    };
    let _ = std::fs::remove_file(&control);
    outcome
}

/// How a restart ended.
enum Restarted {
    /// A new process serves.
    Serving(Box<Server>),
    /// The mount went away meanwhile.
    Gone,
    /// SIGTERM or SIGINT came first.
    Stopped,
}

/// Starts serving processes until one is ready (backing off while they fail, for
/// example while the metaservers are down), then has the kernel send again what the
/// dead one held. A signal to stop ends the attempts.
async fn restart(
    s: &Supervised<'_>,
    exe: &Path,
    dev: &OwnedFd,
    init: &[u8],
    mut generation: u64,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Restarted {
    let mut backoff = Duration::from_millis(100);
    loop {
        if !fuse_dev::is_mounted(s.mountpoint) {
            return Restarted::Gone;
        }
        let started = tokio::select! {
            r = spawn(exe, &s.argv, dev, init, generation, false, true) => r,
            _ = term.recv() => return Restarted::Stopped,
            _ = int.recv() => return Restarted::Stopped,
        };
        match started {
            Ok(next) => {
                if let Err(e) = next.go() {
                    tracing::error!(error = %e, "cannot start the new serving process");
                } else {
                    if let Err(e) = fuse_dev::notify_resend(dev.as_fd()) {
                        tracing::warn!(error = %e, "the kernel cannot resend unanswered requests");
                    }
                    tracing::info!(generation, pid = next.pid(), "serving again");
                    return Restarted::Serving(Box::new(next));
                }
            }
            Err(e) => tracing::error!(error = %e, generation, "a serving process failed to start"),
        }
        generation += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = term.recv() => return Restarted::Stopped,
            _ = int.recv() => return Restarted::Stopped,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// SIGTERM or SIGINT: the serving process unmounts cleanly (sending what it holds).
async fn stop(server: &mut Server, mnt: &Path) -> Result<()> {
    server.signal(libc::SIGTERM);
    reap(server).await;
    if fuse_dev::is_mounted(mnt) {
        fuse_dev::unmount(mnt);
    }
    Ok(())
}

fn bind_control(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
        // Its sockets make this process run a binary it is given: its user's alone (a
        // folder under /tmp another user made first is refused).
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(dir)?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        anyhow::ensure!(
            meta.is_dir() && meta.uid() == me,
            "{} is not a folder of this user's",
            dir.display()
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    // It makes this process run a binary it is given: this user's alone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// One takeover request: "takeover EXE". A new serving process from EXE is made ready,
/// the old one hands over (it stops reading, commits what it holds, and exits), and the
/// new one starts reading; the kernel sends it what the old one left unanswered.
async fn takeover(
    s: &Supervised<'_>,
    dev: &OwnedFd,
    init: &[u8],
    old: &mut Server,
    conn: tokio::net::UnixStream,
) -> Option<(Server, PathBuf)> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r);
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line));
    if !matches!(read.await, Ok(Ok(_))) {
        return None;
    }
    let Some(exe) = line.trim_end().strip_prefix("takeover ") else {
        let _ = w.write_all(b"error: expected 'takeover EXE'\n").await;
        return None;
    };
    let exe = PathBuf::from(exe);
    let generation = old.generation + 1;
    let next = match spawn(&exe, &s.argv, dev, init, generation, false, false).await {
        Ok(n) => n,
        Err(e) => {
            let _ = w.write_all(format!("error: {e:#}\n").as_bytes()).await;
            return None;
        }
    };
    old.signal(libc::SIGUSR2);
    reap(old).await;
    if let Err(e) = next.go() {
        let _ = w.write_all(format!("error: {e}\n").as_bytes()).await;
        return None;
    }
    if let Err(e) = fuse_dev::notify_resend(dev.as_fd()) {
        tracing::warn!(error = %e, "the kernel cannot resend unanswered requests");
    }
    tracing::info!(generation, exe = %exe.display(), "taken over");
    let _ = w
        .write_all(
            format!(
                "ok generation {generation} pid {}\n",
                next.pid().unwrap_or(0)
            )
            .as_bytes(),
        )
        .await;
    Some((next, exe))
}

/// `meridian mount --takeover DIR`: asks the supervisor of the mount at DIR to serve it
/// with this binary from now on.
pub async fn request_takeover(mountpoint: &Path) -> Result<()> {
    let control = control_path(mountpoint);
    let exe = std::env::current_exe().context("own executable")?;
    let mut conn = tokio::net::UnixStream::connect(&control)
        .await
        .with_context(|| {
            format!(
                "no supervised mount at {} ({} does not answer)",
                mountpoint.display(),
                control.display()
            )
        })?;
    conn.write_all(format!("takeover {}\n", exe.display()).as_bytes())
        .await?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply).await?;
    let reply = reply.trim_end();
    match reply.strip_prefix("ok ") {
        Some(rest) => {
            println!(
                "meridian mount: {} taken over ({rest})",
                mountpoint.display()
            );
            Ok(())
        }
        None => bail!("takeover of {} failed: {reply}", mountpoint.display()),
    }
}
