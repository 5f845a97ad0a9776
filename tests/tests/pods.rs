//! skiff-agent runs real pods: images pulled from a registry on loopback (Debian's docker-registry,
//! pushed with skopeo), containers through libcontainer via the shim, pod networking on a bridge,
//! volumes, env, restarts, OOM kills, logs — all driven with real kubectl.
//!
//! Cgroups: this machine is hybrid, so containers get v1 cgroups (the test says which it checked).

use skiff_tests::BoundedOutput;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::node::Cluster;

/// Helpers on the shared fixture for this suite.
trait PodCluster {
    fn pod(&self, name: &str) -> Value;
    /// Waits (bounded) until `check` holds for the pod; panics with the pod and the agent's log if not.
    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value;
    fn apply(&self, yaml: &str);
}

impl PodCluster for Cluster {
    fn pod(&self, name: &str) -> Value {
        let out = self.c.kubectl(&["get", "pod", name, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        // Generous: the suite also runs in the cgroup v2 machine, on an emulated CPU.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let pod = self.pod(name);
            if check(&pod) {
                return pod;
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {name}: {what} never happened.\npod: {pod:#}\nagent log:\n{}",
                    self.node.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn apply(&self, yaml: &str) {
        self.c.ok_stdin(&["apply", "-f", "-"], yaml);
    }
}

/// `GET /` from `127.0.0.1:port`, retried until `patience` runs out (the forwarder may still be
/// starting): the whole response.
fn http_get(port: u16, patience: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + patience;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if !body.is_empty() => return Ok(body),
            Ok(_) if Instant::now() > deadline => return Err("an empty answer".into()),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn status<'a>(pod: &'a Value, container: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == container))
        .unwrap_or(&Value::Null)
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

#[test]
fn pods_run_log_restart_and_clean_up() {
    let k = Cluster::start();
    let image = k.registry.busybox();

    // kubectl run: the image is pulled from the registry, the pod gets an address from the node's
    // pod CIDR and becomes Ready; logs come back through the API server.
    k.c.ok(&[
        "run",
        "hello",
        "--image",
        &image,
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname); ip -4 addr show eth0 | grep inet; sleep 3600",
    ]);
    let pod = k.wait_pod("hello", "Ready", |p| status(p, "hello")["ready"] == true);
    let ip = pod["status"]["podIP"].as_str().expect("a pod IP").to_string();
    let node: Value = serde_json::from_str(&k.c.ok(&["get", "node", &k.node.name, "-o", "json"])).unwrap();
    let cidr = node["spec"]["podCIDR"].as_str().expect("the node got a pod CIDR");
    let net = cidr
        .split('/')
        .next()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string();
    assert!(
        ip.starts_with(&format!("{}.", net)),
        "pod IP {ip} is in the node's {cidr}"
    );
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    assert!(
        status(&pod, "hello")["imageID"]
            .as_str()
            .unwrap()
            .contains("@sha256:")
    );
    let logs = k.c.ok(&["logs", "hello"]);
    assert!(logs.contains("hello from hello"), "{logs}");
    assert!(
        logs.contains(&format!("inet {ip}/24")),
        "the container sees its address on eth0: {logs}"
    );
    // The same log over WebSocket, as the conformance suite reads it (golang.org/x/net/websocket
    // with `binary.k8s.io`) and with `base64.binary.k8s.io`: messages until the server closes.
    // Several times each: a short log ends its stream as soon as it is sent, and the tunnel must
    // not lose it then.
    let out = skiff_tests::python(
        &k.c.kubeconfig(),
        "import base64, ssl, websocket\n\
from kubernetes import client, config\n\
config.load_kube_config()\n\
c = client.Configuration.get_default_copy()\n\
url = c.host.replace('https://', 'wss://') + '/api/v1/namespaces/default/pods/hello/log?container=hello'\n\
for proto in ['binary.k8s.io', 'base64.binary.k8s.io'] * 5:\n    \
ws = websocket.create_connection(url, subprotocols=[proto], sslopt={'ca_certs': c.ssl_ca_cert, 'certfile': c.cert_file, 'keyfile': c.key_file, 'cert_reqs': ssl.CERT_REQUIRED})\n    \
body = b''\n    \
while True:\n        \
try:\n            op, data = ws.recv_data()\n        \
except websocket.WebSocketConnectionClosedException:\n            break\n        \
if op == websocket.ABNF.OPCODE_CLOSE:\n            break\n        \
body += base64.b64decode(data) if proto.startswith('base64') else data\n    \
print(proto, ws.subprotocol, body.hex())\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hex: String = logs.bytes().map(|b| format!("{b:02x}")).collect();
    for proto in ["binary.k8s.io", "base64.binary.k8s.io"] {
        assert_eq!(
            text.matches(&format!("{proto} {proto} {hex}\n")).count(),
            5,
            "{proto}: {text}\n{}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            k.node.log()
        );
    }
    // Exec over WebSocket with the protocols before v4, as the conformance suite and older
    // clients speak them: binary `channel.k8s.io` (the error channel says nothing on success, a
    // failure's message otherwise) and text `base64.channel.k8s.io`.
    let out = skiff_tests::python(
        &k.c.kubeconfig(),
        "import base64, ssl, websocket\n\
from kubernetes import client, config\n\
config.load_kube_config()\n\
c = client.Configuration.get_default_copy()\n\
base = c.host.replace('https://', 'wss://') + '/api/v1/namespaces/default/pods/hello/exec?container=hello&stdout=1&stderr=1'\n\
for proto, cmd in [('channel.k8s.io', 'echo+remote+execution+test'), ('channel.k8s.io', 'exit+3'), ('base64.channel.k8s.io', 'echo+remote+execution+test')]:\n    \
url = base + '&command=sh&command=-c&command=' + cmd\n    \
ws = websocket.create_connection(url, subprotocols=[proto], sslopt={'ca_certs': c.ssl_ca_cert, 'certfile': c.cert_file, 'keyfile': c.key_file, 'cert_reqs': ssl.CERT_REQUIRED})\n    \
seen = {}\n    \
while True:\n        \
try:\n            op, data = ws.recv_data()\n        \
except websocket.WebSocketConnectionClosedException:\n            break\n        \
if op == websocket.ABNF.OPCODE_CLOSE:\n            break\n        \
if not data:\n            continue\n        \
if proto.startswith('base64'):\n            ch, body = data[0] - 48, base64.b64decode(data[1:])\n        \
else:\n            ch, body = data[0], data[1:]\n        \
seen[ch] = seen.get(ch, b'') + body\n    \
print(proto, cmd, sorted((k, v.decode()) for k, v in seen.items() if v))\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "channel.k8s.io echo+remote+execution+test [(1, 'remote execution test\\n')]",
        "base64.channel.k8s.io echo+remote+execution+test [(1, 'remote execution test\\n')]",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "{expected}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("channel.k8s.io exit+3 [(3, ") && l.contains("exit code 3")),
        "{text}"
    );
    // The pod answers on its address from the host, through the node's bridge.
    let describe = k.c.ok(&["describe", "pod", "hello"]);
    assert!(
        describe.contains("Pulling") && describe.contains("Started"),
        "{describe}"
    );

    // kubectl exec (WebSocket v5.channel.k8s.io through the API server to the agent): output,
    // exit code, stdin; kubectl cp rides on exec + tar.
    let out = k.c.kubectl(&[
        "exec",
        "hello",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    assert_eq!(
        k.c.ok_stdin(&["exec", "-i", "hello", "--", "cat"], "through stdin\n"),
        "through stdin\n"
    );
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("note.txt"), "copied in\n").unwrap();
    let src = local.path().join("note.txt");
    k.c.ok(&["cp", src.to_str().unwrap(), "hello:/tmp/note.txt"]);
    assert_eq!(
        k.c.ok(&["exec", "hello", "--", "cat", "/tmp/note.txt"]),
        "copied in\n"
    );
    let back = local.path().join("back.txt");
    k.c.ok(&["cp", "hello:/tmp/note.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    let err = k.c.fails(&["exec", "hello", "-c", "nope", "--", "true"]);
    assert!(err.contains("container nope is not valid for pod hello"), "{err}");
    // Container processes do not inherit the agent's ignored SIGPIPE (Rust programs ignore it).
    let ignored = k.c.ok(&[
        "exec",
        "hello",
        "--",
        "sh",
        "-c",
        "grep SigIgn /proc/1/status /proc/self/status",
    ]);
    for line in ignored.lines() {
        let mask = u64::from_str_radix(line.rsplit('\t').next().unwrap().trim(), 16).unwrap();
        assert_eq!(mask & (1 << 12), 0, "SIGPIPE is not ignored: {ignored}");
    }

    // The same over SPDY/3.1 (kubectl's fallback, and older kubectl's only way): output, exit code,
    // stdin, and an attach through kubectl run -i.
    let spdy = |args: &[&str], stdin: &str| {
        let mut cmd = k.c.kubectl_cmd(args);
        cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
        skiff_tests::output_with_stdin(cmd, stdin)
    };
    let out = spdy(
        &[
            "exec",
            "hello",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        "",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(err.contains("err"), "{err}");
    let out = spdy(&["exec", "-i", "hello", "--", "cat"], "through spdy\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through spdy\n");
    let out = spdy(
        &[
            "run",
            "spdy-reader",
            "-i",
            "--rm",
            "--restart=Never",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "read line; echo got $line",
        ],
        "over spdy\n",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("got over spdy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl run -i: the container reads stdin through an attach session (stdinOnce), which ends
    // when the container does; --rm then deletes the pod.
    let out = k.c.ok_stdin(
        &[
            "run",
            "reader",
            "-i",
            "--rm",
            "--restart=Never",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "read line; echo got $line",
        ],
        "piped in\n",
    );
    assert!(out.contains("got piped in"), "{out}");
    // kubectl attach to a running container: what it writes from then on, and stdin into it; with
    // stdinOnce its stdin ends when the session does. A terminal container gets a terminal.
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: talker}}
spec:
  restartPolicy: Never
  containers:
  - name: talker
    image: {image}
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read l; do echo heard $l; echo noted $l >&2; done; echo bye"]
  - name: term
    image: {image}
    tty: true
    command: ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo on a terminal; (exec 3</dev/tty) && echo controlling; sleep 3600"]
"#
    ));
    k.wait_pod("talker", "Running", |p| phase(p) == "Running");
    let out =
        k.c.ok_stdin(&["attach", "-i", "talker", "-c", "talker"], "one\ntwo\n");
    assert!(
        out.contains("heard one\nheard two\n") && out.contains("bye"),
        "{out}"
    );
    k.wait_pod("talker", "its first container to end", |p| {
        status(p, "talker")["state"]["terminated"]["exitCode"] == 0
    });
    let logs = k.c.ok(&["logs", "talker", "-c", "term"]);
    // ... which is its controlling terminal (so a shell has job control), as runc makes it.
    assert_eq!(
        logs,
        "on a terminal\r\ncontrolling\r\n",
        "a terminal's output, as logged\npod: {:#}\nagent log:\n{}",
        k.pod("talker"),
        k.node.log()
    );
    k.c.ok(&["delete", "pod", "talker", "--grace-period=1"]);
    // kubectl exec -it from a terminal (script(1) gives kubectl one): the command's terminal is its
    // controlling terminal too, over WebSocket and over SPDY.
    for websockets in ["true", "false"] {
        let out = std::process::Command::new("script")
            .args([
                "-qec",
                "kubectl exec -it hello -- sh -c '(exec 3</dev/tty) && echo controlling; exit 4'",
                "/dev/null",
            ])
            .env("KUBECONFIG", k.c.kubeconfig())
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
            .stdin(std::process::Stdio::null())
            .bounded_output()
            .expect("running script(1)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("controlling"), "websockets={websockets}: {text}");
        assert_eq!(out.status.code(), Some(4), "websockets={websockets}: {text}");
    }

    // kubectl port-forward to a server that listens on the pod's loopback only: SPDY tunneled in
    // WebSocket messages (kubectl's default), then plain SPDY (its fallback).
    k.c.ok(&[
        "exec",
        "hello",
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo forwarded > /tmp/www/index.html && httpd -p 127.0.0.1:8080 -h /tmp/www",
    ]);
    for websockets in ["true", "false"] {
        let local = skiff_tests::free_port();
        let mut pf =
            k.c.kubectl_cmd(&["port-forward", "pod/hello", &format!("{local}:8080")])
                .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("running kubectl port-forward");
        let got = (0..3)
            .map(|_| http_get(local, Duration::from_secs(20)))
            .collect::<Vec<_>>();
        let _ = pf.kill();
        let out = pf.wait_with_output().expect("kubectl port-forward's output");
        for body in &got {
            assert!(
                body.as_deref().is_ok_and(|b| b.ends_with("\r\n\r\nforwarded\n")),
                "port-forward (websockets={websockets}): {got:?}\nkubectl: {}{}\nagent log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                k.node.log()
            );
        }
    }
    // The Python client's port-forward: WebSocket with the channel protocol (v4.channel.k8s.io).
    let out = skiff_tests::python(
        &k.c.kubeconfig(),
        "from kubernetes import client, config\n\
from kubernetes.stream import portforward\n\
config.load_kube_config()\n\
pf = portforward(client.CoreV1Api().connect_get_namespaced_pod_portforward, 'hello', 'default', ports='8080')\n\
s = pf.socket(8080)\n\
s.setblocking(True)\n\
s.sendall(b'GET / HTTP/1.0\\r\\nHost: hello\\r\\n\\r\\n')\n\
body = b''\n\
while True:\n    chunk = s.recv(4096)\n    if not chunk:\n        break\n    body += chunk\n\
print(body.decode().split('\\r\\n\\r\\n', 1)[1], end='')\n\
print('error:', pf.error(8080))\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "forwarded\nerror: None\n",
        "{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        k.node.log()
    );
    // The proxy subresources (what `kubectl proxy` users open and the conformance suite reads its
    // pods' answers through): to a pod's port, and to a Service's ready endpoint.
    let body = k.c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/hello:8080/proxy/",
    ]);
    assert_eq!(body, "forwarded\n", "agent log:\n{}", k.node.log());
    let missing = k.c.fails(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/hello:http/proxy/",
    ]);
    assert!(missing.contains("no such port"), "{missing}");
    k.c.ok(&["expose", "pod", "hello", "--port=80", "--target-port=8080"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = k.c.kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/services/hello/proxy/index.html",
        ]);
        if String::from_utf8_lossy(&out.stdout) == "forwarded\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "services/proxy: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    k.c.ok(&["delete", "service", "hello"]);
    // Nothing listens on the pod's port 8081: kubectl reports the agent's error.
    let local = skiff_tests::free_port();
    let mut pf =
        k.c.kubectl_cmd(&["port-forward", "pod/hello", &format!("{local}:8081")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl port-forward");
    let answer = http_get(local, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let _ = pf.kill();
    let out = pf.wait_with_output().expect("kubectl port-forward's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        answer.is_err() && stderr.contains("error forwarding port 8081"),
        "{answer:?}\n{stderr}"
    );

    // Init container and an emptyDir shared with the app container; env from a configMap and a
    // secret; a configMap volume whose update reaches the running container.
    k.c.ok(&["create", "configmap", "settings", "--from-literal=color=blue"]);
    k.c.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: shared}}
spec:
  restartPolicy: Never
  initContainers:
  - name: prepare
    image: {image}
    command: ["sh", "-c", "echo prepared-by-init > /work/greeting"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "cat /work/greeting; echo color=$COLOR password=$PASSWORD; echo in-subpath > /per-pod/f; cat /work/shared/f; while ! grep -q green /config/color; do sleep 0.2; done; echo saw $(cat /config/color)"]
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: COLOR
      valueFrom: {{configMapKeyRef: {{name: settings, key: color}}}}
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: work, mountPath: /per-pod, subPathExpr: "$(POD_NAME)"}}
    - {{name: config, mountPath: /config}}
  volumes:
  - {{name: work, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: settings}}}}
"#
    ));
    k.wait_pod("shared", "main running", |p| {
        status(p, "main")["state"]["running"].is_object()
    });
    k.c.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {color: green}\n",
    );
    let pod = k.wait_pod("shared", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let logs = k.c.ok(&["logs", "shared", "-c", "main"]);
    assert!(logs.contains("prepared-by-init"), "{logs}");
    assert!(logs.contains("color=blue password=s3cret"), "{logs}");
    assert!(
        logs.contains("in-subpath"),
        "subPathExpr mounts the volume's directory named from the environment: {logs}"
    );
    assert!(
        logs.contains("saw green"),
        "the configMap update reached the mounted file: {logs}"
    );

    // A crashing container restarts with back-off: CrashLoopBackOff, previous logs kept.
    k.c.ok(&[
        "run",
        "crash",
        "--image",
        &image,
        "--",
        "sh",
        "-c",
        "echo attempt; exit 3",
    ]);
    let pod = k.wait_pod("crash", "CrashLoopBackOff", |p| {
        status(p, "crash")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let s = status(&pod, "crash");
    assert!(s["restartCount"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
    assert!(
        s["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=crash"),
        "{s}"
    );
    assert!(k.c.ok(&["logs", "crash", "--previous"]).contains("attempt"));

    // Over its memory limit the container is OOM-killed (v1 memory cgroup on this hybrid host).
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hungry}}
spec:
  restartPolicy: Never
  containers:
  - name: eat
    image: {image}
    command: ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1"]
    resources: {{limits: {{memory: 16Mi, cpu: 200m}}}}
"#
    ));
    let pod = k.wait_pod("hungry", "Failed", |p| phase(p) == "Failed");
    assert_eq!(
        status(&pod, "eat")["state"]["terminated"]["reason"],
        "OOMKilled",
        "{pod:#}"
    );
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    // The node reports what the OOM killer did (the kubelet's OOMKilling event on the Node).
    let mut oom = String::new();
    for _ in 0..100 {
        oom = k.c.ok(&["get", "events", "-n", "default", "-o", "jsonpath={range .items[?(@.reason==\"OOMKilling\")]}{.involvedObject.kind}/{.involvedObject.name}: {.message}{\"\\n\"}{end}"]);
        if !oom.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        oom.starts_with(&format!(
            "Node/{}: Memory cgroup out of memory: Killed process ",
            k.node.name
        )) && oom.contains(" of container eat of pod default/hungry"),
        "{oom}"
    );

    // A Burstable container gets its memory limit, and on cgroup v2 a memory.high between its
    // request and limit (the kubelet's Memory QoS: request + 0.9 × (limit − request), to a page).
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: burst}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: {image}
    command: ["sleep", "3600"]
    resources: {{requests: {{memory: 8Mi}}, limits: {{memory: 32Mi}}}}
"#
    ));
    let pod = k.wait_pod("burst", "running", |p| {
        status(p, "c")["state"]["running"].is_object()
    });
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (hierarchy, limit_file) = if v2 {
        ("/sys/fs/cgroup".to_string(), "memory.max")
    } else {
        ("/sys/fs/cgroup/memory".to_string(), "memory.limit_in_bytes")
    };
    let pod_dir = format!("{hierarchy}/{}/pod{uid}", k.node.prefix);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let limited: Vec<_> = std::fs::read_dir(&pod_dir)
        .unwrap_or_else(|e| panic!("{pod_dir}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|d| read(d.join(limit_file)) == (32u64 << 20).to_string())
        .collect();
    assert_eq!(
        limited.len(),
        1,
        "one container cgroup under {pod_dir} with a 32 MiB limit"
    );
    if v2 {
        let high = (8u64 << 20) + (24u64 << 20) * 9 / 10;
        assert_eq!(
            read(limited[0].join("memory.high")),
            (high / 4096 * 4096).to_string()
        );
        eprintln!("cgroup v2: memory.max and memory.high checked");
    } else {
        eprintln!("cgroup v1 (hybrid host): memory.limit_in_bytes checked; memory.high is v2 only");
    }
    k.c.ok(&["delete", "pod", "burst", "--wait=false"]);

    // Bad input gives clear pod statuses, not a crash: a missing image, a malformed reference, a
    // missing secret.
    k.c.ok(&[
        "run",
        "noimage",
        "--image",
        &format!("{}/skiff/missing:1", k.registry.host),
    ]);
    let pod = k.wait_pod("noimage", "pull failure", |p| {
        matches!(
            status(p, "noimage")["state"]["waiting"]["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        )
    });
    let msg = status(&pod, "noimage")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("manifest unknown") || msg.contains("not found"),
        "the registry's error is shown: {msg}"
    );
    // kubectl run checks references itself; the API does not, so the node must.
    k.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: badref}\nspec:\n  containers: [{name: badref, image: \"Bad/Image:1\"}]\n");
    k.wait_pod("badref", "InvalidImageName", |p| {
        status(p, "badref")["state"]["waiting"]["reason"] == "InvalidImageName"
    });
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: nosecret}}
spec:
  containers:
  - name: app
    image: {image}
    command: ["sleep", "3600"]
    env: [{{name: X, valueFrom: {{secretKeyRef: {{name: absent, key: k}}}}}}]
"#
    ));
    let pod = k.wait_pod("nosecret", "CreateContainerConfigError", |p| {
        status(p, "app")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    assert_eq!(
        status(&pod, "app")["state"]["waiting"]["message"],
        "secret \"absent\" not found"
    );

    // The agent is killed and restarted: the running pod is adopted, not restarted.
    let before = status(&k.pod("hello"), "hello").clone();
    k.c.ok(&["run", "doomed", "--image", &image, "--", "sleep", "3600"]);
    let doomed = k.wait_pod("doomed", "Ready", |p| status(p, "doomed")["ready"] == true);
    let doomed_uid = doomed["metadata"]["uid"].as_str().unwrap().to_string();
    let started: Value = serde_json::from_str(
        &std::fs::read_to_string(k.node.data_dir().join(format!(
            "pods/{doomed_uid}/containers/doomed/0/status/started.json"
        )))
        .unwrap(),
    )
    .unwrap();
    let doomed_pid = started["pid"].as_i64().unwrap();
    let mut k = k;
    k.node.kill9();
    // While the agent is down, one pod is removed from the API outright.
    k.c.ok(&["delete", "pod", "doomed", "--grace-period=0", "--force"]);
    k.node.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while k.node.data_dir().join(format!("pods/{doomed_uid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !k.node.data_dir().join(format!("pods/{doomed_uid}")).exists(),
        "the returning agent cleans up a pod deleted meanwhile: {}",
        k.node.log()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{doomed_pid}")).exists(),
        "its container is gone"
    );
    k.c.ok(&[
        "delete",
        "pod",
        "noimage",
        "badref",
        "nosecret",
        "crash",
        "--grace-period=1",
    ]);
    let after = status(&k.pod("hello"), "hello").clone();
    assert_eq!(before["containerID"], after["containerID"]);
    assert_eq!(after["restartCount"], 0);
    assert!(after["state"]["running"].is_object(), "{after}");
    assert!(k.c.ok(&["logs", "hello"]).contains("hello from hello"));

    // Deletion with a grace period: sh as PID 1 ignores SIGTERM, so it is killed when the grace
    // period ends, and the pod leaves the node and the API.
    k.c.ok(&["delete", "pod", "hello", "--grace-period=1"]);
    assert!(k.c.kubectl(&["get", "pod", "hello"]).status.code() != Some(0));
    let pods_dir = k.node.data_dir().join("pods");
    let holds_hello = || {
        std::fs::read_dir(&pods_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("pod.json"))
                    .is_ok_and(|p| p.contains("\"name\":\"hello\""))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while holds_hello() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = !holds_hello();
    assert!(gone, "the deleted pod's state is removed from the node");
}

#[test]
fn images_import_from_archives() {
    let dir = tempfile::tempdir().unwrap();
    let archive = skiff_tests::image::busybox_oci_archive(dir.path());
    let data = dir.path().join("agent");
    let run = |args: &[&str]| {
        std::process::Command::new(skiff_tests::node::agent_bin())
            .args(["image"])
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .bounded_output()
            .unwrap()
    };
    // The archive names only a tag: it is imported, and --name gives it a reference.
    let out = run(&["import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pass --name"));
    let out = run(&[
        "import",
        archive.to_str().unwrap(),
        "--name",
        "example.com/tools/busybox:1",
    ]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&run(&["list"]).stdout).into_owned();
    assert!(list.contains("example.com/tools/busybox:1\tsha256:"), "{list}");
    // Not an archive: one line, non-zero exit.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"definitely not a tarball").unwrap();
    let out = run(&["import", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("skiff-agent: "), "{err}");
}

#[test]
fn probes_flip_readiness_and_restart_unhealthy_containers() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  containers:
  - name: flip
    image: {image}
    command: ["sleep", "3600"]
    readinessProbe:
      exec: {{command: ["test", "-f", "/tmp/ready"]}}
      periodSeconds: 1
      # An exec probe starts a libcontainer tenant: seconds, not milliseconds, on an emulated CPU
      # (the cgroup v2 machine).
      timeoutSeconds: 10
      failureThreshold: 1
  - name: web
    image: {image}
    command: ["httpd", "-f", "-p", "8080", "-h", "/var/www"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /index.html, port: http}}
      periodSeconds: 1
  - name: dead
    image: {image}
    command: ["sleep", "3600"]
    livenessProbe:
      tcpSocket: {{port: 9999}}
      periodSeconds: 1
      failureThreshold: 2
  terminationGracePeriodSeconds: 1
"#
    ));
    // The HTTP probe turns ready once httpd answers; the exec probe once the file exists (the test
    // makes it: no race with the probe's period, however slow the machine) ...
    k.wait_pod("probed", "web ready", |p| status(p, "web")["ready"] == true);
    assert_eq!(status(&k.pod("probed"), "flip")["ready"], false);
    k.c.ok(&["exec", "probed", "-c", "flip", "--", "touch", "/tmp/ready"]);
    k.wait_pod("probed", "flip ready", |p| status(p, "flip")["ready"] == true);
    assert_eq!(status(&k.pod("probed"), "flip")["restartCount"], 0);
    // ... and not ready again once the file is gone, without a restart.
    k.c.ok(&["exec", "probed", "-c", "flip", "--", "rm", "/tmp/ready"]);
    let pod = k.wait_pod("probed", "flip unready", |p| status(p, "flip")["ready"] == false);
    assert_eq!(status(&pod, "flip")["restartCount"], 0);
    assert!(status(&pod, "flip")["state"]["running"].is_object());
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    // Nothing listens on 9999: the liveness probe fails and the container is restarted.
    let pod = k.wait_pod("probed", "dead restarted", |p| {
        status(p, "dead")["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    assert!(status(&pod, "web")["ready"] == true);
    let events = k.c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=probed",
        "-o",
        "json",
    ]);
    assert!(events.contains("Liveness probe failed: dial tcp"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );

    // gRPC: a `grpc.health.v1` server on the node's address (127.0.0.1 here) behind a
    // host-network pod; its readiness follows what the server answers.
    let health = tempfile::tempdir().unwrap();
    let status_file = health.path().join("status");
    std::fs::write(&status_file, "SERVING").unwrap();
    let port = skiff_tests::free_port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_grpc-health"))
        .arg(format!("127.0.0.1:{port}"))
        .arg(&status_file)
        .spawn()
        .expect("starting the gRPC health server");
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: grpc-probed}}
spec:
  hostNetwork: true
  containers:
  - name: app
    image: {image}
    command: ["sleep", "3600"]
    readinessProbe:
      grpc: {{port: {port}, service: app}}
      periodSeconds: 1
      timeoutSeconds: 5
      failureThreshold: 1
  terminationGracePeriodSeconds: 1
"#
    ));
    k.wait_pod("grpc-probed", "ready through gRPC", |p| {
        status(p, "app")["ready"] == true
    });
    // A host-network pod sees the node's hosts file under the kubelet's header (other pods get
    // one naming the pod).
    let hosts = k.c.ok(&["exec", "grpc-probed", "--", "cat", "/etc/hosts"]);
    let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert!(
        hosts.starts_with("# Kubernetes-managed hosts file (host network).\n")
            && hosts.contains(node_hosts.trim_end()),
        "{hosts}"
    );
    std::fs::write(&status_file, "NOT_SERVING").unwrap();
    let pod = k.wait_pod("grpc-probed", "unready through gRPC", |p| {
        status(p, "app")["ready"] == false
    });
    assert_eq!(status(&pod, "app")["restartCount"], 0);
    let events = k.c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=grpc-probed",
        "-o",
        "json",
    ]);
    assert!(
        events.contains(r#"Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")"#),
        "{events}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn lifecycle_hooks_run_around_the_container() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    let host = tempfile::tempdir().unwrap();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "trap 'echo got TERM >> /out/log; exit 0' TERM; while [ ! -f /tmp/post ]; do sleep 0.1; done; echo saw postStart; while true; do sleep 0.1; done"]
    lifecycle:
      postStart: {{exec: {{command: ["touch", "/tmp/post"]}}}}
      preStop: {{exec: {{command: ["sh", "-c", "echo preStop >> /out/log"]}}}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - {{name: out, hostPath: {{path: {}, type: Directory}}}}
"#,
        host.path().display()
    ));
    k.wait_pod("hooked", "postStart seen", |_| {
        k.c.kubectl(&["logs", "hooked"])
            .stdout
            .starts_with(b"saw postStart")
    });
    // Deletion: preStop runs first, then SIGTERM (which the trap answers), within the grace period.
    k.c.ok(&["delete", "pod", "hooked"]);
    let log = std::fs::read_to_string(host.path().join("log")).unwrap_or_default();
    assert_eq!(log, "preStop\ngot TERM\n", "hooks and signal in order");

    // An image whose config sets no PATH still finds its commands (the runtime's default PATH, as
    // containerd's), and the downward API gives the pod's and node's addresses in env.
    let bare = k.registry.busybox_without_path();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: bare}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {bare}
    command: ["sh", "-c", "echo PATH=$PATH; echo POD_IP=$POD_IP HOST_IP=$HOST_IP"]
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: HOST_IP
      valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}
