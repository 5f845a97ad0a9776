//! Raft transport over tonic: the client side (one per peer), the calls a follower makes to the
//! leader (forwarded writes, read index, membership changes), and the gRPC service. Between
//! members it is mutual TLS with certificates from the cluster CA that name a store member
//! (organization `system:skiff-members`); a certificate of any other kind (an admin's, a node's)
//! is refused.
//!
//! Log replication (AppendEntries, heartbeats included) has a path of its own beside gRPC on the
//! same port: a TLS connection negotiated with the ALPN protocol [`STREAM_ALPN`] carries
//! length-prefixed frames, one request and then its answer, written and read by the task that
//! calls (and on the far side by the connection's task, which hands the request to Raft itself).
//! A unary gRPC call passes through several tasks on each side (tonic's buffer, the HTTP/2
//! connection, the stream's handler), each a thread wake-up; on a virtual machine those cost
//! 300-400 µs per round trip here, more than the follower's fsync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_proto::raft::v1::RaftPayload;
use skiff_proto::raft::v1::raft_service_client::RaftServiceClient;
use skiff_proto::raft::v1::raft_service_server::RaftService;
use tonic::transport::Channel;

use super::disk::DiskGuard;
use super::types::{MemberStatus, MembershipOp, NodeId, Raft, Request, Response, TypeConfig, decode, encode};
use crate::store::watch::WatchHub;

/// The organization every store member's peer certificate carries.
pub const MEMBER_ORG: &str = "system:skiff-members";
/// The name every member's peer certificate is issued for (and verified against).
pub const MEMBER_NAME: &str = "skiff-member";

/// This member's credentials for the Raft transport: the cluster CA and a certificate from it
/// for [`MEMBER_NAME`] in [`MEMBER_ORG`], for both ends.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// This member's certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM.
    pub key_pem: String,
}

// TLS is done here with tokio-rustls rather than by tonic's `tls-*` features: those make every
// tonic channel of the build (the agent's too, built alongside) refuse `https` URIs it has no TLS
// configuration of its own for.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(roots))
    }

    fn identity(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        String,
    > {
        let certs = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| e.to_string())?
            .ok_or("no private key in the member certificate")?;
        Ok((certs, key))
    }

    /// The server side: this certificate; clients must present one from the CA (the etcd API
    /// serves this way too, with the API server's certificate).
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(|e| e.to_string())?;
        let (certs, key) = self.identity()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn client(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.client_speaking(b"h2")
    }

    /// The Raft listener's server side: gRPC and the replication stream.
    pub(super) fn raft_server(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = (*self.server()?).clone();
        config.alpn_protocols.push(STREAM_ALPN.to_vec());
        Ok(Arc::new(config))
    }

    fn client_speaking(&self, protocol: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
        let (certs, key) = self.identity()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The ALPN protocol of the replication stream.
pub(super) const STREAM_ALPN: &[u8] = b"skiff-raft-stream/1";
/// The largest frame either side accepts (an append is at most a few batches of 1 MiB).
const MAX_FRAME: u32 = 256 << 20;

/// Writes one frame: its length, then the bytes, in one TLS record where they fit.
async fn write_frame<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let len = u32::try_from(data.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("a Raft frame over its limit"))?;
    let mut buf = Vec::with_capacity(4 + data.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(data);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads one frame; `None` at a clean end of the stream before one starts.
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a Raft frame of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    stream.read_exact(&mut data).await?;
    Ok(Some(data))
}

type TlsClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type TlsServerStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// What the far side of a replication stream answers: refused (its disk is full), or Raft's
/// answer.
type StreamReply = Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, String>;

/// Serves one replication stream: each frame an AppendEntries request, answered in turn. Ends
/// with the stream or when `stop` says the member's transport stops.
async fn serve_stream(
    mut stream: TlsServerStream,
    raft: Raft,
    disk: Arc<DiskGuard>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let read = tokio::select! {
            read = read_frame(&mut stream) => read,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "raft stream closed");
                return;
            }
        };
        let rpc: AppendEntriesRequest<TypeConfig> = match decode(&frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "an undecodable frame on a raft stream");
                return;
            }
        };
        let reply: StreamReply = match disk.refusal() {
            Some(why) => Err(why),
            None => Ok(raft.append_entries(rpc).await),
        };
        if let Err(e) = write_frame(&mut stream, &encode(&reply)).await {
            tracing::debug!(error = %e, "raft stream closed");
            return;
        }
    }
}

