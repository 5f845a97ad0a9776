//! The client's side of an exec or attach session, however kubectl connected: WebSocket messages of
//! the channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`; kubectl's default since 1.31) or
//! SPDY/3.1 streams (`v4.channel.k8s.io` over SPDY: kubectl's fallback, and older kubectl's only
//! way), seen the same way: messages numbered by channel (0 stdin, 1 stdout, 2 stderr, 3 status,
//! 4 resize; 255 with a 0 byte for the end of stdin).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::server::spdy::{self, Frame, Out};

/// A WebSocket over the upgraded connection.
pub type Ws = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The SPDY stream protocol spoken for exec and attach (the status on the error stream is a JSON
/// `Status`, as in the WebSocket protocols).
pub const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// Stdin's end.
pub const CLOSE: u8 = 255;

/// How long a SPDY client may take to open the streams it asked for.
const SETUP: Duration = Duration::from_secs(30);

/// Which streams the client asked for (from the request's query).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr (never with a terminal).
    pub stderr: bool,
    /// A terminal, which brings sizes.
    pub tty: bool,
}

/// One session's client.
#[derive(Debug)]
pub enum Channels {
    /// WebSocket; `v5` knows the end-of-stdin message.
    Ws {
        /// The connection.
        ws: Box<Ws>,
        /// Whether the protocol is v5.
        v5: bool,
        /// The older protocols' form of the messages.
        legacy: Legacy,
    },
    /// SPDY streams.
    Spdy(Spdy),
}

/// How the WebSocket protocols before v4 (and the base64 ones) differ, as upstream still serves
/// them: `base64`: text messages, the channel as an ASCII digit and the data in base64
/// (`base64.channel.k8s.io`, `v4.base64.channel.k8s.io`); `plain_status`: the error channel carries
/// only a failure's message, nothing on success (`channel.k8s.io`, `v2`, `v3`; v4 sends a JSON
/// `Status` always).
#[derive(Debug, Clone, Copy, Default)]
pub struct Legacy {
    /// Base64 text messages.
    pub base64: bool,
    /// The status channel as text, and only on failure.
    pub plain_status: bool,
}

impl Legacy {
    /// The form `protocol` uses.
    pub fn of(protocol: &str) -> Legacy {
        Legacy {
            base64: protocol.contains("base64"),
            plain_status: !(protocol.starts_with("v4.") || protocol.starts_with("v5.")),
        }
    }
}

impl Channels {
    /// The next message from the client, or `None` once it has gone. End-of-stdin arrives as
    /// `(CLOSE, [0])` (SPDY: the stdin stream's FIN; WebSocket: only in v5).
    pub async fn recv(&mut self) -> Option<(u8, Bytes)> {
        match self {
            Channels::Ws { ws, v5, legacy } => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) if !data.is_empty() && !legacy.base64 => {
                        if data[0] == CLOSE && !*v5 {
                            continue;
                        }
                        return Some((data[0], data.slice(1..)));
                    }
                    Some(Ok(Message::Text(text))) if legacy.base64 && !text.is_empty() => {
                        use base64::Engine;
                        let channel = text.as_bytes()[0].wrapping_sub(b'0');
                        let Ok(data) =
                            base64::engine::general_purpose::STANDARD.decode(&text.as_bytes()[1..])
                        else {
                            continue;
                        };
                        return Some((channel, Bytes::from(data)));
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            },
            Channels::Spdy(s) => s.incoming.recv().await,
        }
    }

    /// Sends `data` on `channel`.
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> std::io::Result<()> {
        match self {
            Channels::Ws { ws, legacy, .. } => {
                let status;
                let data = if channel == 3 && legacy.plain_status {
                    // Before v4: a failure's message, nothing for success.
                    let parsed: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
                    if parsed["status"] == "Success" {
                        return Ok(());
                    }
                    status = parsed["message"].as_str().unwrap_or_default().to_owned();
                    status.as_bytes()
                } else {
                    data
                };
                let msg = if legacy.base64 {
                    use base64::Engine;
                    let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                    text.push(char::from(b'0' + channel));
                    base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                    Message::text(text)
                } else {
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(channel);
                    msg.extend_from_slice(data);
                    Message::Binary(msg.into())
                };
                ws.send(msg).await.map_err(std::io::Error::other)
            }
            Channels::Spdy(s) => {
                let Some(id) = s.ids.get(&channel).copied() else {
                    return Ok(());
                };
                s.out
                    .send(Out::Data(id, Bytes::copy_from_slice(data), false))
                    .await
                    .map_err(|_| std::io::Error::other("the client has gone"))
            }
        }
    }

    /// Ends the session normally.
    pub async fn close(self) {
        match self {
            Channels::Ws { mut ws, .. } => {
                // A normal closure (1000): kubectl treats a close without a code as an error.
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = Ws::close(&mut ws, Some(frame)).await;
            }
            Channels::Spdy(mut s) => {
                for id in s.ids.values() {
                    let _ = s.out.send(Out::Data(*id, Bytes::new(), true)).await;
                }
                let _ = s.out.send(Out::End).await;
                s.reader.abort();
                let _ = (&mut s.writer).await;
            }
        }
    }
}