"#
    ));
    let pod = k.wait_pod("bare", "Succeeded", |p| phase(p) == "Succeeded");
    let logs = k.c.ok(&["logs", "bare"]);
    assert!(
        logs.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{logs}"
    );
    let ip = pod["status"]["podIP"].as_str().expect("a pod IP");
    let host_ip = pod["status"]["hostIP"].as_str().expect("a host IP");
    assert!(
        logs.contains(&format!("POD_IP={ip} HOST_IP={host_ip}\n")),
        "{logs}"
    );

    // no_new_privs as the kubelet sets it: only with `allowPrivilegeEscalation: false`. A non-root
    // user that may escalate still runs under the runtime's default seccomp profile.
    let image = k.registry.busybox();
    let report = r#"["sh", "-c", "id -u; grep NoNewPrivs /proc/self/status"]"#;
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: privileges}}
spec:
  restartPolicy: Never
  securityContext: {{seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - {{name: escalating, image: {image}, command: {report},
      securityContext: {{runAsUser: 1000, allowPrivilegeEscalation: true}}}}
  - {{name: confined, image: {image}, command: {report},
      securityContext: {{runAsUser: 1000, allowPrivilegeEscalation: false}}}}
  - {{name: unset, image: {image}, command: {report}}}
"#
    ));
    k.wait_pod("privileges", "Succeeded", |p| phase(p) == "Succeeded");
    let report = |c: &str| {
        let out = k.c.ok(&["logs", "privileges", "-c", c]);
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert_eq!(report("escalating"), "1000 NoNewPrivs: 0");
    assert_eq!(report("confined"), "1000 NoNewPrivs: 1");
    assert_eq!(report("unset"), "0 NoNewPrivs: 0");
}

