//! `kubectl exec` (and `kubectl cp`, which execs tar) and `kubectl attach` on the agent: the WebSocket
//! channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`) over an upgraded HTTPS connection that
//! the API server forwards byte for byte. Each message is a channel byte (0 stdin, 1 stdout, 2 stderr,
//! 3 status, 4 resize, 255 close in v5) followed by data. An exec'd command runs through
//! `skiff-agent exec`; an attach joins the container's shim through its socket ([`crate::runtime::attach`]).

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::server::channels::{Channels, Wanted};
use crate::server::{Body, text};

const PROTOCOLS: [&str; 7] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The directory of pod `ns/name` on this node (`pods/<uid>`, holding `pod.json`).
pub fn pod_dir(data_dir: &Path, ns: &str, pod: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(data_dir.join("pods"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|dir| {
            std::fs::read(dir.join("pod.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == pod)
        })
}

/// The directory of a running container's current attempt (`containers/<name>/<n>`).
fn running_attempt(data_dir: &Path, ns: &str, pod: &str, container: &str) -> Option<std::path::PathBuf> {
    let dir = pod_dir(data_dir, ns, pod)?.join("containers").join(container);
    let latest = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|a| a.file_name().to_string_lossy().parse::<u32>().ok())
        .max()?;
    let attempt = dir.join(latest.to_string());
    if attempt.join("status/exit.json").exists() || !attempt.join("status/started.json").exists() {
        return None;
    }
    Some(attempt)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// How a client upgrades its connection.
#[derive(Debug, Clone, Copy)]
enum Upgrade {
    /// WebSocket with this channel protocol.
    Ws(&'static str),
    /// SPDY/3.1 streams.
    Spdy,
}

/// The upgrade a request asks for that this node speaks, or the status and reason to refuse it.
fn negotiate(req: &Request<hyper::body::Incoming>, what: &str) -> Result<Upgrade, (StatusCode, String)> {
    let header = |n: &str| crate::server::header(req, n);
    let upgrade = header("upgrade");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let offered = header("sec-websocket-protocol");
        return PROTOCOLS
            .iter()
            .find(|p| offered.split(',').any(|o| o.trim() == **p))
            .map(|p| Upgrade::Ws(p))
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("unsupported subprotocols {offered:?}; this node speaks {PROTOCOLS:?}"),
                )
            });
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let offered: Vec<&str> = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        return crate::server::channels::offers_spdy_protocol(offered.iter().copied())
            .then_some(Upgrade::Spdy)
            .ok_or_else(|| {
                (
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{}]",
                        crate::server::channels::SPDY_PROTOCOL
                    ),
                )
            });
    }
    Err((
        StatusCode::BAD_REQUEST,
        format!("{what} needs a WebSocket (v5.channel.k8s.io) or SPDY/3.1 upgrade"),
    ))
}

/// Accepts the upgrade and runs `session` on the client's channels.
fn upgrade<F, Fut>(
    req: &mut Request<hyper::body::Incoming>,
    how: Upgrade,
    wanted: Wanted,
    session: F,
) -> Response<Body>
where
    F: FnOnce(Channels) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let key = crate::server::header(req, "sec-websocket-key");
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let io = TokioIo::new(upgraded);
        let conn = match how {
            Upgrade::Ws(protocol) => Channels::Ws {
                ws: Box::new(
                    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await,
                ),
                v5: protocol == PROTOCOLS[0],
                legacy: crate::server::channels::Legacy::of(protocol),
            },
            Upgrade::Spdy => match crate::server::channels::Spdy::accept(io, wanted).await {
                Ok(s) => Channels::Spdy(s),
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY session set-up failed");
                    return;
                }
            },
        };
        if let Err(e) = session(conn).await {
            tracing::debug!(error = %e, "stream session ended with an error");
        }
    });
    let mut r = Response::new(crate::server::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", hyper::header::HeaderValue::from_static("Upgrade"));
    match how {
        Upgrade::Ws(protocol) => {
            h.insert("upgrade", hyper::header::HeaderValue::from_static("websocket"));
            if let Ok(v) = hyper::header::HeaderValue::from_str(&accept_key(&key)) {
                h.insert("sec-websocket-accept", v);
            }
            h.insert(
                "sec-websocket-protocol",
                hyper::header::HeaderValue::from_static(protocol),
            );
        }
        Upgrade::Spdy => {
            h.insert("upgrade", hyper::header::HeaderValue::from_static("SPDY/3.1"));
            h.insert(
                "x-stream-protocol-version",
                hyper::header::HeaderValue::from_static(crate::server::channels::SPDY_PROTOCOL),
            );
        }
    }
    r
}

