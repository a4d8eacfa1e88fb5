//! `meridian mount`: a volume through FUSE, in the foreground until SIGINT/SIGTERM or an
//! external unmount. The mount is held by a small supervisor (`supervisor.rs`; as
//! another user than root it mounts through fusermount3) and served by a child process that can die or be replaced without the mount noticing
//! (docs/adr/0008); this file is that serving process, or the whole mount with
//! `--no-supervisor`.

mod fuse_dev;
mod supervisor;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use fuser::{Config, MountOption, Session, SessionACL};
use meridian_client::fuse::{FuseFs, KernelNotifier};
use meridian_client::{FileSystem, FsOptions, MetaClient, MetaError};
use meridian_proto::ZoneId;
use meridian_proto::ns::Query;

/// Options of `meridian mount`.
#[derive(Args)]
pub struct MountArgs {
    /// Metaserver addresses of the region (comma-separated).
    #[arg(long, value_delimiter = ',', required_unless_present = "takeover")]
    pub meta: Vec<String>,
    /// The volume to mount.
    #[arg(long, default_value = "default")]
    pub volume: String,
    /// Where to mount it (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// Let other users (and root) use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Kernel request threads: as many read the kernel's queue as callers are calling at
    /// once (one for a loop of calls), the others stand by for when one waits on a
    /// chunkserver (client/src/fuse/standby.rs).
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Every kernel request thread reads the kernel's queue, none standing by (slower for
    /// a loop of calls: each is answered by another thread).
    #[arg(long)]
    pub all_threads_read: bool,
    /// This client's zone: reads prefer replicas there.
    #[arg(long)]
    pub zone: Option<String>,
    /// Bytes of block cache.
    #[arg(long, default_value_t = 256 << 20)]
    pub cache_bytes: usize,
    /// The kernel's read-ahead on the mount, in KiB (as root; Linux's default of 128 KiB
    /// makes sequential reads wait on many small requests).
    #[arg(long, default_value_t = 4096)]
    pub read_ahead_kb: u32,
    /// How long the kernel may cache entries and attributes, in seconds, while the
    /// metaservers' feed of other clients' changes answers (changes reach the cache
    /// through it in milliseconds). Without the feed, 1 s.
    #[arg(long, default_value_t = meridian_client::fs::TTL_FED.as_secs())]
    pub cache_ttl_secs: u64,
    /// How long a file written in small pieces must have been closed here before the
    /// mount rewrites those pieces as whole blocks, in seconds (a file still being
    /// written is left alone: compacting it would compete with its writer).
    #[arg(long, default_value_t = 5)]
    pub compact_after_secs: u64,
    /// Writes a file holds unflushed this many seconds are committed without a flush, as
    /// a local disk writes its dirty pages back (0: only at fsync, close, or 64 MiB held).
    /// Linux does not pass sync(1) or syncfs to a FUSE mount: this bounds what they miss.
    #[arg(long, default_value_t = 5)]
    pub commit_after_secs: u64,
    /// Send every namespace change to the servers before answering it, instead of
    /// answering mkdir, rmdir and unlink alone in directories this mount made (held under
    /// a lease that other clients recall; see docs/adr/0006).
    #[arg(long)]
    pub no_write_back: bool,
    /// Most names of directories leased to this mount it holds (each costs about 400
    /// bytes with what is kept of its file); past it, the leases least recently used go
    /// back to the servers, and changes there go through them until asked for again.
    #[arg(long, default_value_t = meridian_client::fs::MAX_NAMES)]
    pub leased_names: usize,
    /// Every read (lookup, stat, listing, file content) reflects every change
    /// acknowledged anywhere before it began: a volume with a home region elsewhere is
    /// read through the home (a round trip there per metadata read), and neither the
    /// kernel nor this mount caches anything (direct I/O: shared mmap is refused). A
    /// write is acknowledged when its file is closed or synced. Refused for an
    /// active-active volume of several regions, whose reads cannot be linearizable.
    #[arg(long)]
    pub linearizable: bool,
    /// Serve in this process alone, without a supervisor: the mount dies with it. (A
    /// mount as non-root always does: the supervisor mounts the device itself.)
    #[arg(long)]
    pub no_supervisor: bool,
    /// Read small ranges through gRPC only, never through the chunkservers' range ports.
    #[arg(long)]
    pub no_range_port: bool,
    /// Put small blocks through gRPC only, never through the chunkservers' range ports.
    #[arg(long)]
    pub no_put_port: bool,
    /// Put every commit's blocks before committing it; by default an fsync's commit of a
    /// few kilobytes carries them in the metadata commit and puts them afterwards
    /// (docs/adr/0018).
    #[arg(long)]
    pub no_staged_writes: bool,
    /// Have the running mount at MOUNTPOINT served by this binary from now on (an
    /// upgrade): its supervisor starts this binary, the old serving process commits what
    /// it holds and goes, and requests wait in the kernel meanwhile.
    #[arg(long)]
    pub takeover: bool,
    /// (Internal) serve the FUSE device at this fd, handed over by a supervisor.
    #[arg(long, hide = true, requires = "control_fd")]
    pub serve_fd: Option<i32>,
    /// (Internal) the supervisor's control socket.
    #[arg(long, hide = true)]
    pub control_fd: Option<i32>,
    /// (Internal) which serving process of the mount this is (1, 2, ...).
    #[arg(long, hide = true, default_value_t = 0)]
    pub generation: u64,
    /// (Internal) the first serving process: it answers the kernel's INIT.
    #[arg(long, hide = true)]
    pub first: bool,
    /// (Internal) the serving process before this one died: what it held unflushed is
    /// lost, and the handles it had open report EIO at their next durability point.
    #[arg(long, hide = true)]
    pub after_crash: bool,
}