/// The Raft listener's connections: replication streams are served here, the rest (gRPC) are
/// handed on.
pub(super) fn raft_incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    raft: Raft,
    disk: Arc<DiskGuard>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsServerStream>> {
    use tokio_stream::StreamExt;
    tls_incoming(listener, tls, is_member, MEMBER_ORG).filter_map(move |conn| match conn {
        Ok(tls) if tls.get_ref().1.alpn_protocol() == Some(STREAM_ALPN) => {
            tokio::spawn(serve_stream(tls, raft.clone(), disk.clone(), stop.clone()));
            None
        }
        other => Some(other),
    })
}

/// Accepts connections on `listener`, each through a TLS handshake of its own (a slow client
/// holds up nobody), as a stream for tonic's server: only callers whose certificate `allow`s
/// (`who` says whom, in the log) get through.
pub fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    allow: fn(&[u8]) -> bool,
    who: &'static str,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "raft transport accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            // Small answers (a put's) must not wait for Nagle and the peer's delayed ACK (40 ms).
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        // The CA vouches for every certificate it issued (admins', nodes'): only
                        // the callers' kind is let in.
                        let allowed = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .is_some_and(|c| allow(c));
                        if allowed {
                            drop(tx.send(Ok(tls)).await);
                        } else {
                            tracing::warn!(
                                peer = ?tls.get_ref().0.peer_addr().ok(),
                                "refused a connection whose certificate is not in {who}"
                            );
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "raft transport TLS handshake"),
                    Err(_) => tracing::debug!("raft transport TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A TCP connection to `host:port`, from `source` when given (a member listening on one address
/// speaks from it too, so its peers, and a test's partitions, see which member dials).
async fn dial(
    host: &str,
    port: u16,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = source else {
        return tokio::net::TcpStream::connect((host, port)).await;
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("no address for {host}"));
    for to in tokio::net::lookup_host((host, port)).await? {
        let socket = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if source.is_ipv4() == to.is_ipv4() {
            socket.bind(std::net::SocketAddr::new(source, 0))?;
        }
        match socket.connect(to).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A TLS connection to a member at `host:port` (see [`dial`]), with Nagle off: Raft's messages
/// are small and must not wait for the peer's delayed ACK.
async fn dial_tls(
    host: &str,
    port: u16,
    source: Option<std::net::IpAddr>,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsClientStream> {
    let tcp = dial(host, port, source).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(MEMBER_NAME).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// Opens a channel to a member's Raft address.
async fn connect(
    addr: &str,
    tls: Option<&PeerTls>,
    source: Option<std::net::IpAddr>,
) -> Result<Channel, String> {
    // The scheme is `http` either way: TLS, when configured, is the connector's.
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        // A connection that stops carrying anything (a partition, a member frozen) is found
        // within about a second and its calls fail, instead of waiting for their own timeouts.
        .http2_keep_alive_interval(Duration::from_millis(300))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true);
    let connected = match tls {
        None => endpoint.connect().await,
        Some(tls) => {
            let config = tls.client()?;
            let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
                let config = config.clone();
                async move {
                    let host = uri.host().unwrap_or_default().to_owned();
                    let tls = dial_tls(&host, uri.port_u16().unwrap_or(80), source, config).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            });
            endpoint.connect_with_connector(connector).await
        }
    };
    connected.map_err(|e| format!("connecting to {addr}: {e}"))
}

/// One HTTP/2 connection per member address, shared by every client of this member: openraft
/// makes a new client for each leadership confirmation (every linearizable read), which must not
/// cost a TLS handshake.
#[derive(Debug, Default)]
pub(super) struct Channels {
    tls: Option<Arc<PeerTls>>,
    /// The address connections are made from (the member's Raft listening address, when it is
    /// not a wildcard).
    source: Option<std::net::IpAddr>,
    open: Mutex<HashMap<String, Channel>>,
    /// Idle replication streams by member address.
    streams: Mutex<HashMap<String, Vec<TlsClientStream>>>,
}

/// Idle replication streams kept per member (replication and leadership confirmations use
/// them, a few at a time).
const IDLE_STREAMS: usize = 4;

impl Channels {
    pub(super) fn new(tls: Option<Arc<PeerTls>>, source: Option<std::net::IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            tls,
            source,
            open: Mutex::default(),
            streams: Mutex::default(),
        })
    }

    /// Sends one frame on a replication stream to `addr` and reads the answer, within `ttl`
    /// (connecting included). A stream that fails or times out is closed.
    async fn stream_call(
        &self,
        tls: &PeerTls,
        addr: &str,
        frame: &[u8],
        ttl: Duration,
    ) -> Result<Vec<u8>, String> {
        let idle = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
            .and_then(Vec::pop);
        let call = async {
            let mut stream = match idle {
                Some(s) => s,
                None => self.open_stream(tls, addr).await?,
            };
            write_frame(&mut stream, frame).await.map_err(|e| e.to_string())?;
            let answer = read_frame(&mut stream)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the member closed the stream")?;
            Ok::<_, String>((stream, answer))
        };
        let (stream, answer) = tokio::time::timeout(ttl, call)
            .await
            .map_err(|_| format!("no answer from {addr} within {ttl:?}"))??;
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let pool = streams.entry(addr.to_owned()).or_default();
        if pool.len() < IDLE_STREAMS {
            pool.push(stream);
        }
        Ok(answer)
    }

    async fn open_stream(&self, tls: &PeerTls, addr: &str) -> Result<TlsClientStream, String> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse().ok()?)))
            .ok_or_else(|| format!("{addr}: not host:port"))?;
        let stream = dial_tls(host, port, self.source, tls.client_speaking(STREAM_ALPN)?)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        if stream.get_ref().1.alpn_protocol() != Some(STREAM_ALPN) {
            return Err(format!("{addr} does not speak the replication stream"));
        }
        Ok(stream)
    }

    fn forget_streams(&self, addr: &str) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }

    async fn get(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let c = connect(addr, self.tls.as_deref(), self.source).await?;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    fn forget(&self, addr: &str) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(addr);
    }
}

