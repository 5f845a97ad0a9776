//! SPDY/3.1 framing, the server's side, as kubectl's port-forward speaks it (over an upgraded
//! connection, or tunneled in WebSocket binary messages): control frames (SYN_STREAM, SYN_REPLY,
//! RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE) and data frames. Header blocks are
//! one zlib stream per direction for the whole connection, primed with the protocol's dictionary.

use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
/// Last frame of its sender on a stream.
pub const FLAG_FIN: u8 = 1;
/// Largest frame accepted (the length field allows 16 MiB; nothing kubectl sends comes close).
const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed header block accepted.
const MAX_HEADERS: usize = 256 * 1024;

/// RST_STREAM status: the stream is refused.
pub const REFUSED_STREAM: u32 = 3;

/// The header-compression dictionary of SPDY/3 (section 2.6.10.1 of the draft): length-prefixed
/// common header names and values, then common strings.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
            "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
            "cache-control", "connection", "content-base", "content-encoding", "content-language",
            "content-length", "content-location", "content-md5", "content-range", "content-type",
            "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
            "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
            "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range",
            "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
            "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status",
            "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::with_capacity(1424);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Header names and values (names lower-case, as SPDY/3 requires).
pub type Headers = Vec<(String, String)>;

/// A frame the peer sent.
#[derive(Debug)]
pub enum Frame {
    /// A new stream.
    SynStream {
        /// Stream id (odd: opened by the client).
        id: u32,
        /// Its headers.
        headers: Headers,
    },
    /// Data on a stream.
    Data {
        /// Stream id.
        id: u32,
        /// Payload.
        data: Bytes,
        /// The sender's last frame on the stream.
        fin: bool,
    },
    /// The stream is gone.
    RstStream {
        /// Stream id.
        id: u32,
    },
    /// A ping to answer with the same id.
    Ping {
        /// Ping id.
        id: u32,
    },
    /// The peer is going away.
    GoAway,
    /// Anything else (SETTINGS, HEADERS, WINDOW_UPDATE, SYN_REPLY): nothing to do.
    Other,
}

/// Reads frames from the peer.
#[derive(Debug)]
pub struct Reader<R> {
    io: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Frames from `io`.
    pub fn new(io: R) -> Self {
        Self {
            io,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame; `None` at the end of the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("a SPDY frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                id: first & 0x7fff_ffff,
                data: Bytes::from(body),
                fin,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version}, not 3")));
        }
        let word = |at: usize| -> std::io::Result<u32> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("a truncated SPDY control frame"))
        };
        Ok(Some(match (first & 0xffff) as u16 {
            SYN_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let block = body.get(10..).ok_or_else(|| invalid("a truncated SYN_STREAM"))?;
                let headers = self.headers(block)?;
                Frame::SynStream { id, headers }
            }
            RST_STREAM => Frame::RstStream {
                id: word(0)? & 0x7fff_ffff,
            },
            PING => Frame::Ping { id: word(0)? },
            GOAWAY => Frame::GoAway,
            SYN_REPLY | HEADERS => {
                // Keep the shared decompression state in step even though nothing is needed.
                let block = body.get(4..).ok_or_else(|| invalid("a truncated header frame"))?;
                self.headers(block)?;
                Frame::Other
            }
            _ => Frame::Other,
        }))
    }

    /// Decompresses and parses one header block.
    fn headers(&mut self, mut block: &[u8]) -> std::io::Result<Headers> {
        let mut raw = Vec::with_capacity(block.len() * 4);
        while !block.is_empty() {
            if raw.len() > MAX_HEADERS {
                return Err(invalid("a SPDY header block too large"));
            }
            raw.reserve(4096);
            let before = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(block, &mut raw, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| invalid(format!("the SPDY header dictionary: {e}")))?;
                }
                Err(e) => return Err(invalid(format!("a SPDY header block: {e}"))),
            }
            let used = (self.inflate.total_in() - before) as usize;
            block = &block[used..];
        }
        parse_headers(&raw)
    }
}