/// A FUSE device handed over by the supervisor.
struct Handover {
    dev: OwnedFd,
    ctl: OwnedFd,
    first: bool,
}

pub fn run(args: MountArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    if args.takeover {
        let mnt = args
            .mountpoint
            .canonicalize()
            .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
        return rt.block_on(supervisor::request_takeover(&mnt));
    }
    if let (Some(dev), Some(ctl)) = (args.serve_fd, args.control_fd) {
        // SAFETY: the supervisor put the device and the control socket at these fds for
        // this process alone.
        let handover = unsafe {
            Handover {
                dev: OwnedFd::from_raw_fd(dev),
                ctl: OwnedFd::from_raw_fd(ctl),
                first: args.first,
            }
        };
        // The mountpoint is the canonical one the supervisor gave: it is not looked at
        // (a stat would wait on this very process).
        return serve(args, rt, Some(handover));
    }
    let mnt = &args.mountpoint;
    match std::fs::metadata(mnt) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("mountpoint {} is not a directory", mnt.display()),
        Err(e) => bail!(
            "mountpoint {} does not exist ({e}); create it first",
            mnt.display()
        ),
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or give the container the device (--device /dev/fuse)"
        );
    }
    if args.no_supervisor {
        return serve(args, rt, None);
    }
    let canonical = mnt
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mnt.display()))?;
    // The supervisor mounts before its serving process opens the volume: an unknown
    // volume, or metaservers out of reach, must fail here, before anything is mounted
    // (else the mount would appear and vanish again).
    rt.block_on(meta_client(&args).query(
        &Query::Volume {
            name: args.volume.clone(),
        },
        false,
    ))
    .map_err(|e| open_error(e, &args))?;
    // The serving processes get this command's arguments, with the canonical mountpoint.
    let given = mnt.as_os_str().to_owned();
    let mut replaced = false;
    let argv: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .map(|a| {
            if !replaced && a == given {
                replaced = true;
                canonical.clone().into_os_string()
            } else {
                a
            }
        })
        .collect();
    supervisor::run(
        supervisor::Supervised {
            mountpoint: &canonical,
            volume: &args.volume,
            allow_other: args.allow_other,
            argv,
        },
        rt,
    )
}

fn meta_client(args: &MountArgs) -> MetaClient {
    MetaClient::new(args.meta.clone()).with_retry_for(Duration::from_secs(10))
}

/// What a mount says when its volume cannot be opened.
fn open_error(e: MetaError, args: &MountArgs) -> anyhow::Error {
    match e {
        MetaError::Ns(ns) if ns.errno() == meridian_proto::ns::libc_errno::ENOENT => {
            anyhow::anyhow!(
                "unknown volume {:?} (create it with `meridian admin volume-create`)",
                args.volume
            )
        }
        MetaError::Unavailable(why) => {
            anyhow::anyhow!("metaservers unreachable at {}: {why}", args.meta.join(","))
        }
        other => anyhow::anyhow!("cannot open volume {}: {other}", args.volume),
    }
}