#[test]
fn exec_and_new_containers_outlive_an_upgrade_of_the_agent_binary() {
    // The agent runs from a copy, which an "upgrade" then replaces on disk with something else.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("skiff-agent");
    std::fs::copy(skiff_tests::node::agent_bin(), &bin).unwrap();
    let k = Cluster::start_with_agent(&bin);
    let image = k.registry.busybox();
    let run = |name: &str| {
        k.c.ok(&["run", name, "--image", &image, "--", "sleep", "3600"]);
        k.wait_pod(name, "Running", |p| phase(p) == "Running");
    };
    run("before");
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho another version >&2\nexit 42\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Exec goes through the binary that runs, and so does a new pod's shim.
    assert_eq!(
        k.c.ok(&["exec", "before", "--", "echo", "still here"]),
        "still here\n"
    );
    run("after");
    assert_eq!(k.c.ok(&["exec", "after", "--", "echo", "new too"]), "new too\n");
}

#[test]
fn claims_mount_their_provisioned_volume_and_outlive_the_pod() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    let storage = tempfile::tempdir().unwrap();
    k.apply(&format!(
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: test-local}}
provisioner: skiff.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
parameters: {{path: {path}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  storageClassName: test-local
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"#,
        path = storage.path().display()
    ));
    let writer = |name: &str, command: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "{command}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}
