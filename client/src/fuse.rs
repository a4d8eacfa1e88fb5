//! The FUSE adapter: the kernel's requests, answered by the file layer. fuser calls these
//! methods on its event-loop threads; each one copies its arguments and polls the answer
//! once there: what is known at once is answered on that thread, and the rest moves with
//! its reply into a tokio task, so a slow RPC never blocks a kernel queue (`fuse/answer.rs`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags as FuseRenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use meridian_proto::InodeId;
use meridian_proto::ns::{FileKind, RenameFlags, SetAttr, SetTime, XattrMode};
use tokio::runtime::Handle;

use crate::fs::{FileSystem, Seek};

mod answer;
mod convert;
mod dirs;
#[macro_use]
mod drain;
mod notify;
mod parked;
mod standby;
use convert::{creds, err, kind_of_mode, timespec};
use dirs::{OpenDirs, reply_listing};
pub use drain::Drain;
pub use notify::KernelNotifier;
use standby::Standby;

/// A volume mounted through FUSE.
pub struct FuseFs {
    fs: Arc<FileSystem>,
    rt: Handle,
    root: InodeId,
    dirs: Arc<OpenDirs>,
    drain: Arc<Drain>,
    /// The session's kernel request threads, of which one reads the kernel's queue at a
    /// time (`standby.rs`).
    standby: Arc<Standby>,
    /// What a kernel request thread calls before it waits on a chunkserver.
    before_wait: crate::blocks::BeforeWait,
}

impl FuseFs {
    /// Serves `fs` with a session of `threads` kernel request threads, running its work
    /// on `rt`; with `stand_by`, one reads the kernel's queue per caller calling at once
    /// (`standby.rs`), otherwise all do.
    pub fn new(fs: Arc<FileSystem>, rt: Handle, threads: usize, stand_by: bool) -> Self {
        let root = fs.volume().root;
        let dirs = Arc::new(OpenDirs {
            next: std::sync::atomic::AtomicU64::new(fs.handle_base().max(1) - 1),
            ..Default::default()
        });
        let standby = Arc::new(Standby::new(if stand_by { threads } else { 1 }));
        let before_wait: crate::blocks::BeforeWait = {
            let standby = standby.clone();
            Arc::new(move || standby.waits())
        };
        FuseFs {
            fs,
            rt,
            root,
            dirs,
            drain: Arc::default(),
            standby,
            before_wait,
        }
    }

    /// What stops this mount from answering, for a handover.
    pub fn drain(&self) -> Arc<Drain> {
        self.drain.clone()
    }

