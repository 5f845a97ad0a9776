//! Terminals made inside the container, as runc makes them for containerd: with OCI
//! `process.terminal`, libcontainer's init opens a pty on the container's own devpts, makes it the
//! process's controlling terminal (`setsid` + `TIOCSCTTY`, so shells get job control), connects it
//! to fds 0-2, and sends the master side over a console socket that we listen on. The shim receives
//! it for a container's first process, the agent for an exec'd one.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// A console socket, in a directory of its own under the temporary directory (a pod's status
/// directory can be longer than a socket address may be); both go when it is dropped.
#[derive(Debug)]
pub struct Socket {
    /// Listening for the container's init.
    pub listener: UnixListener,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Socket {
    /// Binds a fresh console socket.
    pub fn bind() -> std::io::Result<Socket> {
        let dir = tempfile::Builder::new().prefix("skiff-console-").tempdir()?;
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path)?;
        Ok(Socket {
            listener,
            path,
            _dir: dir,
        })
    }

    /// Where libcontainer connects.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Waits (at most `timeout` for each step) for the container's init to connect and send its pty
/// master; blocking.
pub fn receive(listener: &UnixListener, timeout: Duration) -> std::io::Result<OwnedFd> {
    wait_readable(listener.as_fd(), timeout)?;
    let (conn, _) = listener.accept()?;
    wait_readable(conn.as_fd(), timeout)?;
    receive_fd(conn.as_fd())
}

/// [`receive`] from the async runtime, giving up when `gone` resolves first (the process that
/// should connect has ended).
pub async fn receive_async(
    socket: &Socket,
    gone: impl std::future::Future<Output = ()>,
) -> std::io::Result<OwnedFd> {
    let step = async {
        socket.listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(socket.listener.try_clone()?)?;
        let (conn, _) = listener.accept().await?;
        loop {
            conn.readable().await?;
            match conn.try_io(tokio::io::Interest::READABLE, || receive_fd(conn.as_fd())) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    };
    tokio::select! {
        fd = step => fd,
        () = gone => Err(std::io::Error::other("the process ended before its terminal was set up")),
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<()> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no terminal came from the container",
                ));
            }
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The one descriptor of an `SCM_RIGHTS` message on `conn`.
fn receive_fd(conn: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            return Ok(owned(fd));
        }
    }
    Err(std::io::Error::other("the console socket carried no terminal"))
}

#[expect(
    unsafe_code,
    reason = "taking ownership of a descriptor the kernel just gave us"
)]
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` came in this process's SCM_RIGHTS message: it is open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