"#
        )
    };
    k.apply(&writer("first", "echo kept > /data/file"));
    k.wait_pod("first", "Succeeded", |p| phase(p) == "Succeeded");
    let volume =
        k.c.ok(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"]);
    let dir = storage.path().join(format!("{volume}_default_data"));
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).unwrap_or_default(),
        "kept\n",
        "the container wrote into the provisioned directory"
    );
    // A second pod sees what the first one left.
    k.c.ok(&["delete", "pod", "first"]);
    k.apply(&writer("second", "cat /data/file"));
    k.wait_pod("second", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(k.c.ok(&["logs", "second"]).trim(), "kept");
}

#[test]
fn projected_service_account_tokens_authenticate_as_the_pods_account() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    // The host's kubectl (a static binary), to run as an in-cluster client inside the pod.
    let kubectl = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .expect("kubectl on PATH");
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: tokened}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: {image}
    command: ["sleep", "3600"]
    volumeMounts:
    - {{name: tokens, mountPath: /var/run/secrets/tokens}}
    - {{name: kubectl, mountPath: /usr/local/bin/kubectl}}
  volumes:
  - name: tokens
    projected:
      sources:
      - serviceAccountToken: {{path: api, expirationSeconds: 3600}}
      - serviceAccountToken: {{path: vault, audience: vault, expirationSeconds: 3600}}
  - {{name: kubectl, hostPath: {{path: {}, type: File}}}}
"#,
        kubectl.display()
    ));
    k.wait_pod("tokened", "Running", |p| phase(p) == "Running");
    let read = |file: &str| {
        k.c.ok(&[
            "exec",
            "tokened",
            "--",
            "cat",
            &format!("/var/run/secrets/tokens/{file}"),
        ])
    };
    let token = read("api");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // What in-cluster clients read: every pod mounts a kube-api-access volume (a bound token, the
    // cluster CA, the namespace), and the API's Service is in its environment with the others of
    // its namespace.
    let ca = k.c.data_dir().join("pki/ca.crt");
    let api_path = "/var/run/secrets/kubernetes.io/serviceaccount";
    let in_pod = |pod: &str, file: &str| k.c.ok(&["exec", pod, "--", "cat", &format!("{api_path}/{file}")]);
    assert_eq!(in_pod("tokened", "namespace"), "default");
    assert_eq!(in_pod("tokened", "ca.crt"), std::fs::read_to_string(&ca).unwrap());
    let mounted = in_pod("tokened", "token");
    let api: Value = serde_json::from_str(&k.c.ok(&["get", "service", "kubernetes", "-o", "json"])).unwrap();
    let api_ip = api["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert_eq!(api["spec"]["ports"][0]["port"], 443);
    let endpoints = k.c.ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ]);
    assert_eq!(endpoints, k.c.url().trim_start_matches("https://"));
    let web_ip =
        k.c.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let env = k.c.ok(&["exec", "tokened", "--", "env"]);
    for var in [
        format!("KUBERNETES_SERVICE_HOST={api_ip}"),
        "KUBERNETES_SERVICE_PORT=443".into(),
        "KUBERNETES_SERVICE_PORT_HTTPS=443".into(),
        format!("KUBERNETES_PORT=tcp://{api_ip}:443"),
        format!("WEB_SERVICE_HOST={web_ip}"),
        format!("WEB_PORT_80_TCP=tcp://{web_ip}:80"),
        format!("WEB_PORT_80_TCP_ADDR={web_ip}"),
    ] {
        assert!(env.lines().any(|l| l == var), "{var} in:\n{env}");
    }
    // An in-cluster client (kubectl without a kubeconfig) reaches the API server through the
    // `kubernetes` Service, trusts it with the mounted CA and authenticates with the mounted token.
    let err = k.c.fails(&["exec", "tokened", "--", "kubectl", "get", "pods"]);
    assert!(
        err.contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods""#),
        "{err}"
    );
    // Service links off: only the API's Service; automount off: no credentials.
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: quiet}}
spec:
  terminationGracePeriodSeconds: 0
  enableServiceLinks: false
  automountServiceAccountToken: false
  containers:
  - {{name: app, image: {image}, command: ["sleep", "3600"]}}
"#
    ));
    k.wait_pod("quiet", "Running", |p| phase(p) == "Running");
    let env = k.c.ok(&["exec", "quiet", "--", "env"]);
    assert!(
        env.contains("KUBERNETES_SERVICE_HOST=") && !env.contains("WEB_SERVICE_HOST"),
        "{env}"
    );
    assert!(
        k.c.fails(&["exec", "quiet", "--", "ls", api_path])
            .contains("No such file")
    );

    // The official Python client, in a pod: `load_incluster_config()` finds the API through the
    // environment and the mounted credentials, and lists its namespace's pods as the pod's
    // service account, which a RoleBinding lets read (`view`). Its interpreter and libraries are
    // the host's (Debian's python3 under /usr, mounted read-only), the client a venv `cargo xtask
    // test` makes.
    k.c.ok(&["create", "serviceaccount", "reader"]);
    k.c.ok(&[
        "create",
        "rolebinding",
        "reader-views",
        "--clusterrole=view",
        "--serviceaccount=default:reader",
    ]);
    let venv = skiff_tests::python_venv();
    let script = "from kubernetes import client, config\n\
config.load_incluster_config()\n\
ns = open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read()\n\
try:\n    print('listed', len(client.CoreV1Api().list_namespaced_pod(ns).items))\n\
except client.ApiException as e:\n    print('status', e.status)\n    print(e.body)\n";
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: python}}
spec:
  restartPolicy: Never
  serviceAccountName: reader
  containers:
  - name: client
    image: {image}
    command: ["{venv}/bin/python", "-c", {script:?}]
    volumeMounts:
    - {{name: usr, mountPath: /usr, readOnly: true}}
    - {{name: lib, mountPath: /lib, readOnly: true}}
    - {{name: lib64, mountPath: /lib64, readOnly: true}}
    - {{name: venv, mountPath: {venv}, readOnly: true}}
  volumes:
  - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
  - {{name: lib, hostPath: {{path: /usr/lib, type: Directory}}}}
  - {{name: lib64, hostPath: {{path: /usr/lib64, type: Directory}}}}
  - {{name: venv, hostPath: {{path: {venv}, type: Directory}}}}