    /// Takes on a file handle a previous serving process opened (see
    /// [`FileSystem::adopt_handle`]).
    fn adopt(&self, req: &Request, ino: INodeNo, fh: FileHandle, flags: Option<OpenFlags>) {
        if self.fs.adopts_handles() {
            let append = flags.is_some_and(|f| f.0 & libc::O_APPEND != 0);
            let writable = flags.map(|f| f.0 & libc::O_ACCMODE != libc::O_RDONLY);
            self.fs
                .adopt_handle(fh.0, self.ino(ino), append, writable, &creds(req));
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The servers drop setuid and setgid at writes, truncates and chowns, and the
        // mount a file's capability at every write (`FileSystem::drop_capability`). With
        // the second version the kernel, once it found a file had neither, remembers so
        // until it learns the file's attributes again rather than asking for
        // `security.capability` before every write: one request to this process less
        // per write.
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_HANDLE_KILLPRIV,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        unless_draining!(self, reply);
        let (fs, parent, name, c) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_entry(
            req,
            reply,
            async move { fs.lookup(parent, &name, &c).await },
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // Sent when the kernel evicts the inode: its cached pages are gone. Evictions
        // come in bursts, ahead of other requests: more threads read meanwhile.
        self.standby.wanted();
        self.fs.forget(self.ino(ino));
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        unless_draining!(self, reply);
        let (fs, ino) = (self.fs.clone(), self.ino(ino));
        let this = self.clone_view();
        let epoch = fs.cache_epoch();
        self.spawn(req, async move {
            match fs.getattr(ino).await {
                Ok(a) => fs.reply_cached(epoch, |ttl| reply.attr(&ttl, &this.attr(&a))),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        unless_draining!(self, reply);
        let t = |x: Option<TimeOrNow>| {
            x.map(|v| match v {
                TimeOrNow::Now => SetTime::Now,
                TimeOrNow::SpecificTime(s) => SetTime::At(timespec(s)),
            })
        };
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: t(atime),
            mtime: t(mtime),
            via_handle: fh.is_some(),
        };
        let (fs, ino, c, this) = (
            self.fs.clone(),
            self.ino(ino),
            creds(req),
            self.clone_view(),
        );
        let epoch = fs.cache_epoch();
        self.spawn(req, async move {
            match fs.setattr(ino, set, &c).await {
                Ok(a) => fs.reply_cached(epoch, |ttl| reply.attr(&ttl, &this.attr(&a))),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        unless_draining!(self, reply);
        let (fs, ino) = (self.fs.clone(), self.ino(ino));
        self.spawn(req, async move {
            match fs.readlink(ino).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        unless_draining!(self, reply);
        let Some(k) = kind_of_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let (fs, parent, name, c) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_entry(req, reply, async move {
            fs.mknod(parent, &name, k, (mode & 0o7777) as u16, rdev, &c)
                .await
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        unless_draining!(self, reply);
        let (fs, parent, name, c) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_entry(req, reply, async move {
            fs.mknod(parent, &name, FileKind::Dir, (mode & 0o7777) as u16, 0, &c)
                .await
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        unless_draining!(self, reply);
        let (fs, parent, name, c) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_empty(
            req,
            reply,
            async move { fs.unlink(parent, &name, &c).await },
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        unless_draining!(self, reply);
        let (fs, parent, name, c) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_empty(req, reply, async move { fs.rmdir(parent, &name, &c).await });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        unless_draining!(self, reply);
        let (fs, parent, name, c) = (
            self.fs.clone(),
            self.ino(parent),
            link_name.as_bytes().to_vec(),
            creds(req),
        );
        let target = target.as_os_str().as_bytes().to_vec();
        self.reply_entry(req, reply, async move {
            fs.symlink(parent, &name, &target, &c).await
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        if flags.contains(FuseRenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let f = RenameFlags {
            noreplace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
        };
        let (fs, p, n, c) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
        );
        let (np, nn) = (self.ino(newparent), newname.as_bytes().to_vec());
        self.reply_empty(
            req,
            reply,
            async move { fs.rename(p, &n, np, &nn, f, &c).await },
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        unless_draining!(self, reply);
        let (fs, ino, np, nn, c) = (
            self.fs.clone(),
            self.ino(ino),
            self.ino(newparent),
            newname.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_entry(req, reply, async move { fs.link(ino, np, &nn, &c).await });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        unless_draining!(self, reply);
        let append = flags.0 & libc::O_APPEND != 0;
        let (fs, ino, c) = (self.fs.clone(), self.ino(ino), creds(req));
        self.spawn(req, async move {
            match fs.open_file(ino, append, &c).await {
                Ok((fh, keep_cache)) => {
                    let flags = if fs.linearizable() {
                        // Every read asks the servers: the page cache keeps nothing.
                        FopenFlags::FOPEN_DIRECT_IO
                    } else if keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                // The inode the kernel looked up is gone: another client replaced or
                // removed the name since. ESTALE has the kernel look the path up again
                // (once), so an open of a name replaced by a rename finds the new file,
                // as on a local disk, rather than failing.
                Err(e) if e == libc::ENOENT => reply.error(Errno::ESTALE),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        unless_draining!(self, reply);
        self.adopt(req, ino, fh, Some(flags));
        let fs = self.fs.clone();
        self.spawn(req, async move {
            match fs.read(fh.0, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        unless_draining!(self, reply);
        self.adopt(req, ino, fh, Some(flags));
        let (fs, data) = (self.fs.clone(), data.to_vec());
        self.spawn(req, async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        self.adopt(req, ino, fh, None);
        let fs = self.fs.clone();
        self.reply_empty(req, reply, async move { fs.flush(fh.0).await });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        self.adopt(req, ino, fh, Some(flags));
        let fs = self.fs.clone();
        self.reply_empty(req, reply, async move { fs.release(fh.0).await });
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        // Blocks are durable on R (at least W) chunkservers, or staged in the commit, and
        // the commit is durable in the Raft group once this returns.
        self.adopt(req, ino, fh, None);
        let fs = self.fs.clone();
        self.reply_empty(req, reply, async move { fs.fsync(fh.0).await });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        unless_draining!(self, reply);
        self.keep_listing(req, ino, None, move |kept| match kept {
            Ok((fh, _)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        unless_draining!(self, reply);
        let listing = self
            .dirs
            .listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        match listing {
            Some(listing) => reply_listing(&listing, offset, reply),
            None if self.fs.adopts_handles() => {
                // A handle of the process that served before: listed again under it, so
                // the reader carries on (from the same offset of a fresh listing).
                self.keep_listing(req, ino, Some(fh.0), move |kept| match kept {
                    Ok((_, all)) => reply_listing(&all, offset, reply),
                    Err(e) => reply.error(err(e)),
                });
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        self.dirs
            .listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        // What this mount answered alone is sent and committed first (docs/adr/0006).
        let fs = self.fs.clone();
        self.reply_empty(req, reply, async move { fs.sync_namespace().await });
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        unless_draining!(self, reply);
        let fs = self.fs.clone();
        self.spawn(req, async move {
            match fs.statfs().await {
                Ok((total, used, inodes)) => {
                    let bsize = 4096u64;
                    let blocks = total / bsize;
                    let free = blocks.saturating_sub(used.div_ceil(bsize));
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        inodes + (1 << 32),
                        1 << 32,
                        bsize as u32,
                        255,
                        bsize as u32,
                    )
                }
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        let mode = match flags {
            0 => XattrMode::Any,
            f if f == libc::XATTR_CREATE => XattrMode::Create,
            f if f == libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let (fs, ino, name, value, c) = (
            self.fs.clone(),
            self.ino(ino),
            name.as_bytes().to_vec(),
            value.to_vec(),
            creds(req),
        );
        self.reply_empty(req, reply, async move {
            fs.setxattr(ino, &name, &value, mode, &c).await
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        unless_draining!(self, reply);
        let (fs, ino, name, c) = (
            self.fs.clone(),
            self.ino(ino),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.spawn(req, async move {
            match fs.getxattr(ino, &name, &c).await {
                Ok(v) => answer::reply_xattr(reply, size, &v),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        unless_draining!(self, reply);
        let (fs, ino, c) = (self.fs.clone(), self.ino(ino), creds(req));
        self.spawn(req, async move {
            match fs.listxattr(ino, &c).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    answer::reply_xattr(reply, size, &buf)
                }
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        unless_draining!(self, reply);
        let (fs, ino, name, c) = (
            self.fs.clone(),
            self.ino(ino),
            name.as_bytes().to_vec(),
            creds(req),
        );
        self.reply_empty(
            req,
            reply,
            async move { fs.removexattr(ino, &name, &c).await },
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        unless_draining!(self, reply);
        // Mounted with default_permissions: the kernel checks mode bits itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        unless_draining!(self, reply);
        let exclusive = flags & libc::O_EXCL != 0;
        let append = flags & libc::O_APPEND != 0;
        let (fs, parent, name, c, this) = (
            self.fs.clone(),
            self.ino(parent),
            name.as_bytes().to_vec(),
            creds(req),
            self.clone_view(),
        );
        let epoch = fs.cache_epoch();
        self.spawn(req, async move {
            match fs
                .create(parent, &name, (mode & 0o7777) as u16, exclusive, append, &c)
                .await
            {
                Ok((a, fh)) => fs.reply_cached(epoch, |ttl| {
                    let flags = if fs.linearizable() {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        FopenFlags::empty()
                    };
                    reply.created(&ttl, &this.attr(&a), Generation(0), FileHandle(fh), flags)
                }),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        unless_draining!(self, reply);
        let (fs, ino, c) = (self.fs.clone(), self.ino(ino), creds(req));
        self.reply_empty(req, reply, async move {
            fs.fallocate(ino, offset, length, mode, &c).await
        });
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        unless_draining!(self, reply);
        // SEEK_SET, SEEK_CUR and SEEK_END never reach the filesystem.
        let whence = match whence {
            libc::SEEK_DATA => Seek::Data,
            libc::SEEK_HOLE => Seek::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let (fs, ino) = (self.fs.clone(), self.ino(ino));
        self.spawn(req, async move {
            match fs.seek(ino, offset, whence).await {
                Ok(at) => reply.offset(at as i64),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        unless_draining!(self, reply);
        let (fs, src, dst, c) = (
            self.fs.clone(),
            self.ino(ino_in),
            self.ino(ino_out),
            creds(req),
        );
        // The kernel takes the count as 32 bits; longer copies come back for the rest.
        let len = len.min(u64::from(!0xfffu32));
        self.spawn(req, async move {
            match fs
                .copy_range(src, offset_in, dst, offset_out, len, &c)
                .await
            {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(err(e)),
            }
        });
    }
}
