//! `kubectl attach` (and `kubectl run -i`): the container shim serves its container's streams on a
//! unix socket, `attach.sock` in the attempt's status directory, and the agent joins a client's
//! WebSocket session to it.
//!
//! The socket speaks frames of a channel byte, a big-endian `u32` length and the payload: the shim
//! sends output (1 stdout, 2 stderr; with a terminal everything is stdout) as it is written, from the
//! moment a client connects; a client sends stdin (0), terminal sizes (4: width and height as
//! big-endian `u16`s) and the end of its stdin (255). The shim is single-threaded and must never
//! block on a client: sockets are non-blocking and a client that cannot keep up is dropped, as is
//! stdin beyond [`MAX_PENDING_STDIN`] that the container does not read.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags};

/// Stdin from a client.
pub const STDIN: u8 = 0;
/// The container's stdout (with a terminal: all its output).
pub const STDOUT: u8 = 1;
/// The container's stderr.
pub const STDERR: u8 = 2;
/// A terminal size: width and height as big-endian `u16`s.
pub const RESIZE: u8 = 4;
/// The client's stdin has ended.
pub const CLOSE_STDIN: u8 = 255;

/// The socket's file name in the attempt's status directory.
pub const SOCKET: &str = "attach.sock";

/// Stdin the container has not read yet is kept up to this size; more is dropped.
const MAX_PENDING_STDIN: usize = 1 << 20;

/// The largest frame a client may send.
const MAX_FRAME: usize = 1 << 20;

/// One frame.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5);
    out.push(channel);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Splits complete frames off the front of `buf`.
fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<(u8, Vec<u8>)>, &'static str> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if len > MAX_FRAME {
            return Err("frame too large");
        }
        if buf.len() - at - 5 < len {
            break;
        }
        frames.push((buf[at], buf[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(frames)
}

/// A path to `dir/name` short enough for a unix socket address whatever the length of `dir`:
/// through an `O_PATH` descriptor of the directory, which must stay open while the path is used.
fn short_path(dir: &Path, name: &str) -> std::io::Result<(OwnedFd, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let fd = OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY)
            .open(dir)?,
    );
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd()));
    Ok((fd, path))
}

/// The shim's side: the listening socket, attached clients and the container's stdin.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    clients: Vec<Client>,
    /// Where stdin goes (a pipe's write end or the terminal's master side), while open.
    stdin: Option<OwnedFd>,
    /// Close the container's stdin when the first client that attached leaves.
    stdin_once: bool,
    pending: Vec<u8>,
    /// Stdin ends once `pending` is written.
    closing: bool,
    /// The terminal's master side, for sizes.
    tty: Option<OwnedFd>,
}

#[derive(Debug)]
struct Client {
    sock: UnixStream,
    input: Vec<u8>,
}

impl Server {
    /// Listens on `dir`/[`SOCKET`].
    pub fn bind(
        dir: &Path,
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        tty: Option<OwnedFd>,
    ) -> std::io::Result<Self> {
        let (_dir, path) = short_path(dir, SOCKET)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        if let Some(fd) = &stdin {
            set_nonblocking(fd)?;
        }
        Ok(Self {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
            pending: Vec::new(),
            closing: false,
            tty,
        })
    }

    /// What to poll: the listener, each client, and stdin while there is something to write.
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.clients {
            fds.push(PollFd::new(c.sock.as_fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = self.stdin.as_ref().filter(|_| !self.pending.is_empty()) {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
        }
        fds
    }

    /// Acts on what poll found ready, in the order of [`Server::poll_fds`].
    pub fn handle(&mut self, ready: &[bool]) {
        if ready.first() == Some(&true) {
            while let Ok((sock, _)) = self.listener.accept() {
                if sock.set_nonblocking(true).is_ok() {
                    self.clients.push(Client {
                        sock,
                        input: Vec::new(),
                    });
                }
            }
        }
        let polled = ready.len().saturating_sub(1).min(self.clients.len());
        let mut gone = Vec::new();
        for i in 0..polled {
            if ready[i + 1] && !self.read_client(i) {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
            if self.stdin_once {
                self.close_stdin();
            }
        }
        self.write_stdin();
    }

    /// Reads what client `i` sent; false once it has gone.
    fn read_client(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.clients[i].sock.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.clients[i].input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let Ok(frames) = take_frames(&mut self.clients[i].input) else {
            return false;
        };
        for (channel, data) in frames {
            match channel {
                STDIN if self.stdin.is_some() => {
                    let room = MAX_PENDING_STDIN.saturating_sub(self.pending.len());
                    self.pending.extend_from_slice(&data[..data.len().min(room)]);
                }
                RESIZE if data.len() == 4 => {
                    if let Some(tty) = &self.tty {
                        let width = u16::from_be_bytes([data[0], data[1]]);
                        let height = u16::from_be_bytes([data[2], data[3]]);
                        let _ = set_size(tty, width, height);
                    }
                }
                CLOSE_STDIN if self.stdin_once => self.close_stdin(),
                _ => {}
            }
        }
        true
    }

    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else { return };
        while !self.pending.is_empty() {
            match nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin.
                    self.pending.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.closing {
            self.finish_stdin();
        }
    }

    /// Ends the container's stdin once what is pending has been written: a pipe is closed; a
    /// terminal, which stays open for output, gets an end-of-file character.
    fn close_stdin(&mut self) {
        self.closing = true;
        self.write_stdin();
    }

    fn finish_stdin(&mut self) {
        self.closing = false;
        if self.tty.is_some()
            && let Some(fd) = &self.stdin
        {
            let _ = nix::unistd::write(fd, &[4u8]);
        }
        self.stdin = None;
    }

    /// Sends output to every client; a client that cannot take it now is dropped.
    pub fn output(&mut self, channel: u8, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let frame = frame(channel, data);
        self.clients.retain_mut(|c| c.sock.write_all(&frame).is_ok());
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sets the size of the terminal whose master side is `fd`.
pub fn set_size(fd: &impl AsFd, ws_col: u16, ws_row: u16) -> std::io::Result<()> {
    let size = rustix::termios::Winsize {
        ws_row,
        ws_col,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, size).map_err(std::io::Error::from)
}

/// The size in a resize message of the channel protocol (`{"Width":80,"Height":24}`).
pub fn parse_resize(json: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let width = u16::try_from(v["Width"].as_u64()?).ok()?;
    let height = u16::try_from(v["Height"].as_u64()?).ok()?;
    Some((width, height))
}

/// Connects to the attach socket in `status_dir` (the agent's side).
pub async fn connect(status_dir: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let (_dir, path) = short_path(status_dir, SOCKET)?;
    tokio::net::UnixStream::connect(&path).await
}

/// Reads one frame from the shim; `None` at the end of the stream.
pub async fn read_frame<R>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some((head[0], data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_their_boundaries() {
        let mut buf = frame(STDIN, b"hello");
        buf.extend(frame(RESIZE, &[0, 80, 0, 24]));
        buf.extend(&frame(STDIN, b"partial")[..6]);
        let frames = take_frames(&mut buf).unwrap();
        assert_eq!(
            frames,
            vec![(STDIN, b"hello".to_vec()), (RESIZE, vec![0, 80, 0, 24])]
        );
        assert_eq!(buf.len(), 6, "the partial frame waits for the rest");
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(take_frames(&mut huge).is_err());
    }

    #[test]
    fn resize_messages_parse() {
        assert_eq!(parse_resize(br#"{"Width":120,"Height":40}"#), Some((120, 40)));
        assert_eq!(parse_resize(b"{}"), None);
    }
}