"#,
        venv = venv.display()
    ));
    k.wait_pod("python", "done", |p| matches!(phase(p), "Succeeded" | "Failed"));
    let out = k.c.ok(&["logs", "python"]);
    assert!(out.starts_with("listed "), "{out}");
    // kubectl with the token alone: it authenticates as the pod's service account (which no
    // binding lets list pods: Forbidden, not Unauthorized).
    let ca = k.c.data_dir().join("pki/ca.crt");
    let with_token = |token: &str| {
        let out = std::process::Command::new("kubectl")
            .env("KUBECONFIG", "/dev/null")
            .args(["--server", &k.c.url(), "--token", token])
            .arg(format!("--certificate-authority={}", ca.display()))
            .args(["get", "pods"])
            .bounded_output()
            .expect("running kubectl");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = with_token(&token);
    assert!(with_token(&mounted).contains(r#"User "system:serviceaccount:default:default" cannot list"#));
    assert!(
        err.contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods""#),
        "{err}\ntoken: {token}\ncontrol log:\n{}",
        k.c.log()
    );
    // A token for another audience is no key to the API server, nor is a forged one.
    let vault = read("vault");
    assert!(
        with_token(&vault).contains("Unauthorized"),
        "{}",
        with_token(&vault)
    );
    let (signed, _) = token.rsplit_once('.').unwrap();
    assert!(with_token(&format!("{signed}.AAAA")).contains("Unauthorized"));
    // The volume is refreshed every few seconds, the token only near the end of its life.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(read("api"), token);
    // Bound to the pod: gone with it.
    k.c.ok(&["delete", "pod", "tokened", "--grace-period=0", "--force"]);
    assert!(
        with_token(&token).contains("Unauthorized"),
        "{}",
        with_token(&token)
    );
}

#[test]
fn kubectl_debug_adds_ephemeral_containers_that_see_their_target() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: {image}, command: ["sh", "-c", "sleep 3600"]}}
"#
    ));
    k.wait_pod("web", "Running", |p| phase(p) == "Running");

    // A debugger targeting the app sees its processes, in the pod's network and host name.
    k.c.ok(&[
        "debug",
        "web",
        "--image",
        &image,
        "--container=dbg",
        "--target=app",
        "--",
        "sh",
        "-c",
        "ps; hostname",
    ]);
    let pod = k.wait_pod("web", "the debugger ran to its end", |p| {
        p["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    });
    assert_eq!(pod["spec"]["ephemeralContainers"][0]["name"], "dbg");
    let status = &pod["status"]["ephemeralContainerStatuses"][0];
    assert_eq!(
        (status["name"].as_str(), status["ready"].as_bool()),
        (Some("dbg"), Some(false))
    );
    assert_eq!(phase(&pod), "Running", "an ended debugger leaves the pod running");
    let logs = k.c.ok(&["logs", "web", "-c", "dbg"]);
    assert!(logs.contains("sleep 3600") && logs.contains("web\n"), "{logs}");

    // `kubectl debug -i` attaches to the new container's stdin.
    let out = k.c.ok_stdin(
        &[
            "debug",
            "web",
            "-i",
            "--image",
            &image,
            "--container=shell",
            "--",
            "sh",
        ],
        "echo hello from $(hostname)\nexit\n",
    );
    assert!(out.contains("hello from web"), "{out}");
    let pod = k.wait_pod("web", "the shell ended", |p| {
        p["status"]["ephemeralContainerStatuses"][1]["state"]["terminated"].is_object()
    });
    // Ended ephemeral containers are never restarted.
    std::thread::sleep(Duration::from_secs(2));
    let again = k.pod("web");
    assert_eq!(
        again["status"]["ephemeralContainerStatuses"], pod["status"]["ephemeralContainerStatuses"],
        "an ephemeral container was restarted"
    );

    // They are added, never removed, and a pod is never created with one.
    let err = k.c.fails(&[
        "patch",
        "pod",
        "web",
        "--subresource=ephemeralcontainers",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/ephemeralContainers/0"}]"#,
    ]);
    assert!(
        err.contains(r#"existing ephemeral containers "dbg" may not be removed"#),
        "{err}"
    );
    let err = k.c.fails_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: early}}\nspec:\n  containers: [{{name: app, image: {image}}}]\n  ephemeralContainers: [{{name: dbg, image: {image}}}]\n"
        ),
    );
    assert!(
        err.contains("spec.ephemeralContainers: Forbidden: cannot be set on create"),
        "{err}"
    );
}