/// Creates a client per peer.
#[derive(Debug, Clone)]
pub struct Network {
    pub(super) channels: Arc<Channels>,
    /// This member's disk: while it is full, the member takes no part in Raft's traffic.
    pub(super) disk: Arc<DiskGuard>,
    /// Set once another member has answered this one's traffic with [`REMOVED`].
    pub(super) removed: Arc<AtomicBool>,
}

/// What a member answers the Raft traffic of a member removed from the cluster with (etcd's
/// words); told so, the removed member stops. A removed member may never see the membership
/// that leaves it out (the others stop replicating to it once that is committed), so this is how
/// it learns: it stands for election when its leader falls silent, and is refused.
pub(super) const REMOVED: &str = "the member has been permanently removed from the cluster";

/// The key that records a removed member, written before it is removed. Member IDs are random
/// and never reused, so the record stays.
pub(super) fn removed_key(id: NodeId) -> String {
    format!("/skiff/removed-members/{id:016x}")
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            client: None,
            disk: self.disk.clone(),
            removed: self.removed.clone(),
        }
    }
}

/// A lazily connected client for one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    channels: Arc<Channels>,
    client: Option<RaftServiceClient<Channel>>,
    disk: Arc<DiskGuard>,
    removed: Arc<AtomicBool>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn client<E: std::error::Error>(&mut self) -> Result<RaftServiceClient<Channel>, RpcErr<E>> {
        // A member whose disk is full steps out of the cluster's traffic (it could not store
        // what it is sent, and should not lead): the others carry on, and it catches up once
        // space returns.
        if let Some(why) = self.disk.refusal() {
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                why,
            ))));
        }
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let channel = self
            .channels
            .get(&self.addr)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let client = RaftServiceClient::new(channel);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// AppendEntries on a replication stream (members with TLS: every multi-member cluster).
    async fn stream_append(
        &mut self,
        tls: &PeerTls,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let unreachable = |e: String| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e)));
        if let Some(why) = self.disk.refusal() {
            return Err(unreachable(why));
        }
        let answer = match self
            .channels
            .stream_call(tls, &self.addr, &encode(rpc), ttl)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(target = self.target, error = %e, "raft stream call failed");
                self.channels.forget_streams(&self.addr);
                return Err(unreachable(e));
            }
        };
        let reply: StreamReply = decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply
            .map_err(unreachable)?
            .map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    fn decode_reply<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        reply: Result<tonic::Response<RaftPayload>, tonic::Status>,
    ) -> Result<T, RpcErr<E>> {
        let payload = reply.map_err(|s| {
            tracing::debug!(target = self.target, status = %s, "raft rpc failed");
            RPCError::Unreachable(Unreachable::new(&s))
        })?;
        let result: Result<T, RaftError<NodeId, E>> =
            decode(&payload.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        if let Some(tls) = self.channels.tls.clone() {
            return self.stream_append(&tls, &rpc, option.hard_ttl()).await;
        }
        let mut client = self.client().await?;
        let reply = client.append_entries(RaftPayload { data: encode(&rpc) }).await;
        if reply.is_err() {
            self.client = None;
            self.channels.forget(&self.addr);
        }
        self.decode_reply(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let mut client = self.client().await?;
        let reply = client.install_snapshot(RaftPayload { data: encode(&rpc) }).await;
        if reply.is_err() {
            self.client = None;
            self.channels.forget(&self.addr);
        }
        self.decode_reply(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let mut client = self.client().await?;
        let reply = client.vote(RaftPayload { data: encode(&rpc) }).await;
        if let Err(s) = &reply
            && s.code() == tonic::Code::FailedPrecondition
            && s.message() == REMOVED
        {
            self.removed.store(true, Ordering::Relaxed);
        }
        if reply.is_err() {
            self.client = None;
            self.channels.forget(&self.addr);
        }
        self.decode_reply(reply)
    }
}

/// Calls a member makes to other members outside Raft's own traffic: to the leader for what only
/// it may do, and to anyone for its status. Channels are kept per address.
pub(super) struct Peers {
    raft: Raft,
    channels: Arc<Channels>,
}

/// What the error of a call that never reached the other member starts with (it may be tried
/// again without risk of doing twice what it asks).
pub(super) const NOT_SENT: &str = "not sent: ";

/// How long a call to another member may take (a membership change that waits for a learner to
/// catch up excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded write may take at the leader (a loaded leader's fsync and apply included).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the leader may take to confirm a read index (one heartbeat round).
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    pub(super) fn new(raft: Raft, channels: Arc<Channels>) -> Self {
        Self { raft, channels }
    }

    async fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        Ok(RaftServiceClient::new(self.channels.get(addr).await?))
    }

    fn forget(&self, addr: &str) {
        self.channels.forget(addr);
    }

    /// The leader's Raft address, as this member knows it.
    pub(super) fn leader_addr(&self) -> Result<String, String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.ok_or("the store has no Raft leader")?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| format!("the leader {leader:x} is not in this member's membership"))
    }

    /// Calls `method` on the member at `addr` with `request`, decoding `Result<T, String>`.
    async fn call<Q: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        method: &'static str,
        request: &Q,
        timeout: Duration,
    ) -> Result<T, String> {
        let mut client = self.client(addr).await.map_err(|e| format!("{NOT_SENT}{e}"))?;
        let payload = RaftPayload {
            data: encode(request),
        };
        let call = async {
            match method {
                "forward" => client.forward(payload).await,
                "read_index" => client.read_index(payload).await,
                "change_membership" => client.change_membership(payload).await,
                _ => client.status(payload).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(status)) => {
                self.forget(addr);
                // A connection that could not be made carried nothing.
                let unsent = status.code() == tonic::Code::Unavailable
                    && status.message().to_lowercase().contains("connect");
                let prefix = if unsent { NOT_SENT } else { "" };
                return Err(format!("{prefix}{method} on {addr}: {}", status.message()));
            }
            Err(_) => {
                self.forget(addr);
                return Err(format!(
                    "{method} on {addr}: no answer in {} s",
                    timeout.as_secs()
                ));
            }
        };
        decode::<Result<T, String>>(&reply.into_inner().data).map_err(|e| e.to_string())?
    }

    /// Has the leader propose `request`; returns once this member has applied it too, so what a
    /// writer was told is done, it reads here (as on the leader).
    pub(super) async fn forward(&self, leader: &str, request: &Request) -> Result<Response, String> {
        let (response, index): (Response, u64) =
            self.call(leader, "forward", request, FORWARD_TIMEOUT).await?;
        self.raft
            .wait(Some(CALL_TIMEOUT))
            .applied_index_at_least(Some(index), "a forwarded write is applied")
            .await
            .map_err(|e| e.to_string())?;
        Ok(response)
    }

    /// The leader's read index: the log index a linearizable read must wait for.
    pub(super) async fn read_index(&self, leader: &str) -> Result<u64, String> {
        self.call(leader, "read_index", &(), READ_INDEX_TIMEOUT).await
    }

    /// Has the leader make a membership change.
    pub(super) async fn change_membership(&self, op: &MembershipOp, timeout: Duration) -> Result<(), String> {
        let leader = self.leader_addr()?;
        self.call(&leader, "change_membership", op, timeout).await
    }

    /// What the member at `addr` reports of itself.
    pub(super) async fn status(&self, addr: &str) -> Result<MemberStatus, String> {
        self.call(addr, "status", &(), Duration::from_secs(2)).await
    }
}