/// The streams a request's query asks for.
fn wanted(query: &[(String, String)]) -> Wanted {
    let flag = |k: &str| query.iter().any(|(q, v)| q == k && (v == "true" || v == "1"));
    Wanted {
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
    }
}

/// The upgrade an exec or attach request asks for and its running container's attempt directory,
/// or the status and reason to refuse it.
fn session_target(
    data_dir: &Path,
    req: &Request<hyper::body::Incoming>,
    what: &str,
    (ns, pod, container): (&str, &str, &str),
) -> Result<(Upgrade, std::path::PathBuf), (StatusCode, String)> {
    let how = negotiate(req, what)?;
    let attempt = running_attempt(data_dir, ns, pod, container).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("container {container} is not running in pod {ns}/{pod} on this node"),
        )
    })?;
    Ok((how, attempt))
}

/// `GET /exec/NS/POD/CONTAINER?command=...&stdin=..&stdout=..&stderr=..&tty=..` with a WebSocket or
/// SPDY upgrade.
pub fn exec(
    data_dir: &Path,
    req: &mut Request<hyper::body::Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let (how, id) = match session_target(data_dir, req, "exec", (ns, pod, container)) {
        Ok((how, attempt)) => match std::fs::read_to_string(attempt.join("id")) {
            Ok(id) => (how, id),
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the container id: {e}"),
                );
            }
        },
        Err((code, refused)) => return text(code, refused),
    };
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command");
    }
    let wanted = wanted(query);
    let root = data_dir.join("run");
    upgrade(req, how, wanted, move |conn| async move {
        session(conn, &root, &id, command, wanted).await
    })
}

/// `GET /attach/NS/POD/CONTAINER?stdin=..&stdout=..&stderr=..&tty=..` with a WebSocket or SPDY
/// upgrade.
pub fn attach(
    data_dir: &Path,
    req: &mut Request<hyper::body::Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let (how, attempt) = match session_target(data_dir, req, "attach", (ns, pod, container)) {
        Ok(target) => target,
        Err((code, refused)) => return text(code, refused),
    };
    let wanted = wanted(query);
    upgrade(req, how, wanted, move |conn| async move {
        attach_session(conn, &attempt.join("status"), wanted).await
    })
}

/// Joins a client to the container's shim until either side ends.
async fn attach_session(mut conn: Channels, status_dir: &Path, wanted: Wanted) -> anyhow::Result<()> {
    use crate::runtime::attach::{CLOSE_STDIN, RESIZE, STDIN, frame, parse_resize, read_frame};
    let (mut from_shim, to_shim) = crate::runtime::attach::connect(status_dir).await?.into_split();
    let mut to_shim = Some(to_shim);
    tracing::debug!(?wanted, "attach: joined the shim");
    // Frames are read on their own task: a read cut short by the other branch would lose its place.
    let (tx, mut output) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    let reader = tokio::spawn(async move {
        while let Ok(Some(f)) = read_frame(&mut from_shim).await {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    });
    let mut ended = false;
    loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Some((channel, data)) => {
                    let sent = match channel {
                        0 if wanted.stdin => Some(frame(STDIN, &data)),
                        4 => parse_resize(&data).map(|(w, h)| {
                            let mut size = w.to_be_bytes().to_vec();
                            size.extend_from_slice(&h.to_be_bytes());
                            frame(RESIZE, &size)
                        }),
                        crate::server::channels::CLOSE => Some(frame(CLOSE_STDIN, &[])),
                        _ => None,
                    };
                    // The shim goes when its container ends, which may be before the client's
                    // last input arrives: what it has still written ends the session below, as
                    // a finished one, rather than the failed write.
                    if let (Some(f), Some(shim)) = (sent, to_shim.as_mut())
                        && shim.write_all(&f).await.is_err()
                    {
                        to_shim = None;
                    }
                }
                // Leaving closes the socket; the shim ends a `stdinOnce` container's stdin.
                None => {
                    tracing::debug!("attach: the client left");
                    break;
                }
            },
            out = output.recv() => match out {
                Some((channel @ (1 | 2), data)) => {
                    let on = if channel == 1 { wanted.stdout } else { wanted.stderr };
                    if on || wanted.tty {
                        conn.send(channel, &data).await?;
                    }
                }
                Some(_) => {}
                None => {
                    // The container ended: the session ends as a successful one.
                    tracing::debug!("attach: the container's output ended");
                    conn.send(3, status(Some(0), &[]).to_string().as_bytes()).await?;
                    ended = true;
                    break;
                }
            },
        }
    }
    reader.abort();
    if ended {
        conn.close().await;
    }
    Ok(())
}