/// A pod's host port reaches it from the node (from 127.0.0.1 too, as with upstream's portmap);
/// a pod bound to the node by name whose host port a running pod holds is refused by the node
/// (phase Failed, reason NodePorts) and never started, as the kubelet refuses it.
#[test]
fn host_ports_reach_their_pod_and_a_pod_whose_host_port_is_taken_is_refused() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    let node = k.node.name.clone();
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: app, image: {image}, command: [sh, -c, 'mkdir -p /www && echo held by {name} > /www/index.html && exec httpd -f -p 8080 -h /www'], ports: [{{containerPort: 8080, hostPort: 21017}}]}}\n"
        )
    };
    k.apply(&pod("holder"));
    k.wait_pod("holder", "Running", |p| phase(p) == "Running");
    let answer = http_get(21017, Duration::from_secs(30)).expect("the host port answers");
    assert!(answer.contains("held by holder"), "{answer}");
    let table = format!("skiff-{}-hostports", k.node.bridge());
    k.apply(&pod("late"));
    let late = k.wait_pod("late", "refused", |p| phase(p) == "Failed");
    assert_eq!(late["status"]["reason"], "NodePorts");
    assert_eq!(late["status"]["message"], "Predicate NodePorts failed");
    assert!(late["status"]["containerStatuses"].is_null(), "{late:#}");
    k.c.ok(&["delete", "pod", "late", "--timeout=60s"]);
    // The mapping goes with the pod; the table with the last mapping.
    k.c.ok(&["delete", "pod", "holder", "--timeout=60s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::process::Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "{table} outlived the last host port");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn proxies_reach_tls_ports_and_keep_html_links_under_the_proxy() {
    // The conformance suite's proxy spec, with a server of our own: plain and TLS ports of a pod
    // (Python's http.server and ssl, the host's interpreter mounted read-only, a self-signed
    // certificate from a Secret), through pods/proxy and services/proxy. HTML links to absolute
    // paths come back under the proxy path, as upstream's proxy rewrites them.
    let k = Cluster::start();
    let image = k.registry.busybox();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["web".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    k.c.ok(&[
        "create",
        "secret",
        "tls",
        "certs",
        &format!("--cert={}", crt_path.display()),
        &format!("--key={}", key_path.display()),
    ]);
    let script = r#"import http.server, ssl, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.body.encode()
        self.send_response(200)
        self.send_header('Content-Type', self.server.ctype)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
def serve(port, body, ctype, tls):
    s = http.server.ThreadingHTTPServer(('0.0.0.0', port), H)
    s.body, s.ctype = body, ctype
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain('/certs/tls.crt', '/certs/tls.key')
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
    s.serve_forever()
for args in [(1080, '<a href="/rewriteme">test</a>', 'text/html; charset=utf-8', False),
             (443, '<a href="/tlsrewriteme">test</a>', 'text/html', True),
             (460, 'tls baz', 'text/plain', True)]:
    threading.Thread(target=serve, args=args).start()
"#;
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  containers:
  - name: server
    image: {image}
    command: ["/usr/bin/python3", "-c", {script:?}]
    volumeMounts:
    - {{name: usr, mountPath: /usr, readOnly: true}}
    - {{name: lib, mountPath: /lib, readOnly: true}}
    - {{name: lib64, mountPath: /lib64, readOnly: true}}
    - {{name: certs, mountPath: /certs, readOnly: true}}
  volumes:
  - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
  - {{name: lib, hostPath: {{path: /usr/lib, type: Directory}}}}
  - {{name: lib64, hostPath: {{path: /usr/lib64, type: Directory}}}}
  - {{name: certs, secret: {{secretName: certs}}}}
"#
    ));
    k.wait_pod("web", "running", |p| phase(p) == "Running");
    k.c.ok(&["create", "service", "clusterip", "web", "--tcp=444:460"]);
    let get = |path: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = k.c.kubectl(&["get", "--raw", path]);
            if out.status.success() || Instant::now() > deadline {
                return format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let pods = "/api/v1/namespaces/default/pods";
    for (path, want) in [
        (
            format!("{pods}/web:1080/proxy/"),
            format!(r#"<a href="{pods}/web:1080/proxy/rewriteme">test</a>"#),
        ),
        (
            format!("{pods}/http:web:1080/proxy/"),
            format!(r#"<a href="{pods}/http:web:1080/proxy/rewriteme">test</a>"#),
        ),
        (
            format!("{pods}/https:web:443/proxy/"),
            format!(r#"<a href="{pods}/https:web:443/proxy/tlsrewriteme">test</a>"#),
        ),
        (format!("{pods}/https:web:460/proxy/"), "tls baz".to_owned()),
        (
            "/api/v1/namespaces/default/services/https:web:444-460/proxy/".to_owned(),
            "tls baz".to_owned(),
        ),
    ] {
        assert_eq!(get(&path), want, "{path}\nagent log:\n{}", k.node.log());
    }
}

#[test]
fn api_services_hand_their_group_to_an_aggregated_server_in_a_pod() {
    // API aggregation as metrics-server and custom API servers use it: an APIService names a
    // Service; the API server checks the server behind it (Available), lists its resources in
    // discovery, and proxies requests to it over TLS (the server's certificate checked against
    // caBundle), presenting the front proxy certificate, with the caller in X-Remote-User and
    // X-Remote-Group. The server (Python's http.server and ssl) trusts the front proxy CA from
    // kube-system/extension-apiserver-authentication, as aggregated servers do.
    let k = Cluster::start();
    let image = k.registry.busybox();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["wardle.kube-system.svc".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    k.c.ok(&[
        "-n",
        "kube-system",
        "create",
        "secret",
        "tls",
        "wardle-certs",
        &format!("--cert={}", crt_path.display()),
        &format!("--key={}", key_path.display()),
    ]);
    let script = r#"import http.server, ssl, json
gv = '/apis/wardle.example.com/v1alpha1'
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        cert = self.connection.getpeercert() or {}
        proxy = dict(x[0] for x in cert.get('subject', ())).get('commonName')
        if self.path == gv:
            body = {'kind': 'APIResourceList', 'apiVersion': 'v1', 'groupVersion': 'wardle.example.com/v1alpha1',
                    'resources': [{'name': 'flunders', 'singularName': 'flunder', 'namespaced': True,
                                   'kind': 'Flunder', 'verbs': ['get', 'list']}]}
        elif self.path.split('?')[0] == gv + '/namespaces/default/flunders':
            body = {'kind': 'FlunderList', 'apiVersion': 'wardle.example.com/v1alpha1', 'metadata': {},
                    'items': [{'kind': 'Flunder', 'apiVersion': 'wardle.example.com/v1alpha1',
                               'metadata': {'name': 'seen', 'namespace': 'default'},
                               'spec': {'user': self.headers.get('X-Remote-User'),
                                        'groups': self.headers.get_all('X-Remote-Group'), 'proxy': proxy}}]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('/certs/tls.crt', '/certs/tls.key')
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=open('/auth/requestheader-client-ca-file').read())
s = http.server.ThreadingHTTPServer(('0.0.0.0', 8443), H)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: wardle, namespace: kube-system, labels: {{app: wardle}}}}
spec:
  containers:
  - name: server
    image: {image}
    command: ["/usr/bin/python3", "-c", {script:?}]
    volumeMounts:
    - {{name: usr, mountPath: /usr, readOnly: true}}
    - {{name: lib, mountPath: /lib, readOnly: true}}
    - {{name: lib64, mountPath: /lib64, readOnly: true}}
    - {{name: certs, mountPath: /certs, readOnly: true}}
    - {{name: auth, mountPath: /auth, readOnly: true}}
  volumes:
  - {{name: usr, hostPath: {{path: /usr, type: Directory}}}}
  - {{name: lib, hostPath: {{path: /usr/lib, type: Directory}}}}
  - {{name: lib64, hostPath: {{path: /usr/lib64, type: Directory}}}}
  - {{name: certs, secret: {{secretName: wardle-certs}}}}
  - {{name: auth, configMap: {{name: extension-apiserver-authentication}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: wardle, namespace: kube-system}}
spec:
  selector: {{app: wardle}}
  ports: [{{port: 443, targetPort: 8443}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1alpha1.wardle.example.com}}
spec:
  group: wardle.example.com
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: {bundle}
  service: {{namespace: kube-system, name: wardle, port: 443}}
"#,
        bundle = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert.pem())
    ));
    let condition = |status: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = k.c.ok(&[
                "get",
                "apiservice",
                "v1alpha1.wardle.example.com",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status} {.status.conditions[?(@.type==\"Available\")].reason}",
            ]);
            if got.starts_with(status) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "APIService never {status}: {got}\npod: {:#}\nagent log:\n{}",
                k.pod("wardle"),
                k.node.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    condition("True");
    let resources = k.c.ok(&["api-resources", "--api-group=wardle.example.com"]);
    assert!(
        resources.contains("flunders") && resources.contains("Flunder"),
        "{resources}"
    );
    let listed = json_value(&k.c.ok(&["get", "flunders", "-o", "json"]));
    let spec = &listed["items"][0]["spec"];
    assert_eq!(spec["user"], "skiff-admin", "{listed}");
    assert_eq!(spec["proxy"], "front-proxy-client", "{listed}");
    let groups = spec["groups"].to_string();
    assert!(
        groups.contains("system:masters") && groups.contains("system:authenticated"),
        "{listed}"
    );
    // The server goes away: the APIService says so, and its requests get a 503.
    k.c.ok(&[
        "-n",
        "kube-system",
        "delete",
        "pod",
        "wardle",
        "--grace-period=0",
        "--force",
    ]);
    let down = condition("False");
    assert!(
        down.ends_with("MissingEndpoints") || down.ends_with("FailedDiscoveryCheck"),
        "{down}"
    );
    let refused = k.c.fails(&[
        "get",
        "--raw",
        "/apis/wardle.example.com/v1alpha1/namespaces/default/flunders",
    ]);
    assert!(
        refused.contains("ServiceUnavailable") || refused.contains("unable to handle"),
        "{refused}"
    );
}

fn json_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn pods_are_confined_as_their_security_context_says() {
    let mut k = Cluster::start();
    let image = k.registry.busybox();
    let node = k.node.name.clone();
    // Under the default profile and capabilities a root container can neither make namespaces nor
    // mount, nor open raw sockets; the capabilities alone do not lift the profile, and only
    // `Unconfined` with them does.
    let probe = r#"["sh", "-c", "unshare -n true 2>/dev/null && echo unshare:ok || echo unshare:denied; mount -t tmpfs t /tmp 2>/dev/null && echo mount:ok || echo mount:denied; ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && echo raw:ok || echo raw:denied; awk '$5 ~ \"^/proc/\" {n++} END {print \"masked:\" n+0}' /proc/self/mountinfo"]"#;
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: confined}}
spec:
  restartPolicy: Never
  containers:
  - {{name: plain, image: {image}, command: {probe}}}
  - {{name: capable, image: {image}, command: {probe},
      securityContext: {{capabilities: {{add: [SYS_ADMIN, NET_RAW]}}}}}}
  - {{name: unconfined, image: {image}, command: {probe},
      securityContext: {{seccompProfile: {{type: Unconfined}}, procMount: Unmasked,
        capabilities: {{add: [SYS_ADMIN, NET_RAW]}}}}}}
"#
    ));
    k.wait_pod("confined", "Succeeded", |p| phase(p) == "Succeeded");
    let report = |c: &str| {
        k.c.ok(&["logs", "confined", "-c", c])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let plain = report("plain");
    assert!(
        plain.starts_with("unshare:denied mount:denied raw:denied masked:"),
        "{plain}"
    );
    assert_ne!(
        plain, "unshare:denied mount:denied raw:denied masked:0",
        "/proc is masked"
    );
    let capable = report("capable");
    assert!(
        capable.starts_with("unshare:denied mount:denied raw:ok"),
        "{capable}"
    );
    assert_eq!(report("unconfined"), "unshare:ok mount:ok raw:ok masked:0");

    // Localhost profiles come from the agent's profile directory; one that is missing keeps the
    // container from being created, with the reason upstream gives.
    let profiles = k.node.data_dir().join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let local = |name: &str, profile: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  securityContext: {{seccompProfile: {{type: Localhost, localhostProfile: {profile}}}}}
  containers:
  - {{name: app, image: {image}, command: ["sh", "-c", "mkdir /tmp/d || echo refused; touch /tmp/f && echo touched"]}}
"#
        )
    };
    k.apply(&local("localhost", "profiles/no-mkdir.json"));
    k.wait_pod("localhost", "Succeeded", |p| phase(p) == "Succeeded");
    let log = k.c.ok(&["logs", "localhost"]);
    assert!(
        log.contains("Operation not permitted") && log.contains("refused\n") && log.contains("touched\n"),
        "{log}"
    );
    k.apply(&local("missing", "profiles/absent.json"));
    let missing = k.wait_pod("missing", "CreateContainerError", |p| {
        status(p, "app")["state"]["waiting"]["reason"] == "CreateContainerError"
    });
    let message = status(&missing, "app")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("cannot load seccomp profile") && message.contains("profiles/absent.json"),
        "{message}"
    );

    // runAsNonRoot: a root image (busybox has no user) or an explicit uid 0 is refused with the
    // kubelet's words; an explicit non-root uid runs.
    let non_root = |name: &str, user: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true{user}}}
  containers:
  - {{name: app, image: {image}, command: ["id", "-u"]}}
"#
        )
    };
    for (name, user, words) in [
        (
            "root-image",
            "",
            "container has runAsNonRoot and image will run as root",
        ),
        (
            "root-uid",
            ", runAsUser: 0",
            "container's runAsUser breaks non-root policy",
        ),
    ] {
        k.apply(&non_root(name, user));
        let refused = k.wait_pod(name, "CreateContainerConfigError", |p| {
            status(p, "app")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        });
        let message = status(&refused, "app")["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.starts_with(words) && message.contains("container: app"),
            "{message}"
        );
    }
    // A privileged container gets every capability the agent holds (its own set: a host without
    // one must not make privileged pods fail to start) and may change its network; an
    // unprivileged one may not.
    for (name, privileged) in [("privileged", true), ("unprivileged", false)] {
        k.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "ip link add v0 type veth peer name v1 && echo added || echo refused"]
    securityContext: {{privileged: {privileged}}}
"#
        ));
        k.wait_pod(name, "Succeeded", |p| phase(p) == "Succeeded");
        let log = k.c.ok(&["logs", name]);
        let want = if privileged { "added" } else { "refused" };
        assert!(log.lines().any(|l| l == want), "{name}: {log}");
    }
    k.apply(&non_root("non-root-uid", ", runAsUser: 1234"));
    k.wait_pod("non-root-uid", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(k.c.ok(&["logs", "non-root-uid"]).trim(), "1234");

    // fsGroup owns the pod's volumes: setgid directories the group may write, files it may read,
    // and what the container makes inherits the group.
    k.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{key: value}}
