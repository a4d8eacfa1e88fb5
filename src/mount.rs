//! `meridian mount`: a volume through FUSE, in the foreground until SIGINT/SIGTERM or an
//! external unmount.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use fuser::{Config, MountOption, Session, SessionACL};
use meridian_client::fuse::{FuseFs, KernelNotifier};
use meridian_client::{FileSystem, FsOptions, MetaClient, MetaError};
use meridian_proto::ZoneId;

/// Options of `meridian mount`.
#[derive(Args)]
pub struct MountArgs {
    /// Metaserver addresses of the region (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub meta: Vec<String>,
    /// The volume to mount.
    #[arg(long, default_value = "default")]
    pub volume: String,
    /// Where to mount it (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// Let other users (and root) use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Kernel request threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
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
    /// Send every namespace change to the servers before answering it, instead of
    /// answering mkdir, rmdir and unlink alone in directories this mount made (held under
    /// a lease that other clients recall; see docs/adr/0006).
    #[arg(long)]
    pub no_write_back: bool,
}

pub fn run(args: MountArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
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
    let meta = Arc::new(MetaClient::new(args.meta.clone()).with_retry_for(Duration::from_secs(10)));
    let options = FsOptions {
        cache_bytes: args.cache_bytes,
        cache_ttl: Duration::from_secs(args.cache_ttl_secs),
        compact_after: Duration::from_secs(args.compact_after_secs),
        write_back: !args.no_write_back,
        ..Default::default()
    };
    let fs = rt
        .block_on(FileSystem::open(
            meta,
            &args.volume,
            args.zone.clone().map(ZoneId),
            options,
        ))
        .map_err(|e| match e {
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
        })?;

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
    config.n_threads = Some(args.threads.max(1));
    let root = fs.volume().root;
    // Before the mount: once mounted, resolving the path would ask this very process.
    let canonical = mnt.canonicalize().ok();
    let session = Session::new(FuseFs::new(fs.clone(), rt.handle().clone()), mnt, &config)
        .with_context(|| {
            format!(
                "cannot mount at {} (as non-root, fusermount3 from the fuse3 package is needed)",
                mnt.display()
            )
        })?;
    let mut session = session;
    if let Some(path) = &canonical {
        set_read_ahead(path, args.read_ahead_kb);
    }
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
    tracing::info!(mountpoint = %mnt.display(), "unmounted");
    Ok(())
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