/// Serves the volume: on a device the supervisor handed over, or mounted here.
fn serve(args: MountArgs, rt: &tokio::runtime::Runtime, handover: Option<Handover>) -> Result<()> {
    let mnt = &args.mountpoint;
    let meta = Arc::new(meta_client(&args));
    let options = FsOptions {
        cache_bytes: args.cache_bytes,
        cache_ttl: Duration::from_secs(args.cache_ttl_secs),
        compact_after: Duration::from_secs(args.compact_after_secs),
        commit_after: (args.commit_after_secs > 0)
            .then(|| Duration::from_secs(args.commit_after_secs)),
        write_back: !args.no_write_back,
        leased_names: args.leased_names,
        // Each serving process of a supervised mount numbers its handles in a range of
        // its own, and takes on those of the processes before it.
        handle_base: (args.generation << 40).max(1),
        adopt_handles: args.generation > 1,
        adopted_writes_lost: args.after_crash,
        linearizable: args.linearizable,
        range_port: !args.no_range_port,
        put_port: !args.no_put_port,
        stage_small: !args.no_staged_writes,
        ..Default::default()
    };
    let fs = rt
        .block_on(FileSystem::open(
            meta,
            &args.volume,
            args.zone.clone().map(ZoneId),
            options,
        ))
        .map_err(|e| open_error(e, &args))?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("meridian:{}", args.volume)),
        MountOption::Subtype("meridian".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let threads = args.threads.max(1);
    config.n_threads = Some(threads);
    let root = fs.volume().root;
    let fusefs = FuseFs::new(
        fs.clone(),
        rt.handle().clone(),
        threads,
        !args.all_threads_read,
    );
    let drain = fusefs.drain();
    let handed = handover.is_some();
    // Before "ready": a supervisor may ask this process to stop or hand over at once.
    let signals = if handed {
        let _guard = rt.enter();
        use tokio::signal::unix::{SignalKind, signal};
        Some((
            signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
        ))
    } else {
        None
    };
    let session = match handover {
        Some(h) => {
            let first = h.first;
            let (session, ctl) = take_over_device(fusefs, h, &config)?;
            if first {
                set_read_ahead(mnt, args.read_ahead_kb);
            }
            // Ready; reading starts when the supervisor says (after the process before
            // this one, if any, is gone).
            fuse_dev::send(ctl.as_fd(), b"ready")?;
            let go = fuse_dev::recv(ctl.as_fd())?;
            if go != b"go" {
                bail!("the supervisor went away before this process could serve");
            }
            session
        }
        None => {
            // Before the mount: once mounted, resolving the path would ask this very process.
            let canonical = mnt.canonicalize().ok();
            let session = Session::new(fusefs, mnt, &config).with_context(|| {
                format!(
                    "cannot mount at {} (as non-root, fusermount3 from the fuse3 package is needed)",
                    mnt.display()
                )
            })?;
            if let Some(path) = &canonical {
                set_read_ahead(path, args.read_ahead_kb);
            }
            session
        }
    };
    let mut session = session;
    fs.connect_kernel(Arc::new(KernelNotifier::new(session.notifier(), root)));
    rt.spawn(fs.clone().follow_changes());
    let mut unmounter = session.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let serving = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = done_tx.send(());
            result
        })?;
    if handed {
        tracing::info!(volume = %args.volume, mountpoint = %mnt.display(), generation = args.generation, "serving (supervised)");
        let (mut usr2, mut term, mut int) = signals.expect("handlers installed for a handover");
        let stop = rt.block_on(async {
            tokio::select! {
                _ = term.recv() => Stop::Unmount,
                _ = int.recv() => Stop::Unmount,
                _ = usr2.recv() => Stop::HandOver,
                _ = done_rx => Stop::Ended,
            }
        });
        match stop {
            Stop::HandOver => hand_over(&fs, &drain, rt),
            Stop::Unmount => fuse_dev::unmount(mnt),
            Stop::Ended => {}
        }
        return finish(serving, &fs, rt, mnt);
    }
    println!(
        "meridian mount: volume {} mounted at {}",
        args.volume,
        mnt.display()
    );
    tracing::info!(volume = %args.volume, mountpoint = %mnt.display(), "mounted");

    let signalled = rt.block_on(async {
        tokio::select! {
            _ = crate::shutdown_signal() => true,
            _ = done_rx => false,
        }
    });
    if signalled {
        // Unmount; if something still has files open (EBUSY), detach lazily.
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(mnt)
                .status();
        }
    }
    finish(serving, &fs, rt, mnt)
}