---
apiVersion: v1
kind: Pod
metadata: {{name: grouped}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}}
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "id -G; stat -c '%g %a' /data /config/..data/key; touch /data/new && stat -c '%g' /data/new"]
    volumeMounts: [{{name: data, mountPath: /data}}, {{name: config, mountPath: /config}}]
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: settings, defaultMode: 0400}}}}
"#
    ));
    k.wait_pod("grouped", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(
        k.c.ok(&["logs", "grouped"]),
        "1000 2000\n2000 2777\n2000 440\n2000\n"
    );

    // A projected service account token is its user's alone when the pod names a user, and
    // group-readable through fsGroup (the kubelet's rule); without either it is 0644 root's.
    let token_pod = |name: &str, sc: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  securityContext: {{{sc}}}
  containers:
  - {{name: app, image: {image}, command: ["ls", "-lnL", "/tokens/token"], volumeMounts: [{{name: tokens, mountPath: /tokens}}]}}
  volumes:
  - {{name: tokens, projected: {{sources: [{{serviceAccountToken: {{path: token, expirationSeconds: 3600}}}}]}}}}
"#
        )
    };
    for (name, sc, want) in [
        ("token-user", "runAsUser: 1000", "-rw------- 1000 0"),
        ("token-group", "fsGroup: 3000", "-rw-r----- 0 3000"),
        (
            "token-both",
            "runAsUser: 1000, fsGroup: 3000",
            "-rw-r----- 1000 3000",
        ),
        ("token-plain", "", "-rw-r--r-- 0 0"),
    ] {
        k.apply(&token_pod(name, sc));
        k.wait_pod(name, "Succeeded", |p| phase(p) == "Succeeded");
        let listed = k.c.ok(&["logs", name]);
        let fields: Vec<&str> = listed.split_whitespace().collect();
        assert_eq!(
            format!("{} {} {}", fields[0], fields[2], fields[3]),
            want,
            "{name}: {listed}"
        );
    }

    // A privileged pod that got past the API server's PodSecurity (the namespace was labelled
    // after the pod was made, while the agent was down) is refused by the node.
    k.node.kill9();
    k.c.ok(&["create", "namespace", "locked-later"]);
    k.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: root, namespace: locked-later}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: app, image: {image}, command: [sleep, '3600'], securityContext: {{privileged: true}}}}\n"
    ));
    let labelled = k.c.kubectl(&[
        "label",
        "namespace",
        "locked-later",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    assert!(labelled.status.success());
    assert!(
        String::from_utf8_lossy(&labelled.stderr).contains("existing pods in namespace \"locked-later\" violate the new PodSecurity enforce level \"baseline:latest\""),
        "{}",
        String::from_utf8_lossy(&labelled.stderr)
    );
    k.node.restart();
    let refused =
        k.c.ok(&["get", "pod", "root", "-n", "locked-later", "-o", "json"]);
    let _ = refused;
    let mut pod = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        pod = json_value(&k.c.ok(&["get", "pod", "root", "-n", "locked-later", "-o", "json"]));
        if phase(&pod) == "Failed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(pod["status"]["reason"], "PodSecurity", "{pod:#}");
    assert_eq!(
        pod["status"]["message"],
        "Pod Security \"baseline\" of namespace \"locked-later\" forbids this privileged pod: privileged (container \"app\" must not set securityContext.privileged=true)"
    );
    assert!(
        pod["status"]["containerStatuses"].is_null(),
        "never started: {pod:#}"
    );
    k.c.ok(&["delete", "namespace", "locked-later", "--timeout=60s"]);
}

#[test]
fn pods_with_host_users_false_run_in_a_user_namespace_of_their_own() {
    let k = Cluster::start();
    let image = k.registry.busybox();
    // The pod's root is root inside (and owns its image's files, which it may change), an
    // unprivileged range of IDs on the host; fsGroup volumes show the group the pod asked for.
    let pod = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  hostUsers: false
  terminationGracePeriodSeconds: 1
  securityContext: {{fsGroup: 2000}}
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "cat /proc/self/uid_map; id -u; stat -c '%u %g' /etc/passwd; echo changed >> /etc/passwd && echo wrote; stat -c '%g' /data; touch /data/f && stat -c '%u %g' /data/f; unshare -U true 2>/dev/null || echo no-unshare; sleep 3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, emptyDir: {{}}}}
"#
        )
    };
    k.apply(&pod("apart"));
    let first = k.wait_pod("apart", "Running or not created", |p| {
        phase(p) == "Running" || status(p, "app")["state"]["waiting"]["reason"] == "CreateContainerError"
    });
    if phase(&first) != "Running" {
        // Kernels before 6.3 cannot idmap tmpfs (the cgroup v2 machine's data directory): the
        // pod is then refused with that reason, and nothing else is checked there.
        let message = status(&first, "app")["state"]["waiting"]["message"].to_string();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let version: Vec<u32> = release
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .filter_map(|n| n.parse().ok())
            .collect();
        assert!(
            version < vec![6, 3] && message.contains("idmapped mounts"),
            "{release}: {message}"
        );
        eprintln!("Linux {release}: no idmapped tmpfs; the refusal was checked: {message}");
        return;
    }
    let mut log = String::new();
    for _ in 0..100 {
        log = k.c.ok(&["logs", "apart"]);
        if log.contains("no-unshare") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<&str> = log.lines().collect();
    let map: Vec<u64> = lines[0].split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!((map[0], map[2]), (0, 65536), "{log}");
    let base = map[1];
    assert!(base >= 65536 && base.is_multiple_of(65536), "{log}");
    assert_eq!(
        &lines[1..],
        ["0", "0 0", "wrote", "2000", "0 2000", "no-unshare"],
        "{log}"
    );
    // Exec joins the same namespace.
    assert_eq!(
        k.c.ok(&["exec", "apart", "--", "cat", "/proc/self/uid_map"])
            .trim(),
        lines[0].trim()
    );
    // On the host the container's processes and files belong to the range.
    let upper = std::fs::read_dir(k.node.data_dir().join("pods"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("containers/app/0/upper/etc/passwd"))
        .find(|p| p.exists())
        .expect("the container's changed file on the host");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&upper).unwrap().uid() as u64, base);
    let started = upper.ancestors().nth(3).unwrap().join("status/started.json");
    let pid = json_value(&std::fs::read_to_string(started).unwrap())["pid"]
        .as_i64()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains(&format!("\nUid:\t{base}\t{base}\t{base}\t{base}\n")),
        "{status}"
    );
    // A second pod gets another range; the first one's removal leaves the image whole.
    k.apply(&pod("apart-too"));
    k.wait_pod("apart-too", "Running", |p| phase(p) == "Running");
    let other = k.c.ok(&["exec", "apart-too", "--", "cat", "/proc/self/uid_map"]);
    assert_ne!(other.trim(), lines[0].trim());
    k.c.ok(&["delete", "pod", "apart", "apart-too", "--timeout=60s"]);
    k.c.ok(&[
        "run",
        "after",
        "--image",
        &image,
        "--restart=Never",
        "--",
        "cat",
        "/etc/passwd",
    ]);
    k.wait_pod("after", "Succeeded", |p| phase(p) == "Succeeded");
    let passwd = k.c.ok(&["logs", "after"]);
    assert!(
        passwd.starts_with("root:") && !passwd.contains("changed"),
        "{passwd}"
    );
}

#[test]
fn kubectl_top_shows_what_nodes_and_pods_use() {
    // metrics.k8s.io from the agents' stats (no metrics-server to install), and the agent's
    // cAdvisor and resource metrics through the API server's node proxy.
    let k = Cluster::start();
    let image = k.registry.busybox();
    let node = k.node.name.clone();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: burner, labels: {{app: burner}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: spin, image: {image}, command: ["sh", "-c", "while :; do :; done"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: idler, labels: {{app: idler}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: rest, image: {image}, command: ["sleep", "3600"]}}
"#
    ));
    k.wait_pod("burner", "Running", |p| phase(p) == "Running");
    k.wait_pod("idler", "Running", |p| phase(p) == "Running");
    // `kubectl top pod --no-headers`: NAME CPU(cores) MEMORY(bytes), once the agent has two readings.
    let millicores =
        |line: &str| -> Option<u64> { line.split_whitespace().nth(1)?.strip_suffix('m')?.parse().ok() };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut top = String::new();
    while Instant::now() < deadline {
        let out = k.c.kubectl(&["top", "pod", "--no-headers"]);
        top = String::from_utf8_lossy(&out.stdout).into_owned();
        if top.lines().any(|l| l.starts_with("burner ")) && top.lines().any(|l| l.starts_with("idler ")) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let burner = top
        .lines()
        .find(|l| l.starts_with("burner "))
        .unwrap_or_else(|| panic!("{top}"));
    let idler = top
        .lines()
        .find(|l| l.starts_with("idler "))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(millicores(burner).is_some_and(|m| m >= 200), "a busy loop: {top}");
    assert!(millicores(idler).is_some_and(|m| m < 50), "sleep: {top}");
    assert!(burner.trim_end().ends_with("Mi"), "{burner}");
    // Selected by label, per container, and for the node.
    let selected =
        k.c.ok(&["top", "pod", "-l", "app=burner", "--no-headers", "--containers"]);
    assert!(
        selected.starts_with("burner ") && selected.contains(" spin ") && !selected.contains("idler"),
        "{selected}"
    );
    let nodes = k.c.ok(&["top", "node", "--no-headers"]);
    let line = nodes
        .lines()
        .find(|l| l.starts_with(&node))
        .unwrap_or_else(|| panic!("{nodes}"));
    assert!(millicores(line).is_some_and(|m| m >= 200), "{nodes}");
    // The agent's metrics, as Prometheus' node jobs scrape them through the API server.
    let cadvisor = k.c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics/cadvisor"),
    ]);
    let line = cadvisor
        .lines()
        .find(|l| l.starts_with("container_cpu_usage_seconds_total{") && l.contains("pod=\"burner\""))
        .unwrap_or_else(|| panic!("{cadvisor}"));
    let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds > 0.5, "{line}");
    assert!(
        cadvisor.contains(
            "container_memory_working_set_bytes{container=\"rest\",namespace=\"default\",pod=\"idler\"}"
        ),
        "{cadvisor}"
    );
    let resource = k.c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics/resource"),
    ]);
    assert!(
        resource.contains("\nnode_cpu_usage_seconds_total ")
            && resource.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"burner\"}"),
        "{resource}"
    );
    let summary = json_value(&k.c.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
    ]));
    assert_eq!(summary["node"]["nodeName"], node.as_str());
    // Exec stays on the pods' subresource: the node proxy serves reads of stats only.
    assert!(
        k.c.fails(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/exec/default/burner/spin")
        ])
        .contains("NotFound")
    );
    k.c.ok(&["delete", "pod", "burner", "idler", "--timeout=60s"]);
}