/// What this member reports of itself.
pub(super) fn local_status(raft: &Raft, hub: &WatchHub) -> MemberStatus {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    MemberStatus {
        id: m.id,
        leader: m.current_leader,
        term: m.current_term,
        applied_index: m.last_applied.map_or(0, |l| l.index),
        revision: hub.revision(),
    }
}

/// Makes a membership change on this member, which must lead.
pub(super) async fn change_membership(raft: &Raft, op: &MembershipOp) -> Result<(), String> {
    use std::collections::BTreeSet;
    let result = match op {
        MembershipOp::AddLearner { id, addr } => {
            let added = raft
                .add_learner(*id, BasicNode { addr: addr.clone() }, false)
                .await;
            if let Ok(resp) = &added {
                // Caught up: it holds the log up to its own membership entry (openraft's own
                // blocking wait accepts a lag of thousands of entries, even a learner never reached).
                let target = resp.log_id.index;
                let id = *id;
                raft.wait(None)
                    .metrics(
                        |m| {
                            m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id))
                                .is_some_and(|matched| matched.is_some_and(|l| l.index >= target))
                        },
                        "the new learner has caught up",
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            added
        }
        MembershipOp::Promote { id } => {
            raft.change_membership(openraft::ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                .await
        }
        MembershipOp::Remove { id } => {
            let voters: BTreeSet<NodeId> = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            let change = if voters.contains(id) {
                openraft::ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
            } else {
                openraft::ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
            };
            // Removing a voter leaves it a learner (retain); then the node goes too.
            match raft.change_membership(change, false).await {
                Ok(_) if voters.contains(id) => {
                    raft.change_membership(openraft::ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
                        .await
                }
                other => other,
            }
        }
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// The gRPC service that feeds peers' RPCs into the local Raft node.
#[derive(Clone)]
pub struct RaftGrpc {
    pub(crate) raft: Raft,
    pub(crate) hub: Arc<WatchHub>,
    pub(crate) disk: Arc<DiskGuard>,
    /// This member's state, read for [`removed_key`] records.
    pub(crate) db: Arc<redb::Database>,
}

impl std::fmt::Debug for RaftGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGrpc").finish_non_exhaustive()
    }
}

fn bad_request(e: postcard::Error) -> tonic::Status {
    tonic::Status::invalid_argument(format!("undecodable raft payload: {e}"))
}

/// Whether a DER certificate names a store member (organization [`MEMBER_ORG`]).
pub(super) fn is_member(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        cert.subject()
            .iter_organization()
            .any(|o| o.as_str() == Ok(MEMBER_ORG))
    })
}

