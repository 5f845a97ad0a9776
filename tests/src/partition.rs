//! Network partitions between store members on loopback, without touching the host's network:
//! each member advertises a Raft address served by a [`Link`] of the test's, which forwards to
//! the member's real Raft port. Members dial from their own loopback address (`127.0.0.N`), so a
//! link knows which member each connection comes from and can cut some of them off: while a
//! source is blocked its connections carry nothing (bytes wait, as over a dead route) and new
//! ones are held unanswered; once unblocked they flow again.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The forwarder in front of one member's Raft port.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    blocked: Arc<Mutex<HashSet<IpAddr>>>,
    stop: Arc<AtomicBool>,
}

impl Link {
    /// Listens on a free port of `ip` (the address to advertise); forwards nothing until
    /// [`Link::forward_to`].
    pub fn listen(ip: &str) -> Link {
        let listener = TcpListener::bind((ip, 0)).expect("binding a link");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let link = Link {
            addr: listener.local_addr().expect("link address"),
            target: Arc::default(),
            blocked: Arc::default(),
            stop: Arc::default(),
        };
        let (target, blocked, stop) = (link.target.clone(), link.blocked.clone(), link.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (client, peer) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let Some(to) = *target.lock().unwrap() else {
                    continue;
                };
                let (blocked, stop) = (blocked.clone(), stop.clone());
                std::thread::spawn(move || {
                    // A connection from a blocked member waits, unanswered, for the partition to heal.
                    while blocked.lock().unwrap().contains(&peer.ip()) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let Ok(server) = TcpStream::connect(to) else {
                        return;
                    };
                    let _ = client.set_nonblocking(false);
                    for s in [&client, &server] {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                    }
                    let (c2, s2) = (client.try_clone(), server.try_clone());
                    let (Ok(c2), Ok(s2)) = (c2, s2) else { return };
                    let pump = move |mut from: TcpStream,
                                     mut to: TcpStream,
                                     blocked: Arc<Mutex<HashSet<IpAddr>>>,
                                     stop: Arc<AtomicBool>| {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            if blocked.lock().unwrap().contains(&peer.ip()) {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    };
                    let (b, s) = (blocked.clone(), stop.clone());
                    std::thread::spawn(move || pump(s2, c2, b, s));
                    pump(client, server, blocked, stop);
                });
            }
        });
        link
    }

    /// The address members dial (the member's `--raft-advertise`).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Starts forwarding to the member's Raft port.
    pub fn forward_to(&self, target: &str) {
        *self.target.lock().unwrap() = Some(target.parse().expect("a socket address"));
    }

    /// Cuts off (or, with `false`, lets through again) the member dialing from `ip`.
    pub fn block(&self, ip: &str, blocked: bool) {
        let ip: IpAddr = ip.parse().expect("an IP address");
        let mut set = self.blocked.lock().unwrap();
        if blocked {
            set.insert(ip);
        } else {
            set.remove(&ip);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Cuts `a` and `b` (members' addresses, with their links) off from each other, or joins them
/// again.
pub fn partition(links: &[(&str, &Link)], a: &[&str], b: &[&str], cut: bool) {
    for (ip, link) in links {
        if a.contains(ip) {
            for other in b {
                link.block(other, cut);
            }
        }
        if b.contains(ip) {
            for other in a {
                link.block(other, cut);
            }
        }
    }
}