#[test]
fn a_horizontal_pod_autoscaler_scales_a_busy_deployment_up_and_an_idle_one_down() {
    // `kubectl autoscale` (an autoscaling/v1 HPA) on a Deployment whose pod burns a core against
    // a 100m request: the controller reads the pods' use from the agents' stats and scales to
    // the maximum; made idle, with a v2 behavior that does not wait, it scales back to one.
    let k = Cluster::start();
    let image = k.registry.busybox();
    let deployment = |command: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn}}
spec:
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: spin
        image: {image}
        command: ["sh", "-c", "{command}"]
        resources: {{requests: {{cpu: 100m}}}}
"#
        )
    };
    k.apply(&deployment("while :; do :; done"));
    let created = k.c.ok(&[
        "autoscale",
        "deployment",
        "burn",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    assert!(
        created.contains("horizontalpodautoscaler.autoscaling/burn autoscaled"),
        "{created}"
    );
    let table = k.c.ok(&["get", "hpa", "burn", "--no-headers"]);
    let columns: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(columns[..2], ["burn", "Deployment/burn"], "{table}");
    assert_eq!(
        columns[columns.len() - 4..columns.len() - 1],
        ["1", "3", "1"],
        "{table}"
    );
    let replicas = || {
        k.c.ok(&["get", "deploy", "burn", "-o", "jsonpath={.spec.replicas}"])
    };
    let wait_replicas = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(150);
        while replicas() != want {
            assert!(
                Instant::now() < deadline,
                "the HPA did not scale burn to {want}: {}\n{}",
                k.c.ok(&["describe", "hpa", "burn"]),
                k.c.ok(&["top", "pod"])
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    wait_replicas("3");
    let events = k.c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("SuccessfulRescale: New size: 3; reason: cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    let hpa = json_value(&k.c.ok(&["get", "hpa", "burn", "-o", "json"]));
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        50
    );
    assert_eq!(hpa["status"]["desiredReplicas"], 3, "{hpa:#}");
    let measured = hpa["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
        .as_i64()
        .unwrap_or_default();
    assert!(measured > 100, "a busy loop against 100m: {hpa:#}");
    let conditions: Vec<String> = hpa["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}",
                c["type"].as_str().unwrap_or_default(),
                c["status"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert!(
        conditions.contains(&"ScalingActive=True".to_owned())
            && conditions.contains(&"ScalingLimited=True".to_owned()),
        "{conditions:?}"
    );
    assert!(
        k.c.ok(&["get", "hpa", "burn", "--no-headers"]).contains("cpu: "),
        "targets shown as upstream"
    );

    // The v2 behavior, set through v2, rides in v1's annotation and is kept by a v1 update.
    k.c.ok(&[
        "patch",
        "hpa",
        "burn",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
    ]);
    let v1 = json_value(&k.c.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/burn",
    ]));
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50, "{v1:#}");
    assert!(v1["status"]["currentCPUUtilizationPercentage"].is_i64(), "{v1:#}");
    let mut v1 = v1;
    v1["metadata"]["labels"] = serde_json::json!({"team": "a"});
    k.c.ok_stdin(&["replace", "-f", "-"], &v1.to_string());
    let hpa = json_value(&k.c.ok(&["get", "hpa", "burn", "-o", "json"]));
    assert_eq!(hpa["metadata"]["labels"]["team"], "a");
    assert!(
        hpa["metadata"].get("annotations").is_none(),
        "v1's annotations are not kept: {hpa:#}"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 0,
        "{hpa:#}"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["type"], "Pods",
        "defaults filled in"
    );

    // Idle: back to the minimum (the manifest leaves the replicas to the HPA).
    k.apply(&deployment("sleep 3600"));
    wait_replicas("1");
    let events = k.c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=HorizontalPodAutoscaler",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("SuccessfulRescale: New size: 1; reason: All metrics below target"),
        "{events}"
    );

    // Bad specs are refused with the fields named.
    let refused = k.c.fails_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "bad"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                     "minReplicas": 3, "maxReplicas": 2,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]}}"#,
    );
    assert!(
        refused
            .contains("spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`")
            && refused.contains("spec.metrics[0].resource.target.averageUtilization: Required value"),
        "{refused}"
    );
}

#[test]
fn pods_outgrowing_their_local_storage_or_deadline_are_ended_by_the_node() {
    // The kubelet's local storage eviction: an emptyDir past its sizeLimit, a container past its
    // ephemeral-storage limit (writable layer and log): killed, Failed/Evicted with the kubelet's
    // words, an Evicted event; a pod within its limits stays.
    let k = Cluster::start();
    let image = k.registry.busybox();
    let pod = |name: &str, write_to: &str, volumes: &str, limits: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "dd if=/dev/zero of={write_to}/blob bs=1M count=4 && sleep 3600"]
    resources: {{limits: {{{limits}}}}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes: [{{name: scratch, emptyDir: {{{volumes}}}}}]
"#
        )
    };
    k.apply(&pod("full-volume", "/scratch", "sizeLimit: 1Mi", ""));
    k.apply(&pod("full-layer", "/tmp", "", "ephemeral-storage: 2Mi"));
    k.apply(&pod(
        "roomy",
        "/scratch",
        "sizeLimit: 64Mi",
        "ephemeral-storage: 64Mi",
    ));
    for (name, words) in [
        (
            "full-volume",
            "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ",
        ),
        (
            "full-layer",
            "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ",
        ),
    ] {
        let evicted = k.wait_pod(name, "Evicted", |p| p["status"]["reason"] == "Evicted");
        assert_eq!(phase(&evicted), "Failed", "{evicted:#}");
        assert_eq!(evicted["status"]["message"], words, "{evicted:#}");
        let killed = k.wait_pod(name, "its container killed", |p| {
            status(p, "app")["state"]["terminated"].is_object()
        });
        assert_eq!(
            status(&killed, "app")["state"]["terminated"]["exitCode"],
            137,
            "{killed:#}"
        );
        let events = k.c.ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},reason=Evicted"),
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        assert!(events.contains(words.trim_end()), "{events}");
    }
    assert_eq!(phase(&k.pod("roomy")), "Running");
    // activeDeadlineSeconds, lowered on a running pod (it may only go down): the node ends it.
    k.c.ok(&[
        "patch",
        "pod",
        "roomy",
        "--type=merge",
        "-p",
        r#"{"spec":{"activeDeadlineSeconds":2}}"#,
    ]);
    let ended = k.wait_pod("roomy", "DeadlineExceeded", |p| {
        p["status"]["reason"] == "DeadlineExceeded"
    });
    assert_eq!(phase(&ended), "Failed");
    assert_eq!(
        ended["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    k.wait_pod("roomy", "its container killed", |p| {
        status(p, "app")["state"]["terminated"].is_object()
    });
    k.c.ok(&[
        "delete",
        "pod",
        "full-volume",
        "full-layer",
        "roomy",
        "--timeout=60s",
    ]);
}

#[test]
fn terminated_containers_report_their_termination_message() {
    // The kubelet's termination message: the terminationMessagePath file, or with
    // FallbackToLogsOnError the log's tail when the file is empty and the container failed; a
    // completed init container is ready.
    let k = Cluster::start();
    let image = k.registry.busybox();
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: said}}
spec:
  restartPolicy: Never
  initContainers:
  - {{name: setup, image: {image}, command: ["true"]}}
  containers:
  - {{name: app, image: {image}, command: ["sh", "-c", "echo -n DONE > /dev/termination-log"], terminationMessagePath: /dev/termination-log}}
---
apiVersion: v1
kind: Pod
metadata: {{name: said-as-user}}
spec:
  restartPolicy: Never
  containers:
  - {{name: app, image: {image}, command: ["sh", "-c", "echo -n DONE > /dev/termination-custom-log"], terminationMessagePath: /dev/termination-custom-log, securityContext: {{runAsUser: 1000}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fell-back}}
spec:
  restartPolicy: Never
  containers:
  - {{name: app, image: {image}, command: ["sh", "-c", "echo first; echo last words; exit 3"], terminationMessagePolicy: FallbackToLogsOnError}}
"#
    ));
    let said = k.wait_pod("said", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(
        status(&said, "app")["state"]["terminated"]["message"],
        "DONE",
        "{said:#}"
    );
    assert_eq!(
        said["status"]["initContainerStatuses"][0]["ready"], true,
        "{said:#}"
    );
    // A non-root user writes the message at a path of its own.
    let said = k.wait_pod("said-as-user", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(
        status(&said, "app")["state"]["terminated"]["message"],
        "DONE",
        "{said:#}"
    );
    let fell = k.wait_pod("fell-back", "Failed", |p| phase(p) == "Failed");
    let message = status(&fell, "app")["state"]["terminated"]["message"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(message.trim_end(), "first\nlast words", "{fell:#}");
}

/// A container whose image is changed in its pod's spec (`kubectl set image pod/...`) is stopped
/// and started again from the new image, whatever the pod's restart policy, as the kubelet does
/// when a container's spec changes; until then its status names the image it runs. (The agent
/// reported the new image at once and went on running the old one.)
#[test]
fn changing_a_containers_image_restarts_it_from_the_new_image() {
    let k = Cluster::start();
    let (old, new) = (k.registry.busybox(), k.registry.busybox_without_path());
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: swapped}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: app, image: {old}, command: ["sleep", "3600"]}}
"#
    ));
    let before = k.wait_pod("swapped", "Running", |p| {
        status(p, "app")["state"]["running"].is_object()
    });
    assert_eq!(status(&before, "app")["image"], old.as_str(), "{before:#}");
    k.c.ok(&["set", "image", "pod/swapped", &format!("app={new}")]);
    let after = k.wait_pod("swapped", "restarted from the new image", |p| {
        let s = status(p, "app");
        s["restartCount"] == 1 && s["state"]["running"].is_object()
    });
    let s = status(&after, "app");
    assert_eq!(s["image"], new.as_str(), "{after:#}");
    assert_ne!(
        s["containerID"],
        status(&before, "app")["containerID"],
        "{after:#}"
    );
    assert!(s["lastState"]["terminated"].is_object(), "{after:#}");
    let events = k.c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=swapped,reason=Killing",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("Container app definition changed, will be restarted"),
        "{events}"
    );
}