/// The status message kubectl turns into its exit code.
fn status(code: Option<i32>, command: &[String]) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(c) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
        None => {
            json!({"metadata": {}, "status": "Failure", "message": "the command could not be run", "reason": "InternalError"})
        }
    }
}

/// Ends a session whose command could not be started with a Failure status that says why (the
/// client reports it), instead of dropping the connection.
async fn could_not_run(mut conn: Channels, why: String) -> anyhow::Result<()> {
    let failure = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                         "message": format!("the command could not be run: {why}")});
    conn.send(3, failure.to_string().as_bytes()).await?;
    conn.close().await;
    Ok(())
}

async fn session(
    mut conn: Channels,
    root: &Path,
    id: &str,
    command: Vec<String>,
    opts: Wanted,
) -> anyhow::Result<()> {
    // With a terminal, the command runs on one made in the container (its controlling terminal),
    // whose master side comes to a console socket of ours; the helper's own errors still come as
    // stderr.
    let console = match opts.tty.then(crate::runtime::console::Socket::bind).transpose() {
        Ok(c) => c,
        Err(e) => return could_not_run(conn, format!("no terminal: {e}")).await,
    };
    let mut cmd = crate::runtime::helper::command("exec");
    cmd.arg("--root").arg(root).arg("--id").arg(id);
    if let Some(c) = &console {
        cmd.arg("--console-socket").arg(c.path());
    }
    cmd.arg("--")
        .args(&command)
        .kill_on_drop(true)
        .stdin(if opts.stdin && console.is_none() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(if console.is_none() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return could_not_run(conn, format!("starting the exec helper: {e}")).await,
    };
    drop(cmd);
    let mut pty_master: Option<tokio::fs::File> = None;
    if let Some(console) = &console {
        let ended = async {
            while let Ok(None) = child.try_wait() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        // Without a terminal (the helper failed first), its stderr says why, and its exit status
        // ends the session below.
        if let Ok(master) = crate::runtime::console::receive_async(console, ended).await {
            pty_master = Some(tokio::fs::File::from_std(std::fs::File::from(master)));
        }
    }
    let mut stdin = child.stdin.take();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Bytes)>(16);
    let mut readers = Vec::new();
    let mut pty_writer = None;
    if let Some(master) = pty_master {
        let mut reader = master.try_clone().await?;
        pty_writer = Some(master);
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            // EIO on the master means the slave side is closed: the command ended.
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 || tx.send((1, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    break;
                }
            }
        }));
    }
    for (channel, out) in [
        (
            1u8,
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ),
        (2, child.stderr.take().map(|e| Box::new(e) as Box<_>)),
    ] {
        let Some(mut out) = out else { continue };
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0
                    || tx
                        .send((channel, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut exit = None;
    let mut outputs_open = true;
    loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Some((0, data)) => {
                    if let Some(w) = stdin.as_mut() {
                        let _ = w.write_all(&data).await;
                    } else if let Some(w) = pty_writer.as_mut() {
                        let _ = w.write_all(&data).await;
                    }
                }
                Some((crate::server::channels::CLOSE, _)) => {
                    stdin.take();
                }
                Some((4, data)) => {
                    if let (Some(tty), Some((width, height))) = (pty_writer.as_ref(), crate::runtime::attach::parse_resize(&data)) {
                        let _ = crate::runtime::attach::set_size(tty, width, height);
                    }
                }
                Some(_) => {}
                None => {
                    stdin.take();
                    if exit.is_none() {
                        let _ = child.start_kill();
                    }
                    break;
                }
            },
            out = rx.recv(), if outputs_open => match out {
                Some((channel, data)) => conn.send(channel, &data).await?,
                None => outputs_open = false,
            },
            ended = child.wait(), if exit.is_none() => {
                exit = Some(ended.ok().and_then(|s| s.code()));
                // Whatever the command wrote is still in the pipes: drain, then report.
                for r in readers.drain(..) {
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), r).await;
                }
                while let Ok((channel, data)) = rx.try_recv() {
                    conn.send(channel, &data).await?;
                }
                conn.send(3, status(exit.flatten(), &command).to_string().as_bytes()).await?;
                conn.close().await;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Splits a query string, keeping repeated keys (`command=a&command=b`).
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                skiff_common::url::percent_decode(k),
                skiff_common::url::percent_decode(v),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::attach::{SOCKET, STDOUT, frame};
    use crate::server::channels::Spdy;
    use crate::server::spdy::tests::{data_frame, header_compressor, syn_stream};
    use crate::server::spdy::{Frame, Reader};
    use std::io::Write as _;

    /// `kubectl run -i` over SPDY, where the container reads its line, answers and ends before
    /// the client's end of stdin reaches the shim, whose socket is gone by then: the client still
    /// gets the output, a successful status and the end of every stream, never a session that
    /// stays open.
    #[tokio::test]
    async fn an_attach_whose_container_ends_first_ends_with_its_output_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        let (leave, told) = std::sync::mpsc::channel::<()>();
        // A shim whose container has ended: it reads nothing more (a write to it fails, as to an
        // exited shim's), sends the last output and goes when told.
        let shim = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.shutdown(std::net::Shutdown::Read).unwrap();
            sock.write_all(&frame(STDOUT, b"got x\n")).unwrap();
            let _ = told.recv();
        });
        let wanted = Wanted {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let (client, server) = tokio::io::duplex(1 << 16);
        let status_dir = dir.path().to_owned();
        let session = tokio::spawn(async move {
            let conn = Channels::Spdy(Spdy::accept(server, wanted).await.unwrap());
            attach_session(conn, &status_dir, wanted).await
        });
        let (rd, mut wr) = tokio::io::split(client);
        let mut deflate = header_compressor();
        let mut opening = Vec::new();
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
            opening.extend(syn_stream(&mut deflate, id, &[("streamtype", kind)], false));
        }
        wr.write_all(&opening).await.unwrap();
        let mut frames = Reader::new(rd);
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(10), frames.next())
                .await
                .expect("the session goes on: the client would wait forever")
                .unwrap()
        };
        let mut out = Vec::new();
        while out.is_empty() {
            if let Some(Frame::Data { id: 5, data, .. }) = next().await {
                out.extend_from_slice(&data);
            }
        }
        // The shim has stopped reading; stdin and its end arrive now.
        wr.write_all(&data_frame(3, b"x\n", true)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        leave.send(()).unwrap();
        let mut status = Vec::new();
        let mut ended = Vec::new();
        while let Some(f) = next().await {
            if let Frame::Data { id, data, fin } = f {
                match id {
                    1 => status.extend_from_slice(&data),
                    5 => out.extend_from_slice(&data),
                    _ => {}
                }
                if fin {
                    ended.push(id);
                }
            }
        }
        session.await.unwrap().unwrap();
        shim.join().unwrap();
        assert_eq!(out, b"got x\n");
        let status: Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["status"], "Success");
        ended.sort();
        assert_eq!(ended, [1, 3, 5], "every stream ends");
    }
}