/// A SPDY session whose streams are mapped to channels.
#[derive(Debug)]
pub struct Spdy {
    incoming: mpsc::Receiver<(u8, Bytes)>,
    out: mpsc::Sender<Out>,
    /// Channel → stream id.
    ids: HashMap<u8, u32>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

/// A session dropped without [`Channels::close`] (it failed) still ends the connection: its reader
/// goes, and with it the last sender the writer waits on; the writer says GOAWAY and the
/// connection closes, so the client sees the end rather than waiting for streams that never end.
impl Drop for Spdy {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn channel_of(stream_type: &str) -> Option<u8> {
    Some(match stream_type {
        "stdin" => 0,
        "stdout" => 1,
        "stderr" => 2,
        "error" => 3,
        "resize" => 4,
        _ => return None,
    })
}

impl Spdy {
    /// Serves SPDY on `io` until the client has opened the streams `wanted` asks for.
    pub async fn accept<IO>(io: IO, wanted: Wanted) -> std::io::Result<Self>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let mut reader = spdy::Reader::new(rd);
        let (out, writer) = spdy::spawn_writer(wr);
        let mut need: Vec<u8> = vec![3];
        for (on, channel) in [
            (wanted.stdin, 0),
            (wanted.stdout, 1),
            (wanted.stderr && !wanted.tty, 2),
            (wanted.tty, 4),
        ] {
            if on {
                need.push(channel);
            }
        }
        let mut ids = HashMap::new();
        let mut early = Vec::new();
        let setup = async {
            while need.iter().any(|c| !ids.contains_key(c)) {
                match reader.next().await? {
                    Some(Frame::SynStream { id, headers }) => {
                        let kind = headers
                            .iter()
                            .find(|(k, _)| k == "streamtype")
                            .map(|(_, v)| v.as_str());
                        match kind.and_then(channel_of) {
                            Some(channel) => {
                                ids.insert(channel, id);
                                let _ = out.send(Out::Reply(id)).await;
                            }
                            None => {
                                let _ = out.send(Out::Reset(id)).await;
                            }
                        }
                    }
                    Some(Frame::Ping { id }) => {
                        let _ = out.send(Out::Ping(id)).await;
                    }
                    // Stdin may start before the last stream is open.
                    Some(f @ Frame::Data { .. }) => early.push(f),
                    Some(Frame::GoAway) | None => {
                        return Err(std::io::Error::other(
                            "the client left before opening its streams",
                        ));
                    }
                    Some(_) => {}
                }
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(SETUP, setup).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::other(
                    "the client did not open its streams in time",
                ));
            }
        }
        let (tx, incoming) = mpsc::channel(64);
        let by_id: HashMap<u32, u8> = ids.iter().map(|(c, id)| (*id, *c)).collect();
        let reader = tokio::spawn(read(reader, early, by_id, tx, out.clone()));
        Ok(Self {
            incoming,
            out,
            ids,
            reader,
            writer,
        })
    }
}

/// Turns the client's frames into channel messages until it goes.
async fn read<R>(
    mut reader: spdy::Reader<R>,
    early: Vec<Frame>,
    mut by_id: HashMap<u32, u8>,
    tx: mpsc::Sender<(u8, Bytes)>,
    out: mpsc::Sender<Out>,
) where
    R: AsyncRead + Unpin,
{
    let mut windows = spdy::Windows::default();
    let mut resize = Vec::new();
    let mut frames = early.into_iter();
    loop {
        let frame = match frames.next() {
            Some(f) => f,
            None => match reader.next().await {
                Ok(Some(f)) => f,
                end => {
                    tracing::debug!(?end, "SPDY: the client's side ended");
                    return;
                }
            },
        };
        match frame {
            Frame::SynStream { id, headers } => {
                let kind = headers
                    .iter()
                    .find(|(k, _)| k == "streamtype")
                    .map(|(_, v)| v.as_str());
                if let Some(channel) = kind.and_then(channel_of) {
                    by_id.insert(id, channel);
                    let _ = out.send(Out::Reply(id)).await;
                } else {
                    let _ = out.send(Out::Reset(id)).await;
                }
            }
            Frame::Data { id, data, fin } => {
                windows.received(id, data.len(), fin, &out).await;
                match by_id.get(&id) {
                    Some(0) => {
                        if !data.is_empty() && tx.send((0, data)).await.is_err() {
                            return;
                        }
                        if fin && tx.send((CLOSE, Bytes::from_static(&[0]))).await.is_err() {
                            return;
                        }
                    }
                    // Sizes come as JSON documents one after another.
                    Some(4) => {
                        resize.extend_from_slice(&data);
                        while let Some(end) = resize.iter().position(|&b| b == b'\n') {
                            let doc: Vec<u8> = resize.drain(..=end).collect();
                            if tx.send((4, Bytes::from(doc))).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {}
                }
            }
            Frame::Ping { id } => {
                let _ = out.send(Out::Ping(id)).await;
            }
            Frame::GoAway => {
                tracing::debug!("SPDY: the client went away");
                return;
            }
            Frame::RstStream { .. } | Frame::Other => {}
        }
    }
}

/// Whether `offered` (the values of all `X-Stream-Protocol-Version` headers) includes the SPDY
/// protocol this node speaks.
pub fn offers_spdy_protocol<'a>(offered: impl IntoIterator<Item = &'a str>) -> bool {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SPDY_PROTOCOL)
}