fn parse_headers(raw: &[u8]) -> std::io::Result<Headers> {
    let mut at = 0usize;
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        let s = raw
            .get(at..at + n)
            .ok_or_else(|| invalid("a truncated SPDY header block"))?;
        at += n;
        Ok(s)
    };
    let count = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let n = count(take(4)?);
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = count(take(4)?);
        let name = String::from_utf8_lossy(take(len)?).to_lowercase();
        let len = count(take(4)?);
        let value = String::from_utf8_lossy(take(len)?).into_owned();
        // Several values of one name are joined by NUL.
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    Ok(out)
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Writes frames to the peer.
#[derive(Debug)]
pub struct Writer<W> {
    io: W,
    deflate: Compress,
    primed: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Frames to `io`.
    pub fn new(io: W) -> Self {
        Self {
            io,
            deflate: Compress::new(Compression::default(), true),
            primed: false,
        }
    }

    async fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.extend_from_slice(&((u32::from(flags) << 24) | body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// Accepts stream `id` (no headers to send back).
    pub async fn syn_reply(&mut self, id: u32) -> std::io::Result<()> {
        if !self.primed {
            self.deflate
                .set_dictionary(dictionary())
                .map_err(|e| invalid(format!("the SPDY header dictionary: {e}")))?;
            self.primed = true;
        }
        // An empty header block: a count of zero.
        let mut body = Vec::with_capacity(128);
        body.extend_from_slice(&id.to_be_bytes());
        let before = self.deflate.total_in();
        self.deflate
            .compress_vec(&0u32.to_be_bytes(), &mut body, FlushCompress::Sync)
            .map_err(|e| invalid(format!("compressing SPDY headers: {e}")))?;
        if self.deflate.total_in() - before != 4 {
            return Err(invalid("compressing SPDY headers: output did not fit"));
        }
        self.control(SYN_REPLY, 0, &body).await
    }

    /// `data` on stream `id`, the last of it with `fin`.
    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        let flags = if fin { FLAG_FIN } else { 0 };
        frame.extend_from_slice(&((u32::from(flags) << 24) | data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// Ends stream `id` abnormally.
    pub async fn rst_stream(&mut self, id: u32, status: u32) -> std::io::Result<()> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        self.control(RST_STREAM, 0, &body).await
    }

    /// Answers a ping.
    pub async fn ping(&mut self, id: u32) -> std::io::Result<()> {
        self.control(PING, 0, &id.to_be_bytes()).await
    }

    /// Lets the peer send `delta` more bytes on stream `id`.
    pub async fn window_update(&mut self, id: u32, delta: u32) -> std::io::Result<()> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&delta.to_be_bytes());
        self.control(WINDOW_UPDATE, 0, &body).await
    }

    /// Tells the peer the connection ends.
    pub async fn go_away(&mut self) -> std::io::Result<()> {
        let mut body = 0u32.to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        self.control(GOAWAY, 0, &body).await
    }

    /// Tells the peer our settings (none beyond the defaults).
    pub async fn settings(&mut self) -> std::io::Result<()> {
        self.control(SETTINGS, 0, &0u32.to_be_bytes()).await
    }
}

/// What a session's writer task sends.
#[derive(Debug)]
pub enum Out {
    /// SYN_REPLY: the stream is accepted.
    Reply(u32),
    /// Data on a stream, the last of it with the flag.
    Data(u32, Bytes, bool),
    /// RST_STREAM: the stream is refused.
    Reset(u32),
    /// A ping's answer.
    Ping(u32),
    /// WINDOW_UPDATE of a stream (0: the session).
    Window(u32, u32),
    /// The session is over: GOAWAY, then the writer ends (whoever else still holds a sender).
    End,
}

/// Starts the task that writes a session's frames: SETTINGS, then what arrives on the returned
/// sender, then GOAWAY once told [`Out::End`] or every sender is gone (or the connection fails).
pub fn spawn_writer<W>(wr: W) -> (tokio::sync::mpsc::Sender<Out>, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut rx) = tokio::sync::mpsc::channel::<Out>(64);
    let writer = tokio::spawn(async move {
        let mut w = Writer::new(wr);
        let _ = w.settings().await;
        while let Some(o) = rx.recv().await {
            let sent = match o {
                Out::Reply(id) => w.syn_reply(id).await,
                Out::Data(id, data, fin) => w.data(id, &data, fin).await,
                Out::Reset(id) => w.rst_stream(id, REFUSED_STREAM).await,
                Out::Ping(id) => w.ping(id).await,
                Out::Window(id, n) => w.window_update(id, n).await,
                Out::End => break,
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = w.go_away().await;
    });
    (out, writer)
}

/// Received bytes acknowledged with one WINDOW_UPDATE (half SPDY/3.1's initial 64 KiB window).
const WINDOW_STEP: u32 = 32 * 1024;

/// SPDY/3.1 flow control of what the peer sends: its stream's and the session's windows are
/// re-opened once half of a window has been received.
#[derive(Debug, Default)]
pub struct Windows {
    /// Bytes received and not yet acknowledged, per stream and (id 0) for the session.
    unacked: std::collections::HashMap<u32, u32>,
}

impl Windows {
    /// Counts `len` bytes received on stream `id` (its last with `fin`).
    pub async fn received(&mut self, id: u32, len: usize, fin: bool, out: &tokio::sync::mpsc::Sender<Out>) {
        for key in [id, 0] {
            let n = self.unacked.entry(key).or_default();
            *n += len as u32;
            if *n >= WINDOW_STEP {
                let _ = out.send(Out::Window(key, *n)).await;
                *n = 0;
            }
        }
        if fin {
            self.unacked.remove(&id);
        }
    }

    /// Forgets stream `id`.
    pub fn reset(&mut self, id: u32) {
        self.unacked.remove(&id);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client's compressor of header blocks (one per connection, as the headers share it).
    pub(crate) fn header_compressor() -> Compress {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(dictionary()).unwrap();
        deflate
    }

    /// A client's DATA frame on stream `id`.
    pub(crate) fn data_frame(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
        let mut frame = id.to_be_bytes().to_vec();
        let flags = if fin { FLAG_FIN } else { 0 };
        frame.extend_from_slice(&((u32::from(flags) << 24) | data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        frame
    }

    /// A client's SYN_STREAM as Go's framer writes it: headers compressed with the dictionary.
    pub(crate) fn syn_stream(
        deflate: &mut Compress,
        id: u32,
        headers: &[(&str, &str)],
        fin: bool,
    ) -> Vec<u8> {
        let mut raw = (headers.len() as u32).to_be_bytes().to_vec();
        for (n, v) in headers {
            raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
            raw.extend_from_slice(n.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut block = Vec::with_capacity(raw.len() + 64);
        deflate
            .compress_vec(&raw, &mut block, FlushCompress::Sync)
            .unwrap();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        let mut frame = vec![0x80, 3, 0, 1];
        let flags = if fin { FLAG_FIN } else { 0 };
        frame.extend_from_slice(&((u32::from(flags) << 24) | body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(dictionary().len(), 1423);
    }

    #[tokio::test]
    async fn reads_streams_and_data_and_answers() {
        let mut deflate = header_compressor();
        let mut input = syn_stream(
            &mut deflate,
            1,
            &[("streamtype", "error"), ("port", "8080"), ("requestid", "0")],
            true,
        );
        input.extend(syn_stream(
            &mut deflate,
            3,
            &[("streamType", "data"), ("port", "8080"), ("requestID", "0")],
            false,
        ));
        input.extend_from_slice(&[0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']);
        input.extend_from_slice(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 9]);
        let mut r = Reader::new(&input[..]);
        let Some(Frame::SynStream { id: 1, headers }) = r.next().await.unwrap() else {
            panic!("a SYN_STREAM");
        };
        assert!(headers.contains(&("streamtype".into(), "error".into())));
        let Some(Frame::SynStream { id: 3, headers }) = r.next().await.unwrap() else {
            panic!("a second SYN_STREAM");
        };
        assert!(headers.contains(&("requestid".into(), "0".into())));
        let Some(Frame::Data {
            id: 3,
            data,
            fin: true,
        }) = r.next().await.unwrap()
        else {
            panic!("data");
        };
        assert_eq!(&data[..], b"hi");
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Ping { id: 9 })));
        assert!(r.next().await.unwrap().is_none());

        // A reply the other side can read back.
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.syn_reply(1).await.unwrap();
        w.syn_reply(3).await.unwrap();
        w.data(3, b"ok", true).await.unwrap();
        let mut r = Reader::new(&out[..]);
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Other)));
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Other)));
        assert!(matches!(
            r.next().await.unwrap(),
            Some(Frame::Data { id: 3, fin: true, .. })
        ));
    }
}