/// Why a supervised serving process stops.
enum Stop {
    /// SIGTERM or SIGINT (from its supervisor): unmount cleanly.
    Unmount,
    /// SIGUSR2: another process takes the mount over.
    HandOver,
    /// The kernel ended the session (an external unmount).
    Ended,
}

/// Waits for the session to end, then sends what was answered here alone to the servers
/// and gives the leases back.
fn finish(
    serving: std::thread::JoinHandle<std::io::Result<()>>,
    fs: &Arc<FileSystem>,
    rt: &tokio::runtime::Runtime,
    mnt: &std::path::Path,
) -> Result<()> {
    let served = serving
        .join()
        .map_err(|_| anyhow::anyhow!("FUSE session thread panicked"))?;
    // What was answered here alone goes to the servers, and the leases back to them.
    let released = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), fs.release_leases()).await
    });
    served?;
    match released {
        Ok(Ok(())) => {}
        Ok(Err(_)) => bail!(
            "namespace changes answered by this mount were refused by the servers (see the log)"
        ),
        Err(_) => bail!("could not send the namespace changes answered by this mount within 30 s"),
    }
    let (early_heard, early_taken) = fs.early_answers();
    tracing::info!(mountpoint = %mnt.display(), early_heard, early_taken, "unmounted");
    Ok(())
}

/// Introduces a fuser session to a connection the kernel already made: the kept INIT
/// request is played to it over a socket pair (the first process's answer goes on to the
/// kernel; later ones' are dropped, the kernel having its answer), then the session's fd
/// is replaced by the device's. Returns the session and the control socket.
fn take_over_device(
    fusefs: FuseFs,
    h: Handover,
    config: &Config,
) -> Result<(Session<FuseFs>, OwnedFd)> {
    let init = fuse_dev::recv(h.ctl.as_fd()).context("the INIT request from the supervisor")?;
    let (ours, theirs) = fuse_dev::seqpacket_pair()?;
    fuse_dev::send(ours.as_fd(), &init)?;
    let session_fd = theirs.as_raw_fd();
    let session = Session::from_fd(fusefs, theirs, config.acl, config.clone())
        .context("FUSE handshake with the kept INIT request")?;
    let answer = fuse_dev::recv(ours.as_fd())?;
    if h.first {
        fuse_dev::send(h.dev.as_fd(), &answer).context("answering the kernel's INIT")?;
    }
    // SAFETY: `session_fd` is the session's open fd; dup2 makes it the device's, in one
    // step, and `h.dev` (closed below) keeps nothing the session needs.
    if unsafe { libc::dup2(h.dev.as_raw_fd(), session_fd) } < 0 {
        return Err(std::io::Error::last_os_error()).context("taking over the device");
    }
    drop(h.dev);
    Ok((session, h.ctl))
}

/// Hands the mount over: this process stops answering (requests that arrive from now on
/// are left for the kernel to send again to the process taking over), lets those under
/// way finish and answer, commits what its open files hold, gives its leases back, and
/// exits.
fn hand_over(
    fs: &Arc<FileSystem>,
    drain: &meridian_client::fuse::Drain,
    rt: &tokio::runtime::Runtime,
) -> ! {
    drain.start();
    let done = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            while drain.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let flushed = fs.flush_all().await;
            let released = fs.release_leases().await;
            flushed.and(released)
        })
        .await
    });
    match done {
        Ok(Ok(())) => tracing::info!("handed over"),
        Ok(Err(e)) => tracing::error!(
            errno = e,
            "handing over: what this process held was not all committed"
        ),
        Err(_) => tracing::error!("handing over: finishing and committing took over 30 s"),
    }
    std::process::exit(0)
}

/// Sets the kernel's read-ahead of the mount at `path` (absolute, resolved): its backing
/// device in sysfs, found in mountinfo (a stat of the mount would wait on this process).
fn set_read_ahead(path: &std::path::Path, kb: u32) {
    // mountinfo escapes these as octal.
    let mut want = String::new();
    for c in path.display().to_string().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => want.push_str(&format!("\\{:03o}", c as u32)),
            c => want.push(c),
        }
    }
    let device = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))
                .and_then(|l| l.split(' ').nth(2).map(str::to_string))
        });
    let Some(device) = device else {
        return;
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, kb.to_string()) {
        tracing::debug!(%knob, error = %e, "read-ahead left at the kernel's default");
    }
}
