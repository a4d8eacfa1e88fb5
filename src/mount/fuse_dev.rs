//! The FUSE device as the mount supervisor uses it (docs/adr/0008): opened and mounted
//! here (mount(2) with the device's fd, as root; through fusermount3 otherwise), the kernel's INIT request read and kept
//! so that every serving process can be introduced to the connection, and the kernel
//! asked to send again what a serving process read and never answered.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The INIT opcode.
const FUSE_INIT: u32 = 26;
/// `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, extlen, padding.
const IN_HEADER_LEN: usize = 40;
/// FUSE_NOTIFY_RESEND (Linux 6.9): requests read but not answered go back to the queue.
const NOTIFY_RESEND: i32 = 7;
/// A read of the device needs room for the largest request (1 MiB of data and headers).
const READ_BUF: usize = (1 << 20) + (64 << 10);

/// Opens /dev/fuse.
pub fn open_dev() -> io::Result<OwnedFd> {
    let path = CString::new("/dev/fuse").expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mounts the connection of `dev` at `mountpoint` (root only), as fuser would: type
/// `fuse.meridian`, source `meridian:<volume>`, the kernel checking permissions.
pub fn mount(dev: &OwnedFd, mountpoint: &Path, volume: &str, allow_other: bool) -> io::Result<()> {
    let target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mountpoint holds a NUL"))?;
    let source = CString::new(format!("meridian:{volume}")).expect("volume names hold no NUL");
    let fstype = CString::new("fuse.meridian").expect("no NUL");
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let data = CString::new(data).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; `data` is the fuse options string.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process runs as root (and mounts and unmounts itself).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts a new connection at `mountpoint` without privileges, through fusermount3
/// (setuid root, from the fuse3 package): it opens the device, mounts it with the options
/// given, and hands the device back over a socket named by `_FUSE_COMMFD`.
pub fn mount_unprivileged(
    mountpoint: &Path,
    volume: &str,
    allow_other: bool,
) -> io::Result<OwnedFd> {
    use std::os::unix::process::CommandExt;
    let mut fds = [0i32; 2];
    // Both close-on-exec: no other exec inherits them; fusermount3's end is made
    // inheritable in its own child only.
    // SAFETY: `fds` is valid for two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let their_fd = theirs.as_raw_fd();
    let mut opts = format!("fsname=meridian:{volume},subtype=meridian,default_permissions");
    if allow_other {
        opts.push_str(",allow_other");
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(&opts)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string());
    // SAFETY: only fcntl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("fusermount3 (fuse3): {e}")))?;
    drop(theirs);
    if !status.success() {
        return Err(io::Error::other(format!(
            "fusermount3 could not mount ({status})"
        )));
    }
    recv_fd(ours.as_fd()).inspect_err(|_| {
        // Mounted, and no device to serve it with: not left behind dead.
        fusermount_unmount(mountpoint, true);
    })
}

/// Receives the one fd a message on `sock` carries.
fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one SCM_RIGHTS message with one fd, aligned as a cmsghdr must be.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; its pointers are set just below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    loop {
        // SAFETY: `msg` points at buffers valid for the lengths it gives.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n > 0 {
            break;
        }
        if n == 0 {
            return Err(io::Error::other("fusermount3 sent no device"));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("fusermount3 sent more than a device"));
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR checks the control length.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: a non-null cmsg points into `control`; CMSG_LEN is arithmetic.
    if cmsg.is_null()
        || unsafe {
            (*cmsg).cmsg_level != libc::SOL_SOCKET
                || (*cmsg).cmsg_type != libc::SCM_RIGHTS
                || ((*cmsg).cmsg_len as usize) < libc::CMSG_LEN(4) as usize
        }
    {
        return Err(io::Error::other("fusermount3 sent no device"));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int, which this process now owns.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>()) };
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unmounts through fusermount3 (`lazy`: detached, whatever is still open).
fn fusermount_unmount(path: &Path, lazy: bool) -> bool {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    cmd.arg("--")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Reads the kernel's INIT request, which it sends as soon as the mount is made.
pub fn read_init(dev: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        buf.truncate(n);
        if n < IN_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short FUSE request",
            ));
        }
        let opcode = u32::from_ne_bytes(buf[4..8].try_into().expect("4 bytes"));
        if opcode != FUSE_INIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the kernel's first request is opcode {opcode}, not INIT"),
            ));
        }
        return Ok(buf);
    }
}

/// Asks the kernel to send again every request a serving process read and did not
/// answer (it died, or handed over): they go back to the queue the next process reads.
pub fn notify_resend(dev: BorrowedFd<'_>) -> io::Result<()> {
    // `struct fuse_out_header` { len: u32, error: i32 (the notify code), unique: u64 = 0 }.
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&NOTIFY_RESEND.to_ne_bytes());
    // SAFETY: `msg` is valid for 16 bytes.
    let n = unsafe { libc::write(dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` is a FUSE mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.as_os_str().as_bytes();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| unescape(p).as_bytes() == want)
                    && l.contains(" - fuse")
            })
        })
        .unwrap_or(false)
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Detaches the mount at `path` (whatever state its connection is in).
pub fn detach(path: &Path) {
    if !is_root() {
        fusermount_unmount(path, true);
        return;
    }
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Unmounts the mount at `path`; detaches it if busy.
pub fn unmount(path: &Path) {
    if !is_root() {
        if !fusermount_unmount(path, false) {
            fusermount_unmount(path, true);
        }
        return;
    }
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            // SAFETY: as above.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A connected pair of message sockets (each message read whole), close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is valid for two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message.
pub fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: `msg` is valid for its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message (empty: the other end closed).
pub fn recv(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