impl RaftGrpc {
    /// The request's payload (callers were checked at the TLS handshake: [`tls_incoming`]).
    fn payload(&self, request: tonic::Request<RaftPayload>) -> Result<Vec<u8>, tonic::Status> {
        Ok(request.into_inner().data)
    }

    /// Raft's own traffic is refused while this member's disk is full (see [`PeerClient`]).
    fn disk_has_room(&self) -> Result<(), tonic::Status> {
        match self.disk.refusal() {
            Some(why) => Err(tonic::Status::unavailable(why)),
            None => Ok(()),
        }
    }

    /// Refuses a removed member's request for votes with [`REMOVED`].
    fn not_removed(&self, candidate: NodeId) -> Result<(), tonic::Status> {
        use redb::ReadableDatabase;
        let key = removed_key(candidate);
        let recorded = self
            .db
            .begin_read()
            .ok()
            .and_then(|tx| tx.open_table(super::state_machine::KV).ok())
            .is_some_and(|t| matches!(t.get(key.as_str()), Ok(Some(_))));
        if recorded {
            return Err(tonic::Status::failed_precondition(REMOVED));
        }
        Ok(())
    }
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    Ok(tonic::Response::new(RaftPayload { data: encode(value) }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.disk_has_room()?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&self.payload(request)?).map_err(bad_request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.disk_has_room()?;
        let rpc: VoteRequest<NodeId> = decode(&self.payload(request)?).map_err(bad_request)?;
        self.not_removed(rpc.vote.leader_id().voted_for().unwrap_or_default())?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.disk_has_room()?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&self.payload(request)?).map_err(bad_request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc: Request = decode(&self.payload(request)?).map_err(bad_request)?;
        let result = match super::leader_write(&self.raft, rpc).await {
            Ok(written) => written
                .map(|r| (r.data, r.log_id.index))
                .map_err(|e| e.to_string()),
            Err(lost) => Err(lost),
        };
        reply(&result)
    }

    async fn read_index(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.payload(request)?;
        if let Some(why) = super::lost_quorum(&self.raft) {
            return reply::<Result<u64, String>>(&Err(why));
        }
        let result = self
            .raft
            .get_read_log_id()
            .await
            .map(|(read, _)| read.map_or(0, |l| l.index))
            .map_err(|e| e.to_string());
        reply(&result)
    }

    async fn change_membership(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let op: MembershipOp = decode(&self.payload(request)?).map_err(bad_request)?;
        reply(&change_membership(&self.raft, &op).await)
    }

    async fn status(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.payload(request)?;
        reply(&Ok::<_, String>(local_status(&self.raft, &self.hub)))
    }
}
