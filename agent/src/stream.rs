//! `kubectl exec` (and `kubectl cp`, which execs tar) on the agent: the WebSocket channel protocol
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`) over an upgraded HTTPS connection that the API server
//! forwards byte for byte. Each message is a channel byte (0 stdin, 1 stdout, 2 stderr, 3 status,
//! 4 resize, 255 close in v5) followed by data. The command runs through `skiff-agent exec`.

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::server::{Body, text};

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

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

/// A running container of a pod on this node: (libcontainer id).
fn running_container(data_dir: &Path, ns: &str, pod: &str, container: &str) -> Option<String> {
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
    std::fs::read_to_string(attempt.join("id")).ok()
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// `GET /exec/NS/POD/CONTAINER?command=...&stdin=..&stdout=..&stderr=..&tty=..` with a WebSocket upgrade.
pub fn exec(
    data_dir: &Path,
    req: &mut Request<hyper::body::Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let header = |n: &str| crate::server::header(req, n);
    if !header("upgrade").eq_ignore_ascii_case("websocket") {
        return text(
            StatusCode::BAD_REQUEST,
            "exec needs a WebSocket upgrade (v5.channel.k8s.io)",
        );
    }
    let offered = header("sec-websocket-protocol");
    let Some(protocol) = PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("unsupported subprotocols {offered:?}; this node speaks {PROTOCOLS:?}"),
        );
    };
    let Some(id) = running_container(data_dir, ns, pod, container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container} is not running in pod {ns}/{pod} on this node"),
        );
    };
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let flag = |k: &str| get(k).is_some_and(|v| v == "true" || v == "1");
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command");
    }
    let opts = Opts {
        stdin: flag("stdin"),
        tty: flag("tty"),
        v5: *protocol == PROTOCOLS[0],
    };
    let key = header("sec-websocket-key");
    let on_upgrade = hyper::upgrade::on(req);
    let root = data_dir.join("run");
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                .await;
        if let Err(e) = session(ws, &root, &id, command, opts).await {
            tracing::debug!(error = %e, "exec session ended with an error");
        }
    });
    let mut r = Response::new(crate::server::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", hyper::header::HeaderValue::from_static("websocket"));
    h.insert("connection", hyper::header::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept_key(&key)) {
        h.insert("sec-websocket-accept", v);
    }
    h.insert(
        "sec-websocket-protocol",
        hyper::header::HeaderValue::from_static(protocol),
    );
    r
}

#[derive(Debug, Clone, Copy)]
struct Opts {
    stdin: bool,
    tty: bool,
    v5: bool,
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

async fn session<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    root: &Path,
    id: &str,
    command: Vec<String>,
    opts: Opts,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("exec")
        .arg("--root")
        .arg(root)
        .arg("--id")
        .arg(id)
        .arg("--")
        .args(&command)
        .kill_on_drop(true);
    // With a terminal, the command gets a pty's slave side for all three streams.
    let mut pty_master: Option<tokio::fs::File> = None;
    if opts.tty {
        let pty = nix::pty::openpty(None, None)?;
        let slave = std::fs::File::from(pty.slave);
        cmd.stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave);
        pty_master = Some(tokio::fs::File::from_std(std::fs::File::from(pty.master)));
    } else {
        cmd.stdin(if opts.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn()?;
    drop(cmd);
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
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    0 => {
                        if let Some(w) = stdin.as_mut() {
                            let _ = w.write_all(&data[1..]).await;
                        } else if let Some(w) = pty_writer.as_mut() {
                            let _ = w.write_all(&data[1..]).await;
                        }
                    }
                    255 if opts.v5 && data.get(1) == Some(&0) => {
                        stdin.take();
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    stdin.take();
                    if exit.is_none() {
                        let _ = child.start_kill();
                    }
                    break;
                }
                _ => {}
            },
            out = rx.recv(), if outputs_open => match out {
                Some((channel, data)) => {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(channel);
                    frame.extend_from_slice(&data);
                    ws.send(Message::Binary(frame.into())).await?;
                }
                None => outputs_open = false,
            },
            ended = child.wait(), if exit.is_none() => {
                exit = Some(ended.ok().and_then(|s| s.code()));
                // Whatever the command wrote is still in the pipes: drain, then report.
                for r in readers.drain(..) {
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), r).await;
                }
                while let Ok((channel, data)) = rx.try_recv() {
                    let mut frame = vec![channel];
                    frame.extend_from_slice(&data);
                    ws.send(Message::Binary(frame.into())).await?;
                }
                let mut frame = vec![3u8];
                frame.extend_from_slice(status(exit.flatten(), &command).to_string().as_bytes());
                ws.send(Message::Binary(frame.into())).await?;
                // A normal closure (1000): kubectl treats a close without a code as an error.
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = ws.close(Some(frame)).await;
                break;
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
            (crate::server::percent_decode(k), crate::server::percent_decode(v))
        })
        .collect()
}
