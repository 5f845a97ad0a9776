//! The API server for pods when it listens on the node's loopback only (a single-host cluster, or
//! `--listen 127.0.0.1:6443`): the `kubernetes` Service's endpoint is then a loopback address, which
//! inside a pod is the pod's own. The service proxy points such endpoints at the pod bridge's
//! address instead, and this relay, listening there on the API port, carries each connection to
//! the API server unchanged (TLS passes through end to end).

use std::net::{SocketAddr, SocketAddrV4};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// The loopback address and port of the API server at `server` (an `https://` URL), if it is on
/// loopback: only then do pods need the relay.
pub fn loopback_server(server: &str) -> Option<SocketAddrV4> {
    let rest = server.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let addr: SocketAddrV4 = match authority.parse() {
        Ok(a) => a,
        Err(_) => {
            let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "443"));
            if host != "localhost" {
                return None;
            }
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port.parse().ok()?)
        }
    };
    addr.ip().is_loopback().then_some(addr)
}

/// Listens on `addr` (the bridge address, in the node's network namespace, on the API port).
pub fn listen(addr: SocketAddrV4) -> anyhow::Result<TcpListener> {
    let listener = crate::network::pod_net::in_node_netns(|| -> std::io::Result<_> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .and_then(|r| r)
    .with_context(|| format!("listening on {addr} for the API server"))?;
    Ok(TcpListener::from_std(listener)?)
}

/// Relays the connections `listener` accepts to `upstream` (the API server on this host's
/// loopback) until the process ends.
pub async fn serve(listener: TcpListener, upstream: SocketAddrV4) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "API relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let result = async {
                let mut outbound = TcpStream::connect(SocketAddr::V4(upstream)).await?;
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "API relay connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_server_needs_the_relay() {
        assert_eq!(
            loopback_server("https://127.0.0.1:6443"),
            Some("127.0.0.1:6443".parse().unwrap())
        );
        assert_eq!(
            loopback_server("https://localhost:7000/"),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(loopback_server("https://10.0.0.5:6443"), None);
        assert_eq!(loopback_server("https://api.example.com:6443"), None);
        assert_eq!(loopback_server("http://127.0.0.1:6443"), None);
    }

    #[tokio::test]
    async fn bytes_go_both_ways_unchanged() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(upstream) = server.local_addr().unwrap() else {
            unreachable!()
        };
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(listen) = probe.local_addr().unwrap() else {
            unreachable!()
        };
        drop(probe);
        tokio::spawn(serve(self::listen(listen).unwrap(), upstream));
        tokio::spawn(async move {
            let (mut conn, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let mut client = loop {
            match TcpStream::connect(SocketAddr::V4(listen)).await {
                Ok(c) => break c,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        client.write_all(b"hello").await.unwrap();
        let mut answer = [0u8; 5];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HELLO");
    }
}
